//! The `Backend` trait: the ops one training step needs, over buffers that live on the backend's
//! device, so that a GPU step never round-trips through the host.
//!
//! Data flow of one step (see `train::Trainer`):
//! `lif_forward` (layer 1) -> `lif_forward` (layer 2) -> `readout_forward` -> `loss` ->
//! `readout_backward` -> `lif_backward_from_readout` (layer 2, its dS2 as `readout_spike_grad` would
//! lay it out: dW2 and dS1 at the entries layer 1 needs) -> `lif_backward` (layer 1: dW1) -> `adam`
//! x 3.
//!
//! Spike gradients (`grad_spikes`) are laid out by the tape of the layer they belong to: for a dense
//! tape a `batch x steps x neurons` array, for a sparse tape one value per active entry, in the
//! tape's order. A backend's CPU twin of every op is `CpuBackend`'s same-named method.

use crate::error::Result;
use crate::lif::{Keep, LayerSpec};
use crate::network::{AdamSpec, LossSpec, ReadoutSpec};
use crate::spikes::SpikeEvents;

/// Indices into the loss terms tensor returned by [`Backend::loss`].
pub mod terms {
    pub const TOTAL: usize = 0;
    pub const CROSS_ENTROPY: usize = 1;
    pub const UPPER_L1: usize = 2;
    pub const LOWER_L1: usize = 3;
    pub const UPPER_L2: usize = 4;
    pub const LOWER_L2: usize = 5;
    /// Number of samples whose largest logit is the label's (first maximum wins ties).
    pub const CORRECT: usize = 6;
    pub const LEN: usize = 7;
}

/// The output of a LIF layer's forward pass.
pub struct LayerOutput<B: Backend + ?Sized> {
    /// Output spikes, `batch x steps x neurons` (S[0] = 0).
    pub spikes: B::Spikes,
    /// Spike count per (sample, neuron), `batch x neurons`, for the regularisers.
    pub counts: B::Tensor,
    /// What the backward pass needs (nothing for `Keep::Nothing`).
    pub tape: B::LayerTape,
}

/// Gradient of the spike-count regularisers of one layer with respect to its spikes: the value at
/// (b, t, j) is `per_sample[b] + per_neuron[b, j]` (it does not depend on t).
pub struct RegGrad<B: Backend + ?Sized> {
    /// `batch` values (upper regulariser).
    pub per_sample: B::Tensor,
    /// `batch x neurons` values (lower regulariser).
    pub per_neuron: B::Tensor,
}

/// dS of layer 2 as the readout passes it back, before it is laid out by the layer's tape:
/// dS[b, t, j] = sum_c g[b, t, c] W3[j, c] + per_sample[b] + per_neuron[b, j], the operands of
/// [`Backend::readout_spike_grad`].
pub struct ReadoutSpikeGrad<'a, B: Backend + ?Sized> {
    /// `batch x steps x classes`, from `readout_backward`.
    pub g: &'a B::Tensor,
    /// The readout's weights W3, `neurons x classes`.
    pub weights: &'a B::Tensor,
    /// Layer 2's regulariser gradients.
    pub reg: &'a RegGrad<B>,
}

impl<B: Backend + ?Sized> ReadoutSpikeGrad<'_, B> {
    /// dS laid out by `layout` (dense, or at its active entries): `readout_spike_grad` of these
    /// operands.
    pub fn laid_out(&self, backend: &B, layout: &B::LayerTape) -> Result<B::Tensor> {
        backend.readout_spike_grad(self.g, self.weights, self.reg, layout)
    }
}

/// The output of [`Backend::loss`].
pub struct LossOutput<B: Backend + ?Sized> {
    /// `terms::LEN` scalars: total, cross-entropy, the four regularisers, correct count.
    pub terms: B::Tensor,
    /// d loss / d logits, `batch x classes`.
    pub grad_logits: B::Tensor,
    /// Regulariser gradients of layer 1 and layer 2.
    pub reg: [RegGrad<B>; 2],
}

/// Host view of a layer tape, for tests and gradient dumps.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTape {
    Nothing,
    /// Membrane record as V - theta, `batch x steps x neurons`, with the optional truncation band.
    Dense {
        v_minus_theta: Vec<f64>,
        band: Option<f64>,
    },
    /// Active entries as (flat index b*T*N + t*N + j, V - theta), in the tape's order.
    Sparse {
        entries: Vec<(u32, f64)>,
        band: f64,
    },
}

/// Counts reported by a tape; reading them may wait for the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapeStats {
    /// Entries the backward pass works on: active entries (sparse) or all B x T x N (dense).
    pub active: u64,
    /// All B x T x N entries of the layer.
    pub cells: u64,
    /// Bytes kept between forward and backward: the tape plus the layer's input spikes.
    pub kept_bytes: u64,
    /// The tape ran out of room for active entries (a backend with fixed capacity); the backend has
    /// grown it, and the pass that used this tape must be run again.
    pub overflowed: bool,
}

impl TapeStats {
    /// Active entries over all B x T x N entries.
    pub fn active_fraction(&self) -> f64 {
        if self.cells == 0 {
            0.0
        } else {
            self.active as f64 / self.cells as f64
        }
    }
}

/// The scalars a training step reads back once its work is queued: loss terms, and per layer the
/// tape statistics and the spike count.
#[derive(Clone, Debug, PartialEq)]
pub struct StepScalars {
    pub terms: Vec<f64>,
    pub tapes: [TapeStats; 2],
    pub spikes: [u64; 2],
}

/// The ops a training step needs. Implemented by `CpuBackend` here and by the CUDA backend.
pub trait Backend {
    /// Dense float array on the device.
    type Tensor;
    /// A batch of spike rasters on the device, in the backend's compact form.
    type Spikes;
    /// Class labels of a batch on the device.
    type Labels;
    /// What a LIF layer keeps for backward.
    type LayerTape;
    /// What the readout keeps for backward.
    type ReadoutTape;
    /// A point in the device's timeline, for timing ops.
    type Mark;

    /// Human-readable device name and precision.
    fn describe(&self) -> String;

    /// Copies host floats to a new device tensor.
    fn upload(&self, data: &[f32]) -> Result<Self::Tensor>;
    /// A new device tensor of `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Tensor>;
    /// Copies a device tensor back (lossless: f64 holds every backend precision).
    fn download(&self, tensor: &Self::Tensor) -> Result<Vec<f64>>;
    /// Copies a device tensor back as f32 (rounding an f64 backend).
    fn download_f32(&self, tensor: &Self::Tensor) -> Result<Vec<f32>>;
    fn upload_spikes(&self, spikes: &SpikeEvents) -> Result<Self::Spikes>;
    fn download_spikes(&self, spikes: &Self::Spikes) -> Result<SpikeEvents>;
    /// Total spike count of a batch (a scalar read; may wait for the device).
    fn spike_count(&self, spikes: &Self::Spikes) -> Result<u64>;
    /// Uploads labels, each checked to be below `classes`.
    fn upload_labels(&self, labels: &[u32], classes: usize) -> Result<Self::Labels>;

    /// One LIF layer over all time steps: input currents from the input spikes, the membrane
    /// recursion, spikes, counts, and the tape `keep` asks for.
    fn lif_forward(
        &self,
        input: &Self::Spikes,
        weights: &Self::Tensor,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>>;

    /// A LIF layer fed by float inputs `x` (`batch x steps x inputs`, as a tensor) instead of spikes:
    /// the input currents are a matrix product x . W (the Linear + LIF layer SNN libraries
    /// benchmark). The tape keeps `x` for the backward pass.
    fn lif_forward_float(
        &self,
        input: &Self::Tensor,
        batch: usize,
        steps: usize,
        weights: &Self::Tensor,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>>;

    /// dW of a layer run by `lif_forward_float` (its input is data: no input gradient). The sparse
    /// tape sums over its active entries the input trace e[b, t, i] = sum over k < t of
    /// beta^(t-1-k) x[b, k, i] times dS sigma'(V).
    fn lif_backward_float(
        &self,
        tape: &Self::LayerTape,
        input: &Self::Tensor,
        weights: &Self::Tensor,
        grad_spikes: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// The leaky readout: logits `batch x classes` and its tape.
    fn readout_forward(
        &self,
        hidden: &Self::Spikes,
        weights: &Self::Tensor,
        readout: &ReadoutSpec,
    ) -> Result<(Self::Tensor, Self::ReadoutTape)>;

    /// Cross-entropy (batch mean) and the regularisers of both layers from their spike counts.
    fn loss(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Labels,
        counts: [&Self::Tensor; 2],
        hidden: usize,
        loss: &LossSpec,
    ) -> Result<LossOutput<Self>>;

    /// Backward through the readout: dW3 `hidden x classes` and `g` (`batch x steps x classes`),
    /// the gradient reaching the readout's input at each step: dS2[b,t,j] = sum_c g[b,t,c] W3[j,c].
    fn readout_backward(
        &self,
        tape: &Self::ReadoutTape,
        hidden: &Self::Spikes,
        weights: &Self::Tensor,
        grad_logits: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// dS2 from `g` plus layer 2's regularisers, laid out by `layout` (dense or at its active entries).
    fn readout_spike_grad(
        &self,
        g: &Self::Tensor,
        weights: &Self::Tensor,
        reg: &RegGrad<Self>,
        layout: &Self::LayerTape,
    ) -> Result<Self::Tensor>;

    /// Backward through one LIF layer: dW and, when `below` is given, dS of the layer below (plus
    /// that layer's regularisers) laid out by the layer below's tape.
    fn lif_backward(
        &self,
        tape: &Self::LayerTape,
        input: &Self::Spikes,
        weights: &Self::Tensor,
        grad_spikes: &Self::Tensor,
        below: Option<(&Self::LayerTape, &RegGrad<Self>)>,
    ) -> Result<(Self::Tensor, Option<Self::Tensor>)>;

    /// `lif_backward` with dS in the readout's form. The default lays it out with
    /// `readout_spike_grad` first; a backend may instead compute each dS where its backward reads
    /// it (the CUDA backend's dense adjoint scan does), with the same result.
    fn lif_backward_from_readout(
        &self,
        tape: &Self::LayerTape,
        input: &Self::Spikes,
        weights: &Self::Tensor,
        grad_spikes: ReadoutSpikeGrad<'_, Self>,
        below: Option<(&Self::LayerTape, &RegGrad<Self>)>,
    ) -> Result<(Self::Tensor, Option<Self::Tensor>)> {
        let laid = grad_spikes.laid_out(self, tape)?;
        self.lif_backward(tape, input, weights, &laid, below)
    }

    /// `lif_backward_float` with dS in the readout's form (see `lif_backward_from_readout`).
    fn lif_backward_float_from_readout(
        &self,
        tape: &Self::LayerTape,
        input: &Self::Tensor,
        weights: &Self::Tensor,
        grad_spikes: ReadoutSpikeGrad<'_, Self>,
    ) -> Result<Self::Tensor> {
        let laid = grad_spikes.laid_out(self, tape)?;
        self.lif_backward_float(tape, input, weights, &laid)
    }

    /// One Adam update of `param` in place; `step` counts from 1.
    fn adam(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        moment1: &mut Self::Tensor,
        moment2: &mut Self::Tensor,
        step: u64,
        adam: &AdamSpec,
    ) -> Result<()>;

    /// Active entries and bytes kept by a tape.
    fn tape_stats(&self, tape: &Self::LayerTape) -> Result<TapeStats>;
    /// Host view of a tape.
    fn download_tape(&self, tape: &Self::LayerTape) -> Result<HostTape>;
    /// A spike gradient laid out by `layout`, as a dense `batch x steps x neurons` host array
    /// (zero outside the active entries of a sparse layout).
    fn spike_grad_to_host(&self, layout: &Self::LayerTape, grad: &Self::Tensor)
        -> Result<Vec<f64>>;

    /// Reads a step's scalars in one go (a device backend makes this its only wait of the step).
    fn step_scalars(
        &self,
        terms: &Self::Tensor,
        tapes: [&Self::LayerTape; 2],
        spikes: [&Self::Spikes; 2],
    ) -> Result<StepScalars> {
        Ok(StepScalars {
            terms: self.download(terms)?,
            tapes: [self.tape_stats(tapes[0])?, self.tape_stats(tapes[1])?],
            spikes: [self.spike_count(spikes[0])?, self.spike_count(spikes[1])?],
        })
    }

    /// Records a point in the device's timeline.
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds between two marks (waits for `to`).
    fn elapsed_ms(&self, from: &Self::Mark, to: &Self::Mark) -> Result<f64>;
    /// Waits for all queued device work.
    fn synchronize(&self) -> Result<()>;
}
