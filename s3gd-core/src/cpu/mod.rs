//! `CpuBackend`: the reference implementation of every `Backend` op, generic over the float type
//! (f32 for training, f64 for the checks), multithreaded with rayon over samples.
//!
//! Reductions over the batch (dW) are summed per fixed chunk of samples and the chunks added in
//! order, so results do not depend on the number of threads.

mod adam;
mod float_input;
mod forward;
pub(crate) mod gemm;
pub(crate) mod loss;

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::{Backend, HostTape, LayerOutput, LossOutput, RegGrad, TapeStats};
use crate::error::{shape_err, CoreError, Result};
use crate::grad;
use crate::lif::{Keep, LayerSpec};
use crate::network::{AdamSpec, LossSpec, ReadoutSpec};
use crate::real::Real;
use crate::spikes::SpikeEvents;

/// A float array in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor<F>(pub Vec<F>);

impl<F: Real> CpuTensor<F> {
    pub fn as_slice(&self) -> &[F] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a LIF layer keeps for backward on the CPU.
#[derive(Clone, Debug)]
pub struct CpuTape<F> {
    pub batch: usize,
    pub steps: usize,
    pub neurons: usize,
    pub beta: F,
    /// Bytes of the layer's input spikes, which the backward pass also reads.
    pub input_bytes: usize,
    pub kept: Kept<F>,
}

/// The kept data of a tape, by method.
#[derive(Clone, Debug)]
pub enum Kept<F> {
    Nothing,
    /// Membrane record as V - theta, `batch x steps x neurons`; `band` truncates the surrogate.
    Dense {
        v_minus_theta: Vec<F>,
        band: Option<F>,
    },
    /// Active entries, sample by sample, each sorted by (t, j): `cells[k] = t * neurons + j` and
    /// `v_minus_theta[k]`; sample b owns `sample_offsets[b]..sample_offsets[b + 1]`.
    Sparse {
        band: F,
        sample_offsets: Vec<u32>,
        cells: Vec<u32>,
        v_minus_theta: Vec<F>,
    },
}

impl<F: Real> CpuTape<F> {
    pub(crate) fn cells(&self) -> usize {
        self.batch * self.steps * self.neurons
    }

    /// How many spike-gradient values this tape's layout holds.
    pub(crate) fn grad_len(&self) -> Result<usize> {
        match &self.kept {
            Kept::Nothing => Err(CoreError::Tape {
                op: "backward",
                why: "the forward pass kept nothing (Keep::Nothing)".into(),
            }),
            Kept::Dense { .. } => Ok(self.cells()),
            Kept::Sparse { cells, .. } => Ok(cells.len()),
        }
    }

    fn kept_bytes(&self) -> usize {
        let tape = match &self.kept {
            Kept::Nothing => 0,
            Kept::Dense { v_minus_theta, .. } => v_minus_theta.len() * std::mem::size_of::<F>(),
            Kept::Sparse {
                sample_offsets,
                cells,
                v_minus_theta,
                ..
            } => {
                4 * (sample_offsets.len() + cells.len())
                    + v_minus_theta.len() * std::mem::size_of::<F>()
            }
        };
        tape + self.input_bytes
    }
}

/// What the readout keeps for backward: the step of each logit's maximum (max readout).
#[derive(Clone, Debug)]
pub struct CpuReadoutTape {
    pub batch: usize,
    pub steps: usize,
    pub spec: ReadoutSpec,
    /// `batch x classes` steps of the maximum (empty for the sum readout).
    pub argmax: Vec<u32>,
}

/// The CPU backend in precision `F`.
#[derive(Clone, Debug)]
pub struct CpuBackend<F = f32> {
    pool: Option<Arc<rayon::ThreadPool>>,
    _precision: PhantomData<F>,
}

impl<F: Real> Default for CpuBackend<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Real> CpuBackend<F> {
    /// Uses rayon's global thread pool.
    pub fn new() -> Self {
        Self {
            pool: None,
            _precision: PhantomData,
        }
    }

    /// Uses a pool of its own with `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| CoreError::Device(Box::new(e)))?;
        Ok(Self {
            pool: Some(Arc::new(pool)),
            _precision: PhantomData,
        })
    }

    fn run<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(op),
            None => op(),
        }
    }

    fn threads(&self) -> usize {
        match &self.pool {
            Some(pool) => pool.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }
}

/// Whether this CPU has AVX2: the AVX2 copies of the element loops run only then.
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether two arrays hold the same values bit for bit.
#[cfg(test)]
pub(crate) fn same_bits<F: Real>(a: &[F], b: &[F]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.as_f64().to_bits() == y.as_f64().to_bits())
}

/// Fixed split of `batch` samples into at most `REDUCTION_CHUNKS` ranges of at least
/// `MIN_CHUNK_SAMPLES` samples, independent of threads (each range costs a zeroed partial sum).
pub(crate) fn sample_chunks(batch: usize) -> Vec<Range<usize>> {
    const REDUCTION_CHUNKS: usize = 8;
    const MIN_CHUNK_SAMPLES: usize = 16;
    let chunks = (batch / MIN_CHUNK_SAMPLES).clamp(1, REDUCTION_CHUNKS);
    (0..chunks)
        .map(|c| (c * batch / chunks)..((c + 1) * batch / chunks))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Runs `chunk` on every task in parallel and sums the arrays it returns element by element,
/// pairwise in a tree whose shape depends only on the number of tasks (never on the threads), so
/// neither do the bits.
///
/// The calling thread works too: it claims tasks from a shared counter like the pool's threads
/// do, so a task that no pool thread has claimed yet is run by the caller rather than waited for.
/// On two cores a cold hand-off to a sleeping pool thread and back costs tens of microseconds each
/// way; with fork-join from outside the pool, three of them sat on the critical path of every
/// sparse backward pass (measured: 290 us on two threads against 227 us on one, batch 32).
pub(crate) fn map_sum<T: Send, F: Real>(
    tasks: Vec<T>,
    len: usize,
    chunk: &(impl Fn(T) -> Vec<F> + Sync),
) -> Vec<F> {
    if tasks.len() <= 1 {
        return tasks
            .into_iter()
            .next()
            .map_or_else(|| vec![F::zero(); len], chunk);
    }
    let tasks: Vec<Mutex<Option<T>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<Vec<F>>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    claimed_parallel(tasks.len(), &|k| {
        let task = lock(&tasks[k]).take().expect("each task is claimed once");
        *lock(&results[k]) = Some(chunk(task));
    });
    let mut results: Vec<Vec<F>> = results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every task ran")
        })
        .collect();
    // The tree, element block by element block: blocks are independent, so they too can run on
    // every thread; below a few blocks the hand-off would cost more than the sums.
    const BLOCK: usize = 1 << 15;
    let mut blocks: Vec<Vec<&mut [F]>> = (0..len.div_ceil(BLOCK)).map(|_| Vec::new()).collect();
    for result in results.iter_mut() {
        for (b, piece) in result.chunks_mut(BLOCK).enumerate() {
            blocks[b].push(piece);
        }
    }
    if blocks.len() < 4 {
        for mut pieces in blocks {
            tree_sum(&mut pieces);
        }
    } else {
        let blocks: Vec<Mutex<Option<Vec<&mut [F]>>>> =
            blocks.into_iter().map(|b| Mutex::new(Some(b))).collect();
        claimed_parallel(blocks.len(), &|b| {
            let mut pieces = lock(&blocks[b]).take().expect("each block is claimed once");
            tree_sum(&mut pieces);
        });
    }
    results.swap_remove(0)
}

/// Sums `pieces[1..]` into `pieces[0]` in a fixed pairwise tree (left half: the first
/// `len / 2`).
fn tree_sum<F: Real>(pieces: &mut [&mut [F]]) {
    if pieces.len() <= 1 {
        return;
    }
    let (left, right) = pieces.split_at_mut(pieces.len() / 2);
    tree_sum(left);
    tree_sum(right);
    for (x, &y) in left[0].iter_mut().zip(right[0].iter()) {
        *x += y;
    }
}

/// Runs `work(k)` for every k in `0..count`, each exactly once, on the calling thread and up to
/// `threads - 1` threads of the current rayon pool, each claiming the next k from a shared counter.
/// The caller returns once every claimed k has finished; it never waits for a pool thread that has
/// not yet woken up (that thread later finds nothing left to claim and stops), and it spins rather
/// than sleeps while a claimed k finishes elsewhere, so no wake-up sits on its path. A panic in
/// `work` on a pool thread is re-raised on the caller.
#[allow(unsafe_code)]
fn claimed_parallel(count: usize, work: &(dyn Fn(usize) + Sync)) {
    struct Claims {
        next: AtomicUsize,
        finished: AtomicUsize,
        /// The first panic of a task on any thread, re-raised on the caller.
        panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
        count: usize,
        /// `work`, its lifetime erased; dereferenced only under a claim k < count.
        work: *const (dyn Fn(usize) + Sync + 'static),
    }
    // SAFETY: `work` is Sync, and is only called through this pointer while the caller, which
    // owns it, waits (see below).
    unsafe impl Send for Claims {}
    unsafe impl Sync for Claims {}
    impl Claims {
        fn run(&self) {
            loop {
                let k = self.next.fetch_add(1, Ordering::AcqRel);
                if k >= self.count {
                    return;
                }
                // SAFETY: k < count was claimed, so the caller has not returned: it returns only
                // after `finished` reaches `count`, which this claim's increment below is part of.
                let work = unsafe { &*self.work };
                if let Err(payload) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(k)))
                {
                    lock(&self.panic).get_or_insert(payload);
                }
                self.finished.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    // SAFETY: only the lifetime changes; see `Claims::work`.
    let work: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(work) };
    let claims = Arc::new(Claims {
        next: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        panic: Mutex::new(None),
        count,
        work,
    });
    let helpers = rayon::current_num_threads().min(count).saturating_sub(1);
    for _ in 0..helpers {
        let claims = claims.clone();
        rayon::spawn(move || claims.run());
    }
    claims.run();
    let mut spins = 0u32;
    while claims.finished.load(Ordering::Acquire) < count {
        if spins < 1 << 16 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    let panic = lock(&claims.panic).take();
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `rows x cols` row-major into its `cols x rows` transpose, in square tiles that stay in cache.
pub(crate) fn transpose<F: Copy + Default>(src: &[F], rows: usize, cols: usize) -> Vec<F> {
    const TILE: usize = 16;
    let mut out = vec![F::default(); rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    out
}

pub(crate) fn check_len(op: &'static str, what: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(shape_err(op, format!("{what} of {want}"), format!("{got}")))
    }
}

pub(crate) fn check_batch(op: &'static str, spikes: &SpikeEvents) -> Result<()> {
    if spikes.batch() == 0 || spikes.steps() == 0 {
        Err(CoreError::EmptyBatch { op })
    } else {
        Ok(())
    }
}

fn to_real<F: Real>(data: &[f32]) -> Vec<F> {
    data.iter().map(|&x| F::of(x as f64)).collect()
}

impl<F: Real> Backend for CpuBackend<F> {
    type Tensor = CpuTensor<F>;
    type Spikes = SpikeEvents;
    type Labels = Vec<u32>;
    type LayerTape = CpuTape<F>;
    type ReadoutTape = CpuReadoutTape;
    type Mark = Instant;

    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads(), F::NAME)
    }

    fn upload(&self, data: &[f32]) -> Result<CpuTensor<F>> {
        Ok(CpuTensor(to_real(data)))
    }

    fn zeros(&self, len: usize) -> Result<CpuTensor<F>> {
        Ok(CpuTensor(vec![F::zero(); len]))
    }

    fn download(&self, tensor: &CpuTensor<F>) -> Result<Vec<f64>> {
        Ok(tensor.0.iter().map(|x| x.as_f64()).collect())
    }

    fn download_f32(&self, tensor: &CpuTensor<F>) -> Result<Vec<f32>> {
        Ok(tensor.0.iter().map(|x| x.as_f64() as f32).collect())
    }

    fn upload_spikes(&self, spikes: &SpikeEvents) -> Result<SpikeEvents> {
        Ok(spikes.clone())
    }

    fn download_spikes(&self, spikes: &SpikeEvents) -> Result<SpikeEvents> {
        Ok(spikes.clone())
    }

    fn spike_count(&self, spikes: &SpikeEvents) -> Result<u64> {
        Ok(spikes.total_events() as u64)
    }

    fn upload_labels(&self, labels: &[u32], classes: usize) -> Result<Vec<u32>> {
        if let Some((sample, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            return Err(CoreError::Label {
                sample,
                label,
                classes,
            });
        }
        Ok(labels.to_vec())
    }

    fn lif_forward(
        &self,
        input: &SpikeEvents,
        weights: &CpuTensor<F>,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>> {
        keep.validate()?;
        check_batch("lif_forward", input)?;
        check_len("lif_forward", "input units", layer.inputs, input.units())?;
        check_len(
            "lif_forward",
            "weights",
            layer.inputs * layer.neurons,
            weights.len(),
        )?;
        let out = self.run(|| forward::lif_forward(input, &weights.0, layer, keep));
        Ok(LayerOutput {
            spikes: out.0,
            counts: CpuTensor(out.1),
            tape: out.2,
        })
    }

    fn lif_forward_float(
        &self,
        input: &CpuTensor<F>,
        batch: usize,
        steps: usize,
        weights: &CpuTensor<F>,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>> {
        keep.validate()?;
        if batch == 0 || steps == 0 {
            return Err(CoreError::EmptyBatch {
                op: "lif_forward_float",
            });
        }
        check_len(
            "lif_forward_float",
            "input",
            batch * steps * layer.inputs,
            input.len(),
        )?;
        check_len(
            "lif_forward_float",
            "weights",
            layer.inputs * layer.neurons,
            weights.len(),
        )?;
        let (spikes, counts, tape) = self.run(|| {
            float_input::lif_forward_float(&input.0, batch, steps, &weights.0, layer, keep)
        });
        Ok(LayerOutput {
            spikes,
            counts: CpuTensor(counts),
            tape,
        })
    }

    fn lif_backward_float(
        &self,
        tape: &CpuTape<F>,
        input: &CpuTensor<F>,
        weights: &CpuTensor<F>,
        grad_spikes: &CpuTensor<F>,
    ) -> Result<CpuTensor<F>> {
        let cells = tape.batch * tape.steps;
        if cells == 0 || !input.len().is_multiple_of(cells) {
            return Err(shape_err(
                "lif_backward_float",
                format!("input of {} x {} x inputs", tape.batch, tape.steps),
                input.len(),
            ));
        }
        let inputs = input.len() / cells;
        check_len(
            "lif_backward_float",
            "weights",
            inputs * tape.neurons,
            weights.len(),
        )?;
        check_len(
            "lif_backward_float",
            "grad_spikes",
            tape.grad_len()?,
            grad_spikes.len(),
        )?;
        Ok(CpuTensor(self.run(|| {
            float_input::lif_backward_float(tape, &input.0, inputs, &grad_spikes.0)
        })))
    }

    fn readout_forward(
        &self,
        hidden: &SpikeEvents,
        weights: &CpuTensor<F>,
        readout: &ReadoutSpec,
    ) -> Result<(CpuTensor<F>, CpuReadoutTape)> {
        check_batch("readout_forward", hidden)?;
        check_len(
            "readout_forward",
            "hidden units",
            readout.inputs,
            hidden.units(),
        )?;
        check_len(
            "readout_forward",
            "weights",
            readout.inputs * readout.classes,
            weights.len(),
        )?;
        let (logits, tape) = self.run(|| forward::readout_forward(hidden, &weights.0, readout));
        Ok((CpuTensor(logits), tape))
    }

    fn loss(
        &self,
        logits: &CpuTensor<F>,
        labels: &Vec<u32>,
        counts: [&CpuTensor<F>; 2],
        hidden: usize,
        loss: &LossSpec,
    ) -> Result<LossOutput<Self>> {
        let batch = labels.len();
        if batch == 0 || hidden == 0 {
            return Err(CoreError::EmptyBatch { op: "loss" });
        }
        if !logits.len().is_multiple_of(batch) || logits.is_empty() {
            return Err(shape_err(
                "loss",
                format!("logits of {batch} x classes"),
                logits.len(),
            ));
        }
        let classes = logits.len() / batch;
        if let Some((sample, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            return Err(CoreError::Label {
                sample,
                label,
                classes,
            });
        }
        for c in counts {
            check_len("loss", "spike counts", batch * hidden, c.len())?;
        }
        let out = loss::loss(
            &logits.0,
            labels,
            [&counts[0].0, &counts[1].0],
            hidden,
            loss,
        );
        let [r1, r2] = out.reg;
        let wrap = |r: [Vec<F>; 2]| {
            let [per_sample, per_neuron] = r;
            RegGrad {
                per_sample: CpuTensor(per_sample),
                per_neuron: CpuTensor(per_neuron),
            }
        };
        Ok(LossOutput {
            terms: CpuTensor(out.terms),
            grad_logits: CpuTensor(out.grad_logits),
            reg: [wrap(r1), wrap(r2)],
        })
    }

    fn readout_backward(
        &self,
        tape: &CpuReadoutTape,
        hidden: &SpikeEvents,
        weights: &CpuTensor<F>,
        grad_logits: &CpuTensor<F>,
    ) -> Result<(CpuTensor<F>, CpuTensor<F>)> {
        let spec = &tape.spec;
        if hidden.batch() != tape.batch || hidden.steps() != tape.steps {
            return Err(shape_err(
                "readout_backward",
                (tape.batch, tape.steps),
                (hidden.batch(), hidden.steps()),
            ));
        }
        check_len(
            "readout_backward",
            "hidden units",
            spec.inputs,
            hidden.units(),
        )?;
        check_len(
            "readout_backward",
            "weights",
            spec.inputs * spec.classes,
            weights.len(),
        )?;
        check_len(
            "readout_backward",
            "grad_logits",
            tape.batch * spec.classes,
            grad_logits.len(),
        )?;
        let (dw, g) = self.run(|| loss::readout_backward(tape, hidden, &grad_logits.0));
        Ok((CpuTensor(dw), CpuTensor(g)))
    }

    fn readout_spike_grad(
        &self,
        g: &CpuTensor<F>,
        weights: &CpuTensor<F>,
        reg: &RegGrad<Self>,
        layout: &CpuTape<F>,
    ) -> Result<CpuTensor<F>> {
        let (batch, steps, neurons) = (layout.batch, layout.steps, layout.neurons);
        if !g.len().is_multiple_of(batch * steps) || g.is_empty() {
            return Err(shape_err(
                "readout_spike_grad",
                format!("g of {batch} x {steps} x classes"),
                g.len(),
            ));
        }
        let classes = g.len() / (batch * steps);
        check_len(
            "readout_spike_grad",
            "weights",
            neurons * classes,
            weights.len(),
        )?;
        check_reg("readout_spike_grad", reg, batch, neurons)?;
        layout.grad_len()?;
        Ok(CpuTensor(self.run(|| {
            loss::readout_spike_grad(&g.0, &weights.0, classes, reg, layout)
        })))
    }

    fn lif_backward(
        &self,
        tape: &CpuTape<F>,
        input: &SpikeEvents,
        weights: &CpuTensor<F>,
        grad_spikes: &CpuTensor<F>,
        below: Option<(&CpuTape<F>, &RegGrad<Self>)>,
    ) -> Result<(CpuTensor<F>, Option<CpuTensor<F>>)> {
        if input.batch() != tape.batch || input.steps() != tape.steps {
            return Err(shape_err(
                "lif_backward",
                (tape.batch, tape.steps),
                (input.batch(), input.steps()),
            ));
        }
        let inputs = input.units();
        check_len(
            "lif_backward",
            "weights",
            inputs * tape.neurons,
            weights.len(),
        )?;
        check_len(
            "lif_backward",
            "grad_spikes",
            tape.grad_len()?,
            grad_spikes.len(),
        )?;
        if let Some((below_tape, reg)) = below {
            if below_tape.batch != tape.batch
                || below_tape.steps != tape.steps
                || below_tape.neurons != inputs
            {
                return Err(shape_err(
                    "lif_backward",
                    (tape.batch, tape.steps, inputs),
                    (below_tape.batch, below_tape.steps, below_tape.neurons),
                ));
            }
            check_reg("lif_backward", reg, tape.batch, inputs)?;
            let same_kind = matches!(
                (&tape.kept, &below_tape.kept),
                (Kept::Dense { .. }, Kept::Dense { .. })
                    | (Kept::Sparse { .. }, Kept::Sparse { .. })
            );
            if !same_kind {
                return Err(CoreError::Tape {
                    op: "lif_backward",
                    why: "a layer and the layer below must keep the same kind of tape".into(),
                });
            }
        }
        let below = below.map(|(t, r)| (t, r.per_sample.as_slice(), r.per_neuron.as_slice()));
        let (dw, ds_in) = self.run(|| match &tape.kept {
            Kept::Dense {
                v_minus_theta,
                band,
            } => grad::dense::lif_backward(
                tape,
                v_minus_theta,
                *band,
                input,
                &weights.0,
                &grad_spikes.0,
                below,
            ),
            Kept::Sparse { .. } => {
                grad::sparse::lif_backward(tape, input, &weights.0, &grad_spikes.0, below)
            }
            Kept::Nothing => unreachable!("grad_len rejected a tape that kept nothing"),
        });
        Ok((CpuTensor(dw), ds_in.map(CpuTensor)))
    }

    fn adam(
        &self,
        param: &mut CpuTensor<F>,
        grad: &CpuTensor<F>,
        moment1: &mut CpuTensor<F>,
        moment2: &mut CpuTensor<F>,
        step: u64,
        adam: &AdamSpec,
    ) -> Result<()> {
        let n = param.len();
        check_len("adam", "grad", n, grad.len())?;
        check_len("adam", "moment1", n, moment1.len())?;
        check_len("adam", "moment2", n, moment2.len())?;
        if step == 0 {
            return Err(CoreError::Config {
                name: "step",
                value: "0".into(),
                why: "Adam steps count from 1",
            });
        }
        self.run(|| {
            adam::adam(
                &mut param.0,
                &grad.0,
                &mut moment1.0,
                &mut moment2.0,
                step,
                adam,
            )
        });
        Ok(())
    }

    fn tape_stats(&self, tape: &CpuTape<F>) -> Result<TapeStats> {
        let active = match &tape.kept {
            Kept::Nothing => 0,
            Kept::Dense { .. } => tape.cells(),
            Kept::Sparse { cells, .. } => cells.len(),
        };
        Ok(TapeStats {
            active: active as u64,
            cells: tape.cells() as u64,
            kept_bytes: tape.kept_bytes() as u64,
            overflowed: false,
        })
    }

    fn download_tape(&self, tape: &CpuTape<F>) -> Result<HostTape> {
        Ok(match &tape.kept {
            Kept::Nothing => HostTape::Nothing,
            Kept::Dense {
                v_minus_theta,
                band,
            } => HostTape::Dense {
                v_minus_theta: v_minus_theta.iter().map(|x| x.as_f64()).collect(),
                band: band.map(|b| b.as_f64()),
            },
            Kept::Sparse {
                band,
                sample_offsets,
                cells,
                v_minus_theta,
            } => {
                let per_sample = (tape.steps * tape.neurons) as u32;
                let mut entries = Vec::with_capacity(cells.len());
                for b in 0..tape.batch {
                    let range = sample_offsets[b] as usize..sample_offsets[b + 1] as usize;
                    for k in range {
                        entries.push((b as u32 * per_sample + cells[k], v_minus_theta[k].as_f64()));
                    }
                }
                HostTape::Sparse {
                    entries,
                    band: band.as_f64(),
                }
            }
        })
    }

    fn spike_grad_to_host(&self, layout: &CpuTape<F>, grad: &CpuTensor<F>) -> Result<Vec<f64>> {
        check_len(
            "spike_grad_to_host",
            "spike gradient",
            layout.grad_len()?,
            grad.len(),
        )?;
        Ok(match &layout.kept {
            Kept::Sparse {
                sample_offsets,
                cells,
                ..
            } => {
                let per_sample = layout.steps * layout.neurons;
                let mut dense = vec![0.0; layout.cells()];
                for b in 0..layout.batch {
                    for k in sample_offsets[b] as usize..sample_offsets[b + 1] as usize {
                        dense[b * per_sample + cells[k] as usize] = grad.0[k].as_f64();
                    }
                }
                dense
            }
            _ => grad.0.iter().map(|x| x.as_f64()).collect(),
        })
    }

    fn mark(&self) -> Result<Instant> {
        Ok(Instant::now())
    }

    fn elapsed_ms(&self, from: &Instant, to: &Instant) -> Result<f64> {
        Ok(to.saturating_duration_since(*from).as_secs_f64() * 1e3)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

fn check_reg<F: Real>(
    op: &'static str,
    reg: &RegGrad<CpuBackend<F>>,
    batch: usize,
    neurons: usize,
) -> Result<()> {
    check_len(
        op,
        "per-sample regulariser gradient",
        batch,
        reg.per_sample.len(),
    )?;
    check_len(
        op,
        "per-neuron regulariser gradient",
        batch * neurons,
        reg.per_neuron.len(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::{claimed_parallel, map_sum, same_bits};

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
    }

    #[test]
    fn claimed_parallel_runs_every_index_once() {
        for threads in [1, 2, 4] {
            for count in [0, 1, 2, 3, 17, 1000] {
                let runs: Vec<AtomicU8> = (0..count).map(|_| AtomicU8::new(0)).collect();
                pool(threads).install(|| {
                    claimed_parallel(count, &|k| {
                        runs[k].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    #[should_panic(expected = "task 7 failed")]
    fn claimed_parallel_reraises_a_task_panic() {
        pool(2).install(|| {
            claimed_parallel(16, &|k| {
                if k == 7 {
                    panic!("task {k} failed");
                }
            })
        });
    }

    /// Sums of a length spanning several element blocks (summed on several threads), against
    /// the same tree summed on one thread and a plain f64 sum.
    #[test]
    fn map_sum_bits_do_not_depend_on_threads() {
        let len = 5 * (1 << 15) + 3;
        for tasks in [2usize, 3, 7, 8] {
            let chunk = |t: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * 31 + t * 17) % 101) as f32 * 0.013 - 0.6)
                    .collect()
            };
            let sums: Vec<Vec<f32>> = [1, 2, 3]
                .iter()
                .map(|&threads| {
                    pool(threads).install(|| map_sum((0..tasks).collect(), len, &chunk))
                })
                .collect();
            assert!(same_bits(&sums[0], &sums[1]) && same_bits(&sums[0], &sums[2]));
            for i in [0, 1, len / 2, len - 1] {
                let want: f64 = (0..tasks).map(|t| f64::from(chunk(t)[i])).sum();
                assert!((f64::from(sums[0][i]) - want).abs() < 1e-4, "element {i}");
            }
        }
    }
}
