//! `Trainer`: one training step of the whole network (both layers, readout, loss, backward, Adam),
//! generic over the backend, with per-layer instrumentation; also evaluation and gradient dumps.

use serde::{Deserialize, Serialize};

use crate::backend::{terms, Backend, HostTape, ReadoutSpikeGrad, StepScalars, TapeStats};
use crate::error::{CoreError, Result};
use crate::lif::{Keep, Method};
use crate::network::{HostWeights, NetworkConfig};
use crate::spikes::SpikeEvents;

/// Per-layer figures of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub forward_ms: f64,
    /// The layer's backward pass, including (layer 2) the gather of dS from the readout.
    pub backward_ms: f64,
    /// Entries the backward pass worked on (all B x T x N for dense).
    pub active: u64,
    pub cells: u64,
    pub kept_bytes: u64,
    pub spikes: u64,
}

impl LayerReport {
    /// Active entries over all B x T x N entries.
    pub fn active_fraction(&self) -> f64 {
        if self.cells == 0 {
            0.0
        } else {
            self.active as f64 / self.cells as f64
        }
    }

    /// Spikes over all B x T x N entries.
    pub fn spike_fraction(&self) -> f64 {
        if self.cells == 0 {
            0.0
        } else {
            self.spikes as f64 / self.cells as f64
        }
    }
}

/// What one training step reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step number after this update (counts from 1).
    pub step: u64,
    pub batch: usize,
    pub loss: f64,
    pub cross_entropy: f64,
    /// Upper and lower regulariser of layer 1, then of layer 2.
    pub regularisers: [f64; 4],
    pub correct: usize,
    pub layers: [LayerReport; 2],
    /// Readout forward, loss and readout backward.
    pub readout_ms: f64,
    pub adam_ms: f64,
}

/// Loss and accuracy of a forward pass without training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub batch: usize,
    pub loss: f64,
    pub cross_entropy: f64,
    pub correct: usize,
}

/// Host copy of a trainer's whole state: weights, Adam moments, step count.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerState {
    pub weights: HostWeights,
    pub moment1: HostWeights,
    pub moment2: HostWeights,
    pub step: u64,
}

/// Gradients of one batch, on the host, for checks and dumps.
#[derive(Clone, Debug, PartialEq)]
pub struct HostGradients {
    /// dW1, dW2, dW3.
    pub weights: [Vec<f64>; 3],
    /// The gradient reaching layer 1's spikes, `batch x steps x hidden` (zero outside layer 1's
    /// active entries for the sparse method).
    pub spikes1: Vec<f64>,
    /// The loss terms (`backend::terms`).
    pub terms: Vec<f64>,
    /// Layer tapes, for tests that need the active sets.
    pub tapes: [HostTape; 2],
}

/// The network's parameters and optimiser state on a backend.
pub struct Trainer<B: Backend> {
    config: NetworkConfig,
    method: Method,
    params: [B::Tensor; 3],
    moment1: [B::Tensor; 3],
    moment2: [B::Tensor; 3],
    step: u64,
}

struct Pass<B: Backend> {
    terms: B::Tensor,
    grads: [B::Tensor; 3],
    spikes1_grad: B::Tensor,
    tapes: [B::LayerTape; 2],
    spikes: [B::Spikes; 2],
    marks: [B::Mark; 6],
}

fn upload3<B: Backend>(backend: &B, w: &HostWeights) -> Result<[B::Tensor; 3]> {
    Ok([
        backend.upload(&w.w1)?,
        backend.upload(&w.w2)?,
        backend.upload(&w.w3)?,
    ])
}

fn download3<B: Backend>(backend: &B, t: &[B::Tensor; 3]) -> Result<HostWeights> {
    Ok(HostWeights {
        w1: backend.download_f32(&t[0])?,
        w2: backend.download_f32(&t[1])?,
        w3: backend.download_f32(&t[2])?,
    })
}

impl<B: Backend> Trainer<B> {
    /// A fresh trainer from initial weights, with zero Adam moments.
    pub fn new(
        backend: &B,
        config: NetworkConfig,
        method: Method,
        weights: &HostWeights,
    ) -> Result<Self> {
        let lens = config.weight_lens();
        let zeros = HostWeights {
            w1: vec![0.0; lens[0]],
            w2: vec![0.0; lens[1]],
            w3: vec![0.0; lens[2]],
        };
        Self::from_state(
            backend,
            config,
            method,
            &TrainerState {
                weights: weights.clone(),
                moment1: zeros.clone(),
                moment2: zeros,
                step: 0,
            },
        )
    }

    /// A trainer that continues from a saved state.
    pub fn from_state(
        backend: &B,
        config: NetworkConfig,
        method: Method,
        state: &TrainerState,
    ) -> Result<Self> {
        config.validate()?;
        method.validate()?;
        state.weights.check(&config)?;
        state.moment1.check(&config)?;
        state.moment2.check(&config)?;
        Ok(Self {
            config,
            method,
            params: upload3(backend, &state.weights)?,
            moment1: upload3(backend, &state.moment1)?,
            moment2: upload3(backend, &state.moment2)?,
            step: state.step,
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }
    pub fn method(&self) -> Method {
        self.method
    }
    /// Updates taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }
    /// The weights on the device: W1, W2, W3.
    pub fn params(&self) -> &[B::Tensor; 3] {
        &self.params
    }

    /// Host copy of weights, moments and step count.
    pub fn state(&self, backend: &B) -> Result<TrainerState> {
        Ok(TrainerState {
            weights: download3(backend, &self.params)?,
            moment1: download3(backend, &self.moment1)?,
            moment2: download3(backend, &self.moment2)?,
            step: self.step,
        })
    }

    pub fn weights(&self, backend: &B) -> Result<HostWeights> {
        download3(backend, &self.params)
    }

    fn check_batch(&self, batch: &SpikeEvents, labels: &[u32]) -> Result<()> {
        if batch.batch() == 0 || batch.steps() == 0 {
            return Err(CoreError::EmptyBatch { op: "train step" });
        }
        if batch.units() != self.config.inputs || batch.steps() != self.config.steps {
            return Err(crate::error::shape_err(
                "train step",
                format!(
                    "input of {} units x {} steps",
                    self.config.inputs, self.config.steps
                ),
                format!("{} units x {} steps", batch.units(), batch.steps()),
            ));
        }
        if labels.len() != batch.batch() {
            return Err(crate::error::shape_err(
                "train step",
                format!("{} labels", batch.batch()),
                labels.len(),
            ));
        }
        Ok(())
    }

    fn forward_backward(
        &self,
        backend: &B,
        input: &B::Spikes,
        labels: &B::Labels,
        keep: Keep,
    ) -> Result<Pass<B>> {
        let c = &self.config;
        let m0 = backend.mark()?;
        let l1 = backend.lif_forward(input, &self.params[0], &c.layer1(), keep)?;
        let m1 = backend.mark()?;
        let l2 = backend.lif_forward(&l1.spikes, &self.params[1], &c.layer2(), keep)?;
        let m2 = backend.mark()?;
        let (logits, readout_tape) =
            backend.readout_forward(&l2.spikes, &self.params[2], &c.readout)?;
        let loss = backend.loss(&logits, labels, [&l1.counts, &l2.counts], c.hidden, &c.loss)?;
        let (dw3, g) = backend.readout_backward(
            &readout_tape,
            &l2.spikes,
            &self.params[2],
            &loss.grad_logits,
        )?;
        let m3 = backend.mark()?;
        let ds2 = ReadoutSpikeGrad {
            g: &g,
            weights: &self.params[2],
            reg: &loss.reg[1],
        };
        let (dw2, ds1) = backend.lif_backward_from_readout(
            &l2.tape,
            &l1.spikes,
            &self.params[1],
            ds2,
            Some((&l1.tape, &loss.reg[0])),
        )?;
        let ds1 = ds1.ok_or(CoreError::Tape {
            op: "lif_backward",
            why: "layer 2 returned no gradient for layer 1's spikes".into(),
        })?;
        let m4 = backend.mark()?;
        let (dw1, _) = backend.lif_backward(&l1.tape, input, &self.params[0], &ds1, None)?;
        let m5 = backend.mark()?;
        Ok(Pass {
            terms: loss.terms,
            grads: [dw1, dw2, dw3],
            spikes1_grad: ds1,
            tapes: [l1.tape, l2.tape],
            spikes: [l1.spikes, l2.spikes],
            marks: [m0, m1, m2, m3, m4, m5],
        })
    }

    /// Runs `forward_backward` and reads the step's scalars; when a tape ran out of room (the
    /// backend has grown it since), runs the pass again.
    fn complete_pass(
        &self,
        backend: &B,
        input: &B::Spikes,
        labels: &B::Labels,
        keep: Keep,
    ) -> Result<(Pass<B>, StepScalars)> {
        const ATTEMPTS: usize = 4;
        for _ in 0..ATTEMPTS {
            let pass = self.forward_backward(backend, input, labels, keep)?;
            let scalars = backend.step_scalars(
                &pass.terms,
                [&pass.tapes[0], &pass.tapes[1]],
                [&pass.spikes[0], &pass.spikes[1]],
            )?;
            if !scalars.tapes.iter().any(|s| s.overflowed) {
                return Ok((pass, scalars));
            }
        }
        Err(CoreError::Tape {
            op: "train step",
            why: format!("the sparse tape still overflowed after {ATTEMPTS} passes"),
        })
    }

    /// One training step on a batch: forward, loss, backward with the trainer's method, Adam.
    /// A non-finite loss leaves the weights untouched and returns `CoreError::NonFiniteLoss`.
    pub fn step(&mut self, backend: &B, batch: &SpikeEvents, labels: &[u32]) -> Result<StepReport> {
        self.check_batch(batch, labels)?;
        let input = backend.upload_spikes(batch)?;
        let labels_dev = backend.upload_labels(labels, self.config.classes)?;
        let (pass, scalars) =
            self.complete_pass(backend, &input, &labels_dev, self.method.keep())?;
        let t = &scalars.terms;
        let stats = scalars.tapes;
        let regularisers = [
            t[terms::UPPER_L1],
            t[terms::LOWER_L1],
            t[terms::UPPER_L2],
            t[terms::LOWER_L2],
        ];
        if !t[terms::TOTAL].is_finite() {
            return Err(CoreError::NonFiniteLoss {
                step: self.step + 1,
                value: t[terms::TOTAL],
                cross_entropy: t[terms::CROSS_ENTROPY],
                regularisers: regularisers.iter().sum(),
            });
        }
        let adam_start = backend.mark()?;
        self.step += 1;
        for k in 0..3 {
            backend.adam(
                &mut self.params[k],
                &pass.grads[k],
                &mut self.moment1[k],
                &mut self.moment2[k],
                self.step,
                &self.config.adam,
            )?;
        }
        let adam_end = backend.mark()?;
        let [m0, m1, m2, m3, m4, m5] = &pass.marks;
        let layer = |s: TapeStats, fwd: f64, bwd: f64, spikes: u64| LayerReport {
            forward_ms: fwd,
            backward_ms: bwd,
            active: s.active,
            cells: s.cells,
            kept_bytes: s.kept_bytes,
            spikes,
        };
        let layers = [
            layer(
                stats[0],
                backend.elapsed_ms(m0, m1)?,
                backend.elapsed_ms(m4, m5)?,
                scalars.spikes[0],
            ),
            layer(
                stats[1],
                backend.elapsed_ms(m1, m2)?,
                backend.elapsed_ms(m3, m4)?,
                scalars.spikes[1],
            ),
        ];
        Ok(StepReport {
            step: self.step,
            batch: batch.batch(),
            loss: t[terms::TOTAL],
            cross_entropy: t[terms::CROSS_ENTROPY],
            regularisers,
            correct: t[terms::CORRECT].round() as usize,
            layers,
            readout_ms: backend.elapsed_ms(m2, m3)?,
            adam_ms: backend.elapsed_ms(&adam_start, &adam_end)?,
        })
    }

    /// Loss and correct count on a batch, without keeping anything for backward.
    pub fn evaluate(&self, backend: &B, batch: &SpikeEvents, labels: &[u32]) -> Result<EvalReport> {
        self.check_batch(batch, labels)?;
        let c = &self.config;
        let input = backend.upload_spikes(batch)?;
        let labels_dev = backend.upload_labels(labels, c.classes)?;
        let l1 = backend.lif_forward(&input, &self.params[0], &c.layer1(), Keep::Nothing)?;
        let l2 = backend.lif_forward(&l1.spikes, &self.params[1], &c.layer2(), Keep::Nothing)?;
        let (logits, _) = backend.readout_forward(&l2.spikes, &self.params[2], &c.readout)?;
        let loss = backend.loss(
            &logits,
            &labels_dev,
            [&l1.counts, &l2.counts],
            c.hidden,
            &c.loss,
        )?;
        let t = backend.download(&loss.terms)?;
        Ok(EvalReport {
            batch: batch.batch(),
            loss: t[terms::TOTAL],
            cross_entropy: t[terms::CROSS_ENTROPY],
            correct: t[terms::CORRECT].round() as usize,
        })
    }

    /// Gradients of one batch under `method`, without updating anything.
    pub fn gradients(
        &self,
        backend: &B,
        batch: &SpikeEvents,
        labels: &[u32],
        method: Method,
    ) -> Result<HostGradients> {
        method.validate()?;
        self.gradients_with_keep(backend, batch, labels, method.keep())
    }

    /// Like `gradients`, with an explicit keep mode for both layers (tests use the truncated
    /// dense surrogate `Keep::Dense { band: Some(h) }`).
    pub fn gradients_with_keep(
        &self,
        backend: &B,
        batch: &SpikeEvents,
        labels: &[u32],
        keep: Keep,
    ) -> Result<HostGradients> {
        keep.validate()?;
        if keep == Keep::Nothing {
            return Err(CoreError::Tape {
                op: "gradients",
                why: "gradients need a tape (Keep::Dense or Keep::Sparse)".into(),
            });
        }
        self.check_batch(batch, labels)?;
        let input = backend.upload_spikes(batch)?;
        let labels_dev = backend.upload_labels(labels, self.config.classes)?;
        let (pass, _) = self.complete_pass(backend, &input, &labels_dev, keep)?;
        self.host_gradients(backend, pass)
    }

    fn host_gradients(&self, backend: &B, pass: Pass<B>) -> Result<HostGradients> {
        let tapes = [
            backend.download_tape(&pass.tapes[0])?,
            backend.download_tape(&pass.tapes[1])?,
        ];
        let spikes1 = backend.spike_grad_to_host(&pass.tapes[0], &pass.spikes1_grad)?;
        Ok(HostGradients {
            weights: [
                backend.download(&pass.grads[0])?,
                backend.download(&pass.grads[1])?,
                backend.download(&pass.grads[2])?,
            ],
            spikes1,
            terms: backend.download(&pass.terms)?,
            tapes,
        })
    }
}
