//! `CudaBackend`: s3gd-core's `Backend` on one CUDA device. Host launch code for every kernel sits
//! in the method named after its CPU twin.
//!
//! Device layouts: uploaded input spikes are CSR by (b, t) plus event times by unit (b, i); hidden
//! spikes are bit rows by (b, t) plus bit words over time by unit (b, j). A sparse tape holds, per
//! segment of 32 neurons of one sample, up to `cap` entries (t << 5 | lane, V - theta); `cap` adapts
//! to the largest segment seen, and a pass that overflowed is reported through `TapeStats` so that
//! the trainer runs it again. No kernel uses float atomics: results are the same bits on every run.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaEvent, LaunchArgs, LaunchConfig, PushKernelArg};

use s3gd_core::backend::{
    Backend, HostTape, LayerOutput, LossOutput, ReadoutSpikeGrad, RegGrad, StepScalars, TapeStats,
};
use s3gd_core::lif::{Keep, LayerSpec};
use s3gd_core::network::{AdamSpec, LossSpec, ReadoutSpec};
use s3gd_core::{CoreError, Readout, Result, SpikeEvents, SpikeEventsBuilder};

use crate::device::{Device, DeviceBuf, GemmPrecision, INT8_SPLIT_SLICES};
use crate::error::CudaError;

/// Longest time axis the sparse backward supports with bit inputs (16 words of 32 steps).
pub const MAX_SPARSE_STEPS: usize = 512;
/// Longest time axis a sparse tape can index (11 bits of step in a u16 entry).
pub const MAX_TAPE_STEPS: usize = 2047;

const BLOCK: u32 = 256;

/// Where a dense adjoint scan takes dS from.
#[derive(Clone, Copy)]
enum SpikeGradIn<'a> {
    /// Laid out by the dense tape: `batch x steps x neurons`.
    Laid(&'a CudaTensor),
    /// Computed from the readout's operands where the scan reads it; the classes C (at least 1).
    Readout(&'a ReadoutSpikeGrad<'a, CudaBackend>, usize),
}

/// How a dense `batch x steps x neurons` array of a layer's backward is laid out on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdjointLayout {
    /// Row (b, t) after row: `batch x steps x neurons`, row-major.
    ByRow,
    /// Neuron after neuron: `neurons x (batch x steps)`, row-major.
    Transposed,
}

/// readout_spike_grad_dense_f32's block width, rows per group and largest class count (readout.cu).
const READOUT_GRAD_THREADS: usize = 128;
const READOUT_GRAD_ROWS: usize = 16;
const READOUT_GRAD_MAX_C: usize = 32;

/// Shared memory of readout_spike_grad_dense_f32 for `classes`: W3's rows and a group's g in f64,
/// then the group's per-sample terms (f64) and offsets into l (u64).
fn readout_grad_shared_bytes(classes: usize) -> u32 {
    ((classes * (READOUT_GRAD_THREADS + READOUT_GRAD_ROWS) + 2 * READOUT_GRAD_ROWS) * 8) as u32
}

/// Threads per block of the tiled dS_in kernel (a warp per sample at a time).
const TILED_INPUT_BLOCK: usize = 1024;
/// Entries below each warp of the tiled dS_in kernel lists (`TILED_LIST` in s3gd_bwd_tiled.cu).
const TILED_LIST: usize = 32;
/// Shared memory of the tiled dS_in kernel besides its tile: the warp lists ((t, row, slot) per
/// listed entry), then the block's next-sample counter (16 bytes, keeping the alignment).
const TILED_LIST_BYTES: usize = (TILED_INPUT_BLOCK / 32) * 3 * TILED_LIST * 4 + 16;
/// Bits of a neuron index in the flat entry keys of the tiled dS_in kernel (`TILED_UNIT_BITS`).
const TILED_UNIT_BITS: usize = 21;
/// Warps of a block of `flatten_by_sample` (a block per sample, each warp a run of its list).
const FLATTEN_WARPS: usize = 16;
/// The narrowest layer whose spike-input currents kernel loads a step's weight rows 16 at a time
/// (`spike_current_*_wide_f64`; 4 at a time on narrower layers). On the H200 (twenty-first
/// session, call 11, Fashion-MNIST, 10 timed steps): N = 4096 layer-2 forward 7.14-7.17 ms with 4,
/// 6.25-6.30 ms with 16; at N = 200 four keep its own kernel's registers.
const CURRENT_LOADS_AHEAD_MIN_NEURONS: usize = 1024;
/// Bytes of f64 currents the spike-input forward holds at once (a chunk of samples, in chunks of
/// equal size). Fewer, larger chunks run faster, measured (each launch ends in a partial wave of
/// blocks, and chunks of one step took from 150 to 870 us, which that alone does not explain): on
/// the H200 (twenty-first session, call 12, Fashion-MNIST N = 4096, 10 timed steps) the
/// layer-2 forward took 6.28-6.39 ms in chunks of 48 MiB (15 samples), 3.95-3.98 ms in 192 MiB and
/// 2.52-2.53 ms in 768 MiB, the sparse step 10.04-10.18 -> 5.63-5.64 ms. The whole batch at
/// N = 4096 (839 MB) fits in one chunk; at N = 200 it is 41 MB whatever the budget.
const CURRENT_CHUNK_BYTES: usize = 1 << 30;
/// Rows (samples x steps) of a float-input layer's currents a TF32 GEMM call takes at most (see
/// `CudaBackend::currents_chunks`).
const CURRENTS_CHUNK_ROWS: usize = 2000;
/// The narrowest float-input layer whose TF32 currents GEMM is chunked: the chunks were measured
/// from N = 4096 up, and a narrow layer's calls would be small enough for launches to count.
const CURRENTS_CHUNK_MIN_NEURONS: usize = 4096;
/// Threads (samples x neurons) a chunk's scan needs to run beside the next currents GEMM call: a
/// narrower scan cannot keep the memory busy (see `CudaBackend::currents_chunks`).
const CURRENTS_SCAN_BESIDE_MIN_THREADS: usize = 1 << 16;
/// Groups of 32 entries a block of the list by step is dealt into by bank (`deal_by_bank` in
/// s3gd_bwd_tiled.cu), and the most the kernel takes (`TILED_DEAL_MAX_GROUPS`).
const TILED_DEAL_GROUPS: usize = 4;
const TILED_DEAL_MAX_GROUPS: usize = 8;
/// Entries below a warp of the tiled dS_in kernel sums at once (`TILED_BATCH`).
const TILED_BATCH: usize = 4;
/// Seconds per (tile, entry of the layer, pass) of the tiled dS_in kernel with the device full
/// (H200, FMNIST shape, N = 4096: about 0.8 ms at 1.2 weighted passes of four in tape order; the
/// list by step took it from 893 to 675 us, v71; samples heaviest first to 480 us, v74).
const TILED_INPUT_COST: f64 = 3.0e-12;
/// Narrowest layer for which the automatic choice considers the tiled dS_in path beside dW by
/// columns, with the list by step (beside dW from the later adjoint the cost model alone decides,
/// since the seventeenth session's refit). Faster than the sampled dots from N = 1000 (FMNIST
/// shape, layer-2 sparse backward forced each way: 0.35 against 0.41 ms at N = 1000, 0.63 against
/// 0.82 ms at N = 2000; H200, 2026-11-29, twelfth session, calls 17-18), at N = 800 (thirteenth
/// session, call 17: 0.184 against the pairs path's 0.501 and the sampled dots' 0.322 ms), and from
/// N = 300 with v88's column parts (sixteenth session, calls 2 and 5, forced against the pairs
/// path: N = 300 0.098-0.099 against 0.118-0.124 ms, 400 0.110 against 0.184-0.189, 500 0.115
/// against 0.208; level at 250, 0.097 against 0.095; slower at 200, 0.093-0.094 against
/// 0.080-0.084). From here the cost model decides (with the trace kernel's per-entry term and the
/// column-chain term refitted at these widths, and the tiled kernel overlapping a chain-bound dW by
/// columns, the model prefers the pairs path at N = 200 and the tiled path from N = 250, where the
/// two are level).
const TILED_MIN_NEURONS_BY_COLUMNS: usize = 300;
/// Layers of at least this many neurons run the tiled dS_in kernel with its entries below sorted
/// by row and a row's later steps sharing its weight loads (`set_tiled_row_sharing`). FMNIST shape,
/// layer-2 sparse backward over 30 timed steps, this gate against sharing always (v83; H200,
/// 2026-11-29, fifteenth session, call 1, two runs each): N = 800 0.198-0.199 against 0.204-0.208
/// ms, 1000 0.215-0.218 against 0.226, 2000 0.457 against 0.460-0.463, 3072 0.744 against
/// 0.734-0.740, 4096 1.115-1.124 against 1.114-1.125; without sharing 3072 takes 0.755-0.764 and
/// 4096 1.164-1.179 (below 3072 the tiles hold 32 rows, and the sort weighs more against shorter
/// passes).
const TILED_ROW_SHARING_MIN_NEURONS: usize = 3072;
/// dW by columns: active entries of the layer per live (sample, neuron) pair, the pairs a warp
/// visits (FMNIST shape, N = 4096, first batch: 322,757 entries in 198,052 pairs).
const COLUMN_ENTRIES_PER_VISIT: f64 = 1.63;
/// dW by columns: seconds per visit with the device full, and per visit of a column's chain (a
/// warp takes its column's live samples one after another, so the kernel lasts at least as long as
/// its heaviest columns' chains). H200, FMNIST shape: the device term from v74 (376 us at N = 4096,
/// 264 k visits; 89 us at N = 1000, 63 k visits, in the sixteenth session); the chain term refitted
/// in the sixteenth session (v88 kernel alone, one stream, 30 timed steps: 58 / 64 / 69 / 74 us at
/// N = 300 / 400 / 600 / 800 for chains of 16-18 visits a part, 199 us at N = 2000 for 34; a column
/// in parts divides its chain). It had been 5.8 us, from 60 visits a chain at N = 1000 with v74.
const COLUMN_VISIT_TIME: f64 = 1.42e-9;
const COLUMN_CHAIN_VISIT_TIME: f64 = 3.6e-6;
/// Seconds the tiled dS_in kernel takes at least (a warp's chain of samples): 22-29 us alone at N
/// = 200-500 (FMNIST shape, sixteenth session).
const TILED_INPUT_FLOOR: f64 = 20e-6;
/// The trace kernel for dW (`s3gd_bwd_weights_bits_f32` with its sum of group partials): seconds
/// at least, and per active entry of its busiest block's share (entries over segment tiles x
/// sample groups; the blocks run in waves of about seven a multiprocessor). Fitted on the H200
/// (seventeenth session, kernels alone): Fashion-MNIST N = 200-1000, 70-540 us (real images, whose
/// samples differ in activity), N-MNIST and SHD shapes N = 200-2000, 0.24-22 ms (synthetic spikes:
/// about a third less, so the term is pessimistic there).
const TRACE_DW_FLOOR: f64 = 20e-6;
const TRACE_DW_BLOCK_ENTRY_TIME: f64 = 0.45e-6;
/// The pairs kernel (`s3gd_bwd_input_f32`, a block per sample): seconds per (active entry of the
/// sample, 256 of its entries below), Fashion-MNIST N = 200-2000 (seventeenth session: 73 us to
/// 4.7 ms; 0.1 us on the synthetic N-MNIST and SHD shapes, whose samples are alike, 0.05 us with
/// the weights staged).
const PAIRS_ENTRY_PASS_TIME: f64 = 0.35e-6;
/// The dense later adjoint from the tape (`later_adjoint_from_tape_f32`, a warp's chain over the
/// steps): seconds, per step and per element (eighteenth session, v97, kernels alone: 25 us at
/// T = 100, N = 200 to 756 us at T = 500, N = 4096, within 12% on all seven shapes measured).
const ADJOINT_FLOOR: f64 = 13.9e-6;
const ADJOINT_STEP_TIME: f64 = 0.039e-6;
const ADJOINT_ELEMENT_TIME: f64 = 1.44e-12;
/// The sampled dots (`sampled_input_grad_f32`, a warp per active entry below): seconds per entry
/// and per (entry, neuron) (seventeenth session, 33 us to 2.9 ms on the three shapes).
const SAMPLED_ENTRY_TIME: f64 = 0.45e-9;
const SAMPLED_ENTRY_NEURON_TIME: f64 = 0.46e-12;
/// dW from the later adjoint (`weight_grad_from_adjoint_bits_f32` in sample groups, with their
/// sum): seconds per (input spike, neuron), a row of G read per spike, and per element of G
/// (seventeenth session, v91: 15 us to 4.5 ms on the three shapes, N = 200-4096).
const ADJOINT_DW_SPIKE_NEURON_TIME: f64 = 0.44e-12;
const ADJOINT_DW_ELEMENT_TIME: f64 = 3.0e-12;
/// Entries a sparse weight-gradient block stages at a time (`STAGE` in s3gd_bwd.cu).
const STAGE: usize = 512;
/// Rows of input current per block (`CURRENT_ROWS` in lif_fwd.cu).
const CURRENT_ROWS: usize = 8;

fn grid_for(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u64).div_ceil(block as u64).max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A launch over a `rows x inner` array: x-blocks span a row, y-blocks stride over the rows (the
/// kernels loop `row += gridDim.y`), so no thread divides a 64-bit index. About 8192 blocks in all:
/// a block per row would make blocks of one element per thread, whose scheduling then dominates
/// (the H200 ran 131 M such elements at 0.8 TB/s).
fn grid_rows(rows: usize, inner: usize, block: u32) -> LaunchConfig {
    let x_blocks = inner.div_ceil(block as usize).max(1);
    let y_blocks = (8192 / x_blocks).clamp(1, rows.clamp(1, 65535));
    LaunchConfig {
        grid_dim: (x_blocks as u32, y_blocks as u32, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn words(bits: usize) -> usize {
    bits.div_ceil(32)
}

fn int(what: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        CudaError::TooLarge {
            what,
            value,
            limit: i32::MAX as usize,
        }
        .into()
    })
}

fn shape(op: &'static str, expected: impl std::fmt::Debug, got: impl std::fmt::Debug) -> CoreError {
    CoreError::Shape {
        op,
        expected: format!("{expected:?}"),
        got: format!("{got:?}"),
    }
}

/// A float array on the device.
pub struct CudaTensor {
    buf: DeviceBuf<f32>,
    len: usize,
    /// `Some((rows, cols))` where the tensor, a rows x cols matrix (row-major), is stored as its
    /// transpose: dW by columns writes a column of dW per row, and Adam reads it so, which saves a
    /// transpose of dW per step (v85). Downloads transpose on the host; every other op takes
    /// row-major tensors only and says so (`check_tensor`).
    stored_transposed: Option<(usize, usize)>,
}

impl CudaTensor {
    fn row_major(buf: DeviceBuf<f32>, len: usize) -> Self {
        Self {
            buf,
            len,
            stored_transposed: None,
        }
    }

    /// A rows x cols matrix held in `buf` as its transpose (see `stored_transposed`).
    fn stored_transposed(buf: DeviceBuf<f32>, rows: usize, cols: usize) -> Self {
        Self {
            buf,
            len: rows * cols,
            stored_transposed: Some((rows, cols)),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether the tensor is stored as its transpose (see `CudaBackend::upload_stored_transposed`).
    pub fn is_stored_transposed(&self) -> bool {
        self.stored_transposed.is_some()
    }
}

/// Labels on the device.
pub struct CudaLabels {
    buf: DeviceBuf<u32>,
    len: usize,
}

enum SpikeLayout {
    /// Uploaded input: CSR by (b, t) with repeated ids for counts (`offsets`, `ids`, packed in one
    /// buffer, one copy per batch), and the same events by unit, built on the device
    /// (`unit_offsets`, `unit_times`).
    Events {
        data: DeviceBuf<u32>,
        offsets: Range<usize>,
        ids: Range<usize>,
        unit_offsets: DeviceBuf<u32>,
        unit_times: DeviceBuf<u32>,
        total: u64,
    },
    /// Hidden spikes: bit rows by (b, t) and bit words over time by unit; stats[0] = spike count.
    Bits {
        rows: DeviceBuf<u32>,
        cols: DeviceBuf<u32>,
        stats: Arc<DeviceBuf<u32>>,
    },
}

/// A batch of spike rasters on the device.
pub struct CudaSpikes {
    batch: usize,
    steps: usize,
    units: usize,
    layout: SpikeLayout,
}

impl SpikeLayout {
    /// Pushes the spikes by unit: the bit words over time (hidden spikes) or the event offsets and
    /// times (the uploaded input), the leading arguments of the kernels that walk a unit's
    /// spikes (`s3gd_bwd_weights_*_f32`, `weight_grad_from_adjoint_*_f32`).
    fn push_by_unit<'a>(&'a self, l: &mut LaunchArgs<'a>) {
        match self {
            SpikeLayout::Bits { cols, .. } => l.arg(&cols.slice),
            SpikeLayout::Events {
                unit_offsets,
                unit_times,
                ..
            } => l.arg(&unit_offsets.slice).arg(&unit_times.slice),
        };
    }
}

impl CudaSpikes {
    /// Bytes of the form the sparse backward reads (by unit) or the dense backward reads (by row).
    fn kept_bytes(&self, sparse: bool) -> usize {
        match (&self.layout, sparse) {
            (
                SpikeLayout::Events {
                    unit_offsets,
                    unit_times,
                    ..
                },
                true,
            ) => unit_offsets.bytes() + unit_times.bytes(),
            (SpikeLayout::Events { offsets, ids, .. }, false) => 4 * (offsets.len() + ids.len()),
            (SpikeLayout::Bits { cols, .. }, true) => cols.bytes(),
            (SpikeLayout::Bits { rows, .. }, false) => rows.bytes(),
        }
    }
}

enum TapeKept {
    Nothing,
    Dense {
        vmt: DeviceBuf<f32>,
        band: Option<f64>,
    },
    Sparse {
        band: f64,
        cap: usize,
        idx: DeviceBuf<u16>,
        val: DeviceBuf<f32>,
        count: DeviceBuf<u32>,
    },
}

/// What a LIF layer keeps for backward on the device.
pub struct CudaTape {
    batch: usize,
    steps: usize,
    neurons: usize,
    /// The layer's input width: with the other sizes, what tells two layers' activity apart.
    inputs: usize,
    beta: f64,
    input_bytes: usize,
    /// [spikes, active entries, largest segment] written by the forward kernel.
    stats: Arc<DeviceBuf<u32>>,
    kept: TapeKept,
}

/// What the sampled dots read on the side stream: the dense later adjoint G (also dW's input) and
/// the order of the entries below, if any; kept until the streams join.
struct SampledBuffers {
    adjoint: DeviceBuf<f32>,
    /// Held, not read: freed after the join.
    _order: Option<DeviceBuf<u32>>,
}

/// A choice made automatically unless forced (`Some(on)`, for tests and A/B timings), readable
/// from any thread.
#[derive(Default)]
struct ForcedChoice(std::sync::atomic::AtomicU8);

impl ForcedChoice {
    fn set(&self, choice: Option<bool>) {
        let code = match choice {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        self.0.store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// The forced choice, or `None` where it is automatic.
    fn forced(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }
}

/// A count chosen automatically unless forced (`Some(n)`, n >= 1, for tests and A/B timings),
/// readable from any thread; `Some(0)` leaves it automatic.
#[derive(Default)]
struct ForcedCount(std::sync::atomic::AtomicUsize);

impl ForcedCount {
    fn set(&self, count: Option<usize>) {
        self.0
            .store(count.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// The forced count, or `None` where it is automatic.
    fn forced(&self) -> Option<usize> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// Samples a chunk takes when `batch` samples of `per_sample` bytes each are held `budget` bytes
/// at a time, in chunks of equal size (a short last one would leave most of the device idle): at
/// least 1, at most `batch` (and 1 for an empty batch).
fn equal_sample_chunks(batch: usize, per_sample: usize, budget: usize) -> usize {
    let most = (budget / per_sample.max(1)).clamp(1, batch.max(1));
    let chunks = batch.div_ceil(most);
    batch.div_ceil(chunks.max(1)).max(1)
}

/// The transpose of a rows x cols row-major matrix (`rows * cols` values), as cols x rows.
fn transposed_on_host(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for (r, row) in matrix.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Rows of W (of `neurons` floats) a block of the tiled dS_in kernel holds in `limit` bytes of
/// shared memory beside its warps' lists, at most 32; 0 when not even one fits.
fn tiled_rows_within(limit: usize, neurons: usize) -> usize {
    (limit.saturating_sub(TILED_LIST_BYTES) / (4 * neurons.max(1))).min(32)
}

/// The tiled dS_in kernel's tiles of `rows` units over the inputs, and the sample groups each
/// tile's blocks split the batch in: about four blocks per multiprocessor, each with samples for
/// all its warps.
fn tiled_tiles_and_groups(
    rows: usize,
    batch: usize,
    inputs: usize,
    multiprocessors: usize,
) -> (usize, usize) {
    let tiles = inputs.div_ceil(rows.max(1));
    let groups = (4 * multiprocessors)
        .div_ceil(tiles.max(1))
        .clamp(1, batch.div_ceil(TILED_INPUT_BLOCK / 32).max(1));
    (tiles, groups)
}

/// Parts a column of dW by columns runs in by the layer's width: enough for
/// `COLUMN_CHAINS_PER_SM` chains a multiprocessor, from `COLUMN_PARTS` to
/// `COLUMN_MAX_AUTO_PARTS`.
fn column_parts_by_width(multiprocessors: usize, neurons: usize) -> usize {
    (COLUMN_CHAINS_PER_SM * multiprocessors)
        .div_ceil(neurons.max(1))
        .clamp(COLUMN_PARTS, COLUMN_MAX_AUTO_PARTS)
}

/// What the automatic dS_in path choice weighs (`predicted_input_grad_path`): a layer's shape,
/// the active entries last seen in it and in the layer below, the spikes of the layer below (this
/// layer's input), the device's size, and what the backend's settings let run beside each path.
#[derive(Clone, Copy, Debug)]
struct PathInputs {
    batch: usize,
    steps: usize,
    neurons: usize,
    /// Neurons of the layer below: this layer's inputs.
    inputs: usize,
    above_active: u64,
    below_active: u64,
    below_spikes: u64,
    multiprocessors: usize,
    /// The sampled path brings dW from the dense later adjoint with it.
    dw_from_adjoint: bool,
    /// The tiled kernel's (tiles, sample groups), where the tiled path fits.
    tiled_grid: Option<(usize, usize)>,
    /// Parts a column of dW by columns runs in, where dW by columns can run beside the tiled
    /// kernel (else dW comes from the dense later adjoint there).
    column_parts: Option<usize>,
}

/// The dS_in path predicted fastest, by the time predicted for dS_in and dW together, from the
/// kernels' costs measured on the H200 (the constants' notes): the pairs kernel beside the trace
/// kernel for dW; the sampled dots after the dense later adjoint, with dW from that adjoint (where
/// `dw_from_adjoint`, else from the trace kernel); the GEMM over the adjoint (SGEMM ~35 TFLOP/s on
/// these shapes) and the trace kernel; the tiled kernel (`tiled_input_time`, where it fits) beside
/// dW by columns or beside the adjoint and dW from it. Every kernel costs at least a launch.
fn predicted_input_grad_path(p: &PathInputs) -> InputGradPath {
    let (b, t, n, ni) = (
        p.batch as f64,
        p.steps as f64,
        p.neurons as f64,
        p.inputs as f64,
    );
    let (above_active, below_active) = (p.above_active as f64, p.below_active as f64);
    let kernel = at_least_a_launch;
    let cells = b * t * n;
    let trace_dw = trace_dw_time(p);
    let adjoint = adjoint_time(p);
    let sampled_dots = kernel(below_active * (SAMPLED_ENTRY_TIME + n * SAMPLED_ENTRY_NEURON_TIME));
    let adjoint_dw = adjoint_dw_time(p);
    // The pairs kernel passes each sample's entries below 256 at a time (a thread each) past
    // all its active entries; it runs on the side stream beside the trace kernel.
    let b_div = b.max(1.0);
    let pairs_kernel = kernel(
        (below_active / b_div / 256.0).ceil() * (above_active / b_div) * PAIRS_ENTRY_PASS_TIME,
    );
    let pairs_total = pairs_kernel.max(trace_dw);
    let sampled_total = if p.dw_from_adjoint {
        adjoint + sampled_dots + adjoint_dw + kernel(0.0)
    } else {
        (adjoint + sampled_dots).max(trace_dw)
    };
    let gemm_total =
        adjoint + kernel(2.0 * cells * ni / 35e12) + kernel(8.0 * b * t * ni / 3e12) + trace_dw;
    // Tiled: the flat list, then the tiled dS_in on the side stream beside dW by columns, or
    // beside the later adjoint and dW from it. Where each fills the device they hardly
    // overlap (measured); where dW by columns is bound by its columns' chains it leaves
    // multiprocessors idle, and the tiled kernel runs in them (N = 300: both kernels alone 58
    // + 23 us, the whole backward 0.098 ms). Beside the adjoint and dW from it about half of the
    // shorter side overlaps (N-MNIST shape, seventeenth session: N = 1000, 816 us tiled beside
    // 144 + 323 us, 1.06 ms in all).
    let tiled_total = match p.tiled_grid {
        Some((tiles, groups)) => {
            let tiled_input = tiled_input_time(p, tiles, groups);
            match p.column_parts {
                Some(parts) if p.neurons >= TILED_MIN_NEURONS_BY_COLUMNS => {
                    let visits = above_active / COLUMN_ENTRIES_PER_VISIT;
                    let chain = visits / (n * parts as f64) * COLUMN_CHAIN_VISIT_TIME;
                    let device = visits * COLUMN_VISIT_TIME;
                    // Its lists and column order: about 0.08 ms at N = 4096 (dW is left stored
                    // transposed, for Adam: no transpose, v85).
                    let around = kernel(cells * 2e-12) + kernel(4.0 * ni * n / 3e12);
                    let dw_kernels = kernel(device.max(chain));
                    let kernels = if chain > device {
                        tiled_input.max(dw_kernels)
                    } else {
                        tiled_input + dw_kernels
                    };
                    2.0 * kernel(0.0) + around + kernels
                }
                Some(_) => f64::INFINITY,
                None => {
                    // The flat list's kernels: about 40 us on these shapes.
                    let dw_kernels = adjoint + adjoint_dw;
                    6.0 * kernel(0.0)
                        + tiled_input.max(dw_kernels)
                        + 0.5 * tiled_input.min(dw_kernels)
                }
            }
        }
        None => f64::INFINITY,
    };
    let best = pairs_total
        .min(sampled_total)
        .min(gemm_total)
        .min(tiled_total);
    if pairs_total <= best {
        InputGradPath::Pairs
    } else if sampled_total <= best {
        InputGradPath::Sampled
    } else if gemm_total <= best {
        InputGradPath::Gemm
    } else {
        InputGradPath::Tiled
    }
}

/// A kernel's predicted `seconds`, at least a launch's (H200: about 6 us).
fn at_least_a_launch(seconds: f64) -> f64 {
    seconds.max(6e-6)
}

/// Predicted time of the dense later adjoint from the tape (`later_adjoint_from_tape_f32`).
fn adjoint_time(p: &PathInputs) -> f64 {
    let cells = (p.batch * p.steps * p.neurons) as f64;
    at_least_a_launch(
        ADJOINT_FLOOR + p.steps as f64 * ADJOINT_STEP_TIME + cells * ADJOINT_ELEMENT_TIME,
    )
}

/// Predicted time of dW from the later adjoint (`weight_grad_from_adjoint_*_f32` and the sum of
/// its groups): a row of G per spike of the layer's input.
fn adjoint_dw_time(p: &PathInputs) -> f64 {
    let cells = (p.batch * p.steps * p.neurons) as f64;
    at_least_a_launch(
        p.below_spikes as f64 * p.neurons as f64 * ADJOINT_DW_SPIKE_NEURON_TIME
            + cells * ADJOINT_DW_ELEMENT_TIME,
    )
}

/// Predicted time of the trace kernel for dW (`s3gd_bwd_weights_bits_f32`): its busiest blocks'
/// share of the active entries, in waves of about seven blocks a multiprocessor.
fn trace_dw_time(p: &PathInputs) -> f64 {
    let layout = WeightGradLayout::new(p.batch, p.neurons, p.inputs);
    let blocks = layout.tiles * layout.groups * layout.chunks;
    let waves = blocks.div_ceil(7 * p.multiprocessors.max(1)).max(1) as f64;
    let per_block = p.above_active as f64 / (layout.tiles * layout.groups).max(1) as f64;
    TRACE_DW_FLOOR + per_block * TRACE_DW_BLOCK_ENTRY_TIME * waves
}

/// Predicted time of the tiled dS_in kernel from the active entries of this layer and of the
/// layer below: each warp reads its sample's flat list once per pass, a pass taking up to
/// `TILED_BATCH` entries below of its tile; below a few hundred blocks its warps' chains of samples
/// set the time. Fitted at N = 4096 (FMNIST shape); within 15% of the N-MNIST shape's at N =
/// 200-2000 (seventeenth session: 142-3250 us).
fn tiled_input_time(p: &PathInputs, tiles: usize, groups: usize) -> f64 {
    let sms = p.multiprocessors as f64;
    let (tiles, blocks) = (tiles as f64, (tiles * groups) as f64);
    // Passes over the list, weighted as measured with passes of eight (N = 4096: 0.7 passes'
    // worth of entries below per tile, 1.0 ms; N-MNIST's T = 300, 5.6, 20 ms): half of a pass
    // is reading the list.
    let passes =
        0.5 + 0.5 * p.below_active as f64 / (p.batch.max(1) as f64 * tiles) / TILED_BATCH as f64;
    TILED_INPUT_FLOOR
        + tiles * p.above_active as f64 * passes * TILED_INPUT_COST * (sms / blocks).max(1.0)
}

/// Pairs of (active entry below, later active entry above) per sample from the two layers' active
/// entries: about half of all pairs are in time order.
fn pairs_given(above: u64, below: u64, batch: usize) -> f64 {
    let batch = batch.max(1) as f64;
    (above as f64 / batch) * (below as f64 / batch) / 2.0
}

/// What the last tape statistics of a layer shape said: its active entries and its spikes.
#[derive(Clone, Copy, Debug)]
struct SeenActivity {
    active: u64,
    spikes: u64,
}

/// A layer's shape as (batch, steps, neurons, inputs): hidden layers of one width differ by their
/// inputs (784 -> N and N -> N), and their activity differs too.
type ActivityKey = (usize, usize, usize, usize);

impl CudaTape {
    fn activity_key(&self) -> ActivityKey {
        (self.batch, self.steps, self.neurons, self.inputs)
    }

    fn cells(&self) -> usize {
        self.batch * self.steps * self.neurons
    }

    /// Slots of a sparse tape (0 for a dense one).
    fn slots(&self) -> usize {
        match &self.kept {
            TapeKept::Sparse { idx, .. } => idx.len(),
            _ => 0,
        }
    }

    fn grad_len(&self) -> Result<usize> {
        match &self.kept {
            TapeKept::Nothing => Err(CoreError::Tape {
                op: "backward",
                why: "the forward pass kept nothing (Keep::Nothing)".into(),
            }),
            TapeKept::Dense { .. } => Ok(self.cells()),
            TapeKept::Sparse { idx, .. } => Ok(idx.len()),
        }
    }
}

/// How the sparse weight-gradient kernels split their work: 32-column segment tiles x sample
/// groups x chunks of inputs, one thread per input.
struct WeightGradLayout {
    tiles: usize,
    chunk_threads: usize,
    chunks: usize,
    groups: usize,
    per_group: usize,
}

impl WeightGradLayout {
    fn new(batch: usize, neurons: usize, inputs: usize) -> Self {
        let tiles = words(neurons);
        let chunk_threads = 128usize.min(words(inputs) * 32);
        let chunks = inputs.div_ceil(chunk_threads);
        // Enough blocks for about four per multiprocessor, with the per-group partial sums of dW
        // kept under 16 MiB.
        let by_memory = ((16usize << 20) / (4 * inputs * neurons).max(1)).max(1);
        let groups = 528usize
            .div_ceil(tiles * chunks)
            .clamp(1, batch)
            .min(by_memory);
        Self {
            tiles,
            chunk_threads,
            chunks,
            groups,
            per_group: batch.div_ceil(groups),
        }
    }

    /// Shared memory of the weight_grad kernel body, in words, before its trace source's part.
    fn shared_words(&self) -> usize {
        32 * self.chunk_threads + 4 * STAGE + self.per_group + 1
    }

    fn config(&self, shared_words: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.tiles as u32, self.groups as u32, self.chunks as u32),
            block_dim: (self.chunk_threads as u32, 1, 1),
            shared_mem_bytes: (shared_words * 4) as u32,
        }
    }
}

/// The buffers a LIF forward pass writes, before they become spikes, counts and a tape.
struct LayerWrite {
    batch: usize,
    steps: usize,
    keep: Keep,
    rows: DeviceBuf<u32>,
    cols: DeviceBuf<u32>,
    counts: DeviceBuf<f32>,
    stats: DeviceBuf<u32>,
    vmt: Option<DeviceBuf<f32>>,
    sparse: Option<SparseWrite>,
}

/// A sparse tape being written: capacity per segment, entries, values, counts per segment.
type SparseWrite = (usize, DeviceBuf<u16>, DeviceBuf<f32>, DeviceBuf<u32>);

/// What the readout keeps for backward.
pub struct CudaReadoutTape {
    batch: usize,
    steps: usize,
    spec: ReadoutSpec,
    argmax: DeviceBuf<u32>,
}

/// A recorded point in the stream, for timing.
pub struct CudaMark(CudaEvent);

/// A sparse tape's active entries as the kernels take them.
struct ActiveEntries<'a> {
    /// Per (sample, 32-neuron segment), `cap` slots of `t << 5 | lane`.
    idx: &'a DeviceBuf<u16>,
    /// V - theta of each slot.
    val: &'a DeviceBuf<f32>,
    /// Entries written per segment (may exceed `cap` when the tape overflowed).
    count: &'a DeviceBuf<u32>,
    /// Slots per segment, as a kernel argument.
    cap: i32,
}

impl<'a> ActiveEntries<'a> {
    /// The entries of `tape`, which callers have checked is sparse.
    fn of(tape: &'a CudaTape) -> Result<Self> {
        let TapeKept::Sparse {
            cap,
            idx,
            val,
            count,
            ..
        } = &tape.kept
        else {
            unreachable!("callers pass sparse tapes");
        };
        Ok(Self {
            idx,
            val,
            count,
            cap: int("tape capacity", *cap)?,
        })
    }

    /// Pushes entries, counts and capacity: what kernels take that visit a tape's slots without
    /// its values (the layer below's entries, where dS_in is needed).
    fn push_slots(&'a self, l: &mut LaunchArgs<'a>) {
        l.arg(&self.idx.slice).arg(&self.count.slice).arg(&self.cap);
    }

    /// Pushes entries, values, counts, capacity and the spike gradients at the entries: the
    /// leading arguments of every kernel that computes d = dS sigma'(V) from a tape.
    fn push_with_grad(&'a self, l: &mut LaunchArgs<'a>, grad_spikes: &'a CudaTensor) {
        l.arg(&self.idx.slice)
            .arg(&self.val.slice)
            .arg(&self.count.slice)
            .arg(&self.cap)
            .arg(&grad_spikes.buf.slice);
    }
}

/// A sparse tape's entries compacted per sample for the tiled dS_in kernel (`flat_entries`).
struct FlatEntries {
    /// Per entry, t << 21 | neuron.
    key: DeviceBuf<u32>,
    /// Per entry, beta^(t - t_ref) dS sigma'(V).
    dd: DeviceBuf<f32>,
    /// Where each (sample, segment)'s entries start; the last value is the total.
    starts: DeviceBuf<u32>,
    /// beta^(t - t_ref) for t < T, then beta^(t_ref - t - 1) (`flatten_by_sample`; t_ref = T / 2).
    step_factors: DeviceBuf<f64>,
    /// Zeroed before `flatten_by_sample`: where asked for (dW by columns), per neuron a bit mask
    /// of the samples where it is active (`live_words` words), then the count of blocks that have
    /// written their sample's work (one zeroing for both).
    zeroed: DeviceBuf<u32>,
    live_words: usize,
}

impl FlatEntries {
    /// Per neuron, the samples where it is active, where the list was built with them.
    fn live(&self) -> Option<cudarc::driver::CudaView<'_, u32>> {
        (self.live_words > 0).then(|| self.zeroed.slice.slice(..self.live_words))
    }
}

/// The buffers of dW by columns (`alloc_columns`): the layer's spiking inputs listed by bank and
/// step (`spiking_units_by_bank`), the columns by work, and dW stored transposed.
struct ColumnBuffers {
    inputs: usize,
    /// Columns of dW a block takes.
    warps: usize,
    /// Slots of a sample's row in either list (inputs rounded up to whole chunks).
    stride: usize,
    first_list: DeviceBuf<u32>,
    first_rows: DeviceBuf<u32>,
    second_list: DeviceBuf<u32>,
    second_rows: DeviceBuf<u32>,
    repeats: DeviceBuf<u32>,
    repeat_steps: DeviceBuf<u32>,
    repeat_count: DeviceBuf<u32>,
    order: DeviceBuf<u32>,
    dw_t: DeviceBuf<f32>,
}

impl ColumnBuffers {
    /// Pushes both lists of spiking inputs by bank, their rows by step and the repeat units: what
    /// `spiking_units_by_bank` fills and dW by columns reads, in that order.
    fn push_lists<'a>(&'a self, l: &mut LaunchArgs<'a>) {
        l.arg(&self.first_list.slice)
            .arg(&self.first_rows.slice)
            .arg(&self.second_list.slice)
            .arg(&self.second_rows.slice)
            .arg(&self.repeats.slice)
            .arg(&self.repeat_steps.slice)
            .arg(&self.repeat_count.slice);
    }
}

/// What the tiled dS_in kernel reads besides the flat list (`flatten_by_sample` builds both), held
/// by the caller until the streams join.
struct TiledScratch {
    /// The flat list as the tiled kernel reads it (by step where `set_tiled_by_step` is on).
    by_step: FlatByStep,
    /// Samples by decreasing work (where `set_tiled_sample_order` is on).
    sample_order: Option<SampleOrder>,
}

/// Samples in order of decreasing work for the tiled dS_in kernel (`flatten_by_sample` in
/// s3gd_bwd_tiled.cu: each block writes its sample's work, the last one ranks them).
struct SampleOrder {
    work: DeviceBuf<u64>,
    order: DeviceBuf<u32>,
}

/// The flat list as one 8-byte word per entry (its key in the low half, its dd's bits in the high
/// half), re-ordered by step within each sample where it has step starts (`flatten_by_sample` in
/// s3gd_bwd_tiled.cu).
struct FlatByStep {
    entries: DeviceBuf<u64>,
    /// Per sample, T + 1 positions: where its entries with tau >= t begin; `None` where the list
    /// keeps the flat list's order (`set_tiled_by_step(false)`).
    step_start: Option<DeviceBuf<u32>>,
}

/// Tape segments (32 neurons each) and inputs of a block of float_weight_grad_tiles_f32 (its
/// FLOAT_TILE_SEGMENTS and FLOAT_TILE_I).
const FLOAT_TILE_SEGMENTS: usize = 4;
const FLOAT_TILE_INPUTS: usize = 256;
/// Slots past the float tiles' last segment of entry runs: the kernel loads up to three entries
/// past a run's end (its FLOAT_RUNS_PAD).
const FLOAT_RUNS_PAD: usize = 4;

/// Entries of a warp's quarter a chunk float_weight_grad_tiles_f32 stages with the chunk's trace
/// rows (its FLOAT_TILE_STAGED_ENTRIES; further ones it reads from the list).
const FLOAT_TILE_STAGED_ENTRIES: usize = 64;

/// Dynamic shared memory of float_weight_grad_tiles_f32 for chunks of `steps`: two staged chunks
/// of trace rows (2 x steps x FLOAT_TILE_INPUTS floats), then two buffers of staged entries (8
/// bytes each) for each of the block's 16 warps, FLOAT_RUNS_PAD entries the last warp's loads
/// ahead may reach, and the two chunk buffers' barriers of the tensor copies (8 bytes each) and
/// counts of warps done with them (4 bytes each).
fn float_tile_shared_bytes(steps: usize) -> usize {
    2 * steps * FLOAT_TILE_INPUTS * 4
        + (2 * 16 * FLOAT_TILE_STAGED_ENTRIES + FLOAT_RUNS_PAD) * 8
        + 2 * 8
        + 2 * 4
}

/// A CUtensorMap as a kernel argument (the tiles' `TensorMap`, passed by value).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TensorMapArg([u64; 16]);

// SAFETY: plain bytes, laid out as the kernel's __grid_constant__ TensorMap parameter.
unsafe impl cudarc::driver::DeviceRepr for TensorMapArg {}

/// The input trace (`rows` x `ni` f32, row-major, at `trace`) as a tensor map for the float
/// tiles' copies of `steps` rows x FLOAT_TILE_INPUTS inputs, on devices of compute capability 9.0
/// or later with rows of a multiple of 16 bytes; `None` elsewhere (the tiles then copy by
/// cp.async).
fn float_tile_trace_map(
    arch: &str,
    trace: cudarc::driver::sys::CUdeviceptr,
    rows: usize,
    ni: usize,
    steps: usize,
) -> std::result::Result<Option<TensorMapArg>, CudaError> {
    use cudarc::driver::sys::{
        CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
        CUtensorMapL2promotion, CUtensorMapSwizzle,
    };
    let capability: u32 = arch.trim_start_matches("compute_").parse().unwrap_or(0);
    if capability < 90 || !ni.is_multiple_of(4) || !trace.is_multiple_of(16) {
        return Ok(None);
    }
    let global_dims = [ni as u64, rows as u64];
    let row_stride = [(ni * 4) as u64];
    let box_dims = [FLOAT_TILE_INPUTS as u32, steps as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<cudarc::driver::sys::CUtensorMap>::zeroed();
    // SAFETY: the pointers are to arrays of the rank's lengths (2, and 1 stride); the map is
    // written by the call before it is read.
    unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            2,
            trace as *mut std::ffi::c_void,
            global_dims.as_ptr(),
            row_stride.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(CudaError::driver("cuTensorMapEncodeTiled"))?;
    }
    // SAFETY: written by the successful call above.
    let map = unsafe { map.assume_init() };
    Ok(Some(TensorMapArg(map.opaque)))
}

/// The most steps of trace rows the float tiles stage at a time, and the fewest: more steps a
/// chunk mean fewer chunks, so fewer block barriers and less bookkeeping per entry (v54: harness
/// N = 4096 8.13-8.18 -> 7.94-8.00 ms with 96 against 64).
const FLOAT_TILE_MAX_STEPS: usize = 112;
const FLOAT_TILE_MIN_STEPS: usize = 64;

/// Steps of trace rows the float tiles stage at a time for `steps` steps a sample: chunks of equal
/// length (a short last chunk would cost a whole barrier round), each at most as many steps as
/// shared memory (`limit` bytes) and FLOAT_TILE_MAX_STEPS allow; `None` where not even
/// FLOAT_TILE_MIN_STEPS fit.
fn float_tile_steps(steps: usize, limit: usize) -> Option<usize> {
    let per_step = float_tile_shared_bytes(1) - float_tile_shared_bytes(0);
    let most =
        (limit.saturating_sub(float_tile_shared_bytes(0)) / per_step).min(FLOAT_TILE_MAX_STEPS);
    if most < FLOAT_TILE_MIN_STEPS {
        return None;
    }
    let chunks = steps.div_ceil(most).max(1);
    Some(steps.div_ceil(chunks).max(1))
}

/// The float-input layer's sparse dW path predicted fastest for `entries` active entries over
/// `batch` samples of `rows` = B x T rows, N neurons and NI inputs. Costs in ps, measured on the
/// H200 (2026-11-29, `s3gd-bench harness --band 0.01 .. 0.2 [--tf32] --float-weight-grad ...`,
/// N = 4096 and 16384, 0.27-5.5% active): the per-entry kernel 1.64 per entry and input plus 1.3
/// per element of dW and sample (its blocks walk every sample); the tiles (refitted to v112's on
/// 2026-11-30) 0.42 per trace element and block of 128 neurons (every chunk of trace rows is
/// staged) plus 0.13 per entry and input (0.85 and 0.24 before v109, 0.75 and 0.16 before v111);
/// the GEMM over the scattered d at 50 TFLOP/s in fp32, 360 with TF32 (the backward of its path,
/// scatter included) and 110 with 3xTF32. They rank the paths as measured at every activity and
/// width measured.
fn float_weight_grad_choice(
    entries: f64,
    batch: usize,
    rows: usize,
    n: usize,
    ni: usize,
    precision: GemmPrecision,
    tiles_fit: bool,
) -> FloatWeightGradPath {
    let (batch, rows, n, ni) = (batch as f64, rows as f64, n as f64, ni as f64);
    let per_entry = 1.64 * entries * ni + 1.3 * batch * n * ni;
    let tiles = 0.42 * rows * ni * (n / 128.0).ceil() + 0.13 * entries * ni;
    let gemm_tflops = match precision {
        GemmPrecision::Fp32 => 50.0,
        GemmPrecision::Tf32 => 360.0,
        GemmPrecision::Tf32x3 => 110.0,
        GemmPrecision::Int8Split => 120.0,
        GemmPrecision::Fp16Scaled => 500.0,
        GemmPrecision::Fp64Widened => 60.0,
    };
    let gemm = 2.0 * rows * n * ni / gemm_tflops;
    if tiles_fit && tiles < per_entry && tiles < gemm {
        FloatWeightGradPath::Tiles
    } else if gemm < per_entry {
        FloatWeightGradPath::Gemm
    } else {
        FloatWeightGradPath::PerEntry
    }
}

/// The grid of the split GEMMs' passes over an m x `columns` output: x-blocks of BLOCK threads
/// span m, and at most 1024 y-blocks stride over the columns (a y-block per column, up to 65,535,
/// measured 1.5x slower: v69).
fn output_columns_grid(m: usize, columns: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            m.div_ceil(BLOCK as usize) as u32,
            columns.clamp(1, 1024) as u32,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The tensor-core inputs of a split GEMM's cuBLAS products: int8 slices with exact int32 sums
/// (`GemmPrecision::Int8Split`) or scaled fp16 numbers with f32 sums (`GemmPrecision::Fp16Scaled`).
#[derive(Clone, Copy)]
enum SplitInputs {
    Int8,
    Fp16,
}

/// Most bytes of int32 slice products an int8-split GEMM holds at once (it runs in chunks of
/// columns beyond this).
const INT8_SPLIT_GROUP_BYTES: usize = 256 << 20;

/// Bytes of the later adjoint G that one launch of weight_grad_from_adjoint_bits_f32 reads beside
/// the sampled dots.
const WEIGHT_GRAD_G_PER_LAUNCH: usize = 96 << 20;

/// The same beside the tiled dS_in kernel, at least (as many as dW's parts where those are more).
const WEIGHT_GRAD_G_BESIDE_TILES: usize = 24 << 20;

/// Columns of dW each lane holds in weight_grad_from_adjoint_bits_f32 (its ADJ_COLS_PER_LANE).
const WEIGHT_GRAD_COLS_PER_LANE: usize = 8;

/// Warps dW from the later adjoint aims for by splitting the samples into groups: each warp walks
/// its unit's spikes one dependent load after another, so a layer of few units x column tiles
/// (N = 200: 200 warps) left the H200 mostly idle. About two warps per scheduler slot.
const WEIGHT_GRAD_TARGET_WARPS: usize = 16384;

/// Most bytes the groups' parts of dW from the later adjoint take.
const WEIGHT_GRAD_PARTIAL_BYTES: usize = 64 << 20;

/// Sample groups for dW from the later adjoint with `warps` warps a group and `weights` weights:
/// enough for `WEIGHT_GRAD_TARGET_WARPS`, their parts within `WEIGHT_GRAD_PARTIAL_BYTES`.
fn adjoint_weight_grad_groups(warps: usize, weights: usize) -> usize {
    let by_memory = WEIGHT_GRAD_PARTIAL_BYTES / (4 * weights).max(1);
    WEIGHT_GRAD_TARGET_WARPS
        .div_ceil(warps.max(1))
        .min(by_memory)
        .max(1)
}

/// Warps (columns of dW) of a block of weight_grad_by_columns_bits_f32 where shared memory allows.
const COLUMN_WARPS: usize = 1;

/// Units of a sample's list that a warp of weight_grad_by_columns_bits_f32 loads at once (its
/// COLUMN_CHUNK_UNITS); lists are padded to whole chunks.
const COLUMN_CHUNK_UNITS: usize = 768;

/// The most steps dW by columns takes (its lists pack a step in 8 bits, one value of which marks
/// the trash slots: COLUMN_MAX_STEPS in s3gd_bwd_columns.cu).
const COLUMN_MAX_STEPS: usize = 254;
/// Warps of a block of `spiking_units_by_bank` (`COLUMN_BUILD_WARPS`).
const COLUMN_BUILD_WARPS: usize = 32;
/// Parts a column of dW by columns is split into by samples (`set_column_parts`): a column's
/// live samples in two shorter chains. H200, FMNIST shape, layer-2 sparse backward with 1 / 2
/// parts (v79): N = 1000 0.297 / 0.210 ms, 2000 0.519 / 0.456, 3072 0.749 / 0.763, 4096 1.25 /
/// 1.20 over the bench's default 30 steps (1.033 / 1.047 over 20, at lower activity).
const COLUMN_PARTS: usize = 2;
/// Chains (columns x parts) of dW by columns wanted per multiprocessor: narrower layers split
/// their columns into more parts, up to COLUMN_MAX_AUTO_PARTS, so that the chains fill the
/// device. H200 (132 SMs), FMNIST shape, layer-2 sparse backward with 2 / 3 / 4 parts (v88, v87
/// kernels): N = 800 0.193 / 0.166 / 0.154 ms, 1000 0.210 / 0.187 / 0.180, 2000 0.438 / 0.469 /
/// 0.476, 3072 0.707 / 0.767 / 0.775; N = 4096 with 1 / 2 / 3 parts 1.08 / 1.05 / 1.15-1.17.
const COLUMN_CHAINS_PER_SM: usize = 24;
const COLUMN_MAX_AUTO_PARTS: usize = 4;
/// Most steps of the dW-by-columns kernel with half the suffix sums (`COLUMN_SHORT_STEPS`).
const COLUMN_SHORT_STEPS: usize = 128;
/// The most input units of dW by columns: its lists pack a unit in 16 bits, the banks' trash
/// slots (units NI_pad .. NI_pad + 31, NI_pad = NI rounded up to 32) included.
const COLUMN_MAX_INPUTS: usize = (1 << 16) - 64;
/// Shared-memory banks, one per lane: a sample's spikes are listed in rows of one unit per bank.
const COLUMN_BANKS: usize = 32;

/// Floats of a warp's copy of a column of dW in dW by columns: the inputs rounded up to a whole
/// row of banks, and a trash slot per bank.
fn column_len(inputs: usize) -> usize {
    inputs.next_multiple_of(COLUMN_BANKS) + COLUMN_BANKS
}

/// How the sparse method computes dS_in at the layer below's active entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGradPath {
    /// Every active entry below with every later active entry of this layer, one weight each.
    Pairs,
    /// One dot per active entry below, W[i, :] . G[b, t, :], over the dense later adjoint G.
    Sampled,
    /// The whole product G W^T by one GEMM, read back at the active entries below.
    Gemm,
    /// Pairs of entries per tile of input units, with the tile's rows of W in shared memory,
    /// beside dW from the dense later adjoint (layers over hidden spikes).
    Tiled,
}

/// How the sparse method computes dW of a float-input layer (Linear + LIF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatWeightGradPath {
    /// A row of the input trace per active entry, summed per (segment, input) block.
    PerEntry,
    /// d scattered into a dense array, then one cuBLAS GEMM with the trace.
    Gemm,
    /// Tiles of dW in registers, each walking the tape's entries past staged trace rows.
    Tiles,
}

/// s3gd's CUDA backend on one device.
pub struct CudaBackend {
    dev: Arc<Device>,
    /// Sparse-tape capacity per (batch, steps, neurons), adapted to the largest segment seen.
    caps: Mutex<HashMap<(usize, usize, usize), usize>>,
    /// Active entries last seen per layer shape (`CudaTape::activity_key`), to choose how dS_in
    /// and dW are computed.
    last_active: Mutex<HashMap<ActivityKey, SeenActivity>>,
    dummy_u16: DeviceBuf<u16>,
    dummy_u32: DeviceBuf<u32>,
    dummy_f32: DeviceBuf<f32>,
    /// Whether the sparse input-gradient kernel copies all weights to shared memory (when they
    /// fit); automatic: when the pairs outnumber the weights.
    weight_staging: ForcedChoice,
    /// Whether the tiled dS_in kernel sorts its entries below by row to share weight loads;
    /// automatic: from TILED_ROW_SHARING_MIN_NEURONS.
    tiled_row_sharing: ForcedChoice,
    /// How a float-input layer's sparse dW is computed: 0 by activity, 1 per entry, 2 GEMM, 3
    /// tiles.
    float_weight_grad_path: std::sync::atomic::AtomicU8,
    /// How the sparse dS_in is computed: 0 by predicted time, 1 pairs, 2 sampled dots, 3 GEMM.
    input_grad_path: std::sync::atomic::AtomicU8,
    /// Whether dW of a hidden-spike layer comes from the dense later adjoint when dS_in does.
    weight_grad_from_adjoint: std::sync::atomic::AtomicBool,
    /// The most input units a block of the tiled dS_in kernel takes (automatic: as many as shared
    /// memory holds).
    tiled_rows_limit: ForcedCount,
    /// Bytes of G a launch of dW from the later adjoint reads (automatic: by path, see
    /// set_weight_grad_chunk_bytes).
    weight_grad_chunk_bytes: ForcedCount,
    /// Most bytes of int32 products an int8-split GEMM holds (automatic: INT8_SPLIT_GROUP_BYTES).
    int8_split_group_bytes: ForcedCount,
    /// Threads of a block of dW from the later adjoint (automatic: by path, see set_weight_grad_block).
    weight_grad_block: ForcedCount,
    /// dW of a layer over the uploaded input from the later adjoint (see
    /// set_input_layer_weight_grad_from_adjoint).
    input_layer_dw_from_adjoint: ForcedChoice,
    /// The sampled dots' entries below in order of step (see set_sampled_input_grad_by_step).
    sampled_by_step: ForcedChoice,
    /// Sample groups of dW from the later adjoint (automatic: by shape, see set_weight_grad_groups).
    weight_grad_groups: ForcedCount,
    /// Whether dW beside the tiled dS_in kernel comes by columns (where it fits) instead of from
    /// the dense later adjoint.
    weight_grad_by_columns: std::sync::atomic::AtomicBool,
    /// Warps of a block of dW by columns (automatic: COLUMN_WARPS, fewer where shared memory is short).
    column_warps: ForcedCount,
    /// Whether the tiled dS_in kernel and dW run on two streams (else the tiled kernel first, on
    /// the main stream).
    tiled_beside: std::sync::atomic::AtomicBool,
    /// Whether the tiled dS_in kernel reads the flat list by step (else in tape order).
    tiled_by_step: std::sync::atomic::AtomicBool,
    /// Groups of 32 entries each block of the list by step is dealt into by bank (1: none;
    /// automatic: TILED_DEAL_GROUPS).
    tiled_deal_groups: ForcedCount,
    /// Warps of a block of `flatten_by_sample` (automatic: FLATTEN_WARPS, see set_flatten_warps).
    flatten_warps: ForcedCount,
    /// Whether the tiled dS_in kernel's warps take samples heaviest first (else by index).
    tiled_sample_order: std::sync::atomic::AtomicBool,
    /// Sample groups of the tiled dS_in kernel's grid (automatic: by the device's size).
    tiled_groups: ForcedCount,
    /// Parts a column of dW by columns is split into by samples (automatic: by the layer's width, see set_column_parts).
    column_parts: ForcedCount,
    /// Samples a call of the float-input layer's currents GEMM takes (automatic: by shape, see
    /// set_currents_chunk_samples).
    currents_chunk_samples: ForcedCount,
    /// Whether each chunk of the currents is scanned beside the next GEMM call (automatic: by
    /// shape, see set_currents_scan_beside).
    currents_scan_beside: ForcedChoice,
    /// Spikes whose weight rows a thread of the spike-input currents kernel loads at once
    /// (automatic: by width, see CURRENT_LOADS_AHEAD_MIN_NEURONS and set_current_loads_ahead).
    current_loads_ahead: ForcedCount,
    /// Bytes of f64 currents the spike-input forward holds at once (automatic:
    /// CURRENT_CHUNK_BYTES; see set_current_chunk_bytes).
    current_chunk_bytes: ForcedCount,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` and compiles (or loads from the cache) the kernels.
    pub fn new(ordinal: usize) -> std::result::Result<Self, CudaError> {
        let dev = Arc::new(Device::open(ordinal)?);
        Ok(Self {
            dummy_u16: dev.zeros(1, "placeholder")?,
            dummy_u32: dev.zeros(1, "placeholder")?,
            dummy_f32: dev.zeros(1, "placeholder")?,
            dev,
            caps: Mutex::new(HashMap::new()),
            last_active: Mutex::new(HashMap::new()),
            weight_staging: ForcedChoice::default(),
            tiled_row_sharing: ForcedChoice::default(),
            float_weight_grad_path: std::sync::atomic::AtomicU8::new(0),
            input_grad_path: std::sync::atomic::AtomicU8::new(0),
            weight_grad_from_adjoint: std::sync::atomic::AtomicBool::new(true),
            tiled_rows_limit: ForcedCount::default(),
            weight_grad_chunk_bytes: ForcedCount::default(),
            int8_split_group_bytes: ForcedCount::default(),
            weight_grad_block: ForcedCount::default(),
            weight_grad_groups: ForcedCount::default(),
            input_layer_dw_from_adjoint: ForcedChoice::default(),
            sampled_by_step: ForcedChoice::default(),
            weight_grad_by_columns: std::sync::atomic::AtomicBool::new(true),
            column_warps: ForcedCount::default(),
            tiled_beside: std::sync::atomic::AtomicBool::new(true),
            tiled_by_step: std::sync::atomic::AtomicBool::new(true),
            tiled_deal_groups: ForcedCount::default(),
            flatten_warps: ForcedCount::default(),
            tiled_sample_order: std::sync::atomic::AtomicBool::new(true),
            tiled_groups: ForcedCount::default(),
            column_parts: ForcedCount::default(),
            currents_chunk_samples: ForcedCount::default(),
            currents_scan_beside: ForcedChoice::default(),
            current_loads_ahead: ForcedCount::default(),
            current_chunk_bytes: ForcedCount::default(),
        })
    }

    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Fills fresh buffers with 0xFF bytes (NaN) instead of leaving them uninitialised (tests).
    pub fn set_poison(&self, on: bool) {
        self.dev
            .poison
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tiled dS_in kernel sorts a warp's entries below by row so that a row's later
    /// steps share its weight loads: `None` (the default) from `TILED_ROW_SHARING_MIN_NEURONS`
    /// neurons on; `Some(on)` forces it (tests check both; A/B timings). No sum changes bits.
    pub fn set_tiled_row_sharing(&self, choice: Option<bool>) {
        self.tiled_row_sharing.set(choice);
    }

    /// Whether the sparse input-gradient kernel keeps all weights in shared memory when they fit:
    /// `None` (the default) when a sample's entry pairs, as last seen, outnumber the weights each
    /// block would copy; `Some(on)` forces it (tests check both paths; A/B timings).
    pub fn set_weight_staging(&self, choice: Option<bool>) {
        self.weight_staging.set(choice);
    }

    /// How a float-input layer's sparse dW is computed: `None` (the default) by the path predicted
    /// fastest from the entries last seen for the shape (`float_weight_grad_choice`: per entry
    /// below ~0.3% active, tiles above with fp32 GEMMs, the GEMM over the scattered entries on
    /// tensor cores); `Some(path)` forces one (tests check every path).
    pub fn set_float_weight_grad_path(&self, choice: Option<FloatWeightGradPath>) {
        let code = match choice {
            None => 0,
            Some(FloatWeightGradPath::PerEntry) => 1,
            Some(FloatWeightGradPath::Gemm) => 2,
            Some(FloatWeightGradPath::Tiles) => 3,
        };
        self.float_weight_grad_path
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lets dW of a hidden-spike layer come from the dense later adjoint whenever dS_in is computed
    /// from it (on by default; tests and A/B runs turn it off to use the per-entry trace kernel).
    pub fn set_weight_grad_from_adjoint(&self, on: bool) {
        self.weight_grad_from_adjoint
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn weight_grad_from_adjoint_allowed(&self) -> bool {
        self.weight_grad_from_adjoint
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the sparse dS_in is computed: `None` (the default) picks the path predicted fastest
    /// from the active counts last seen; `Some(path)` forces one (tests check every path).
    pub fn set_input_grad_path(&self, choice: Option<InputGradPath>) {
        let code = match choice {
            None => 0,
            Some(InputGradPath::Pairs) => 1,
            Some(InputGradPath::Sampled) => 2,
            Some(InputGradPath::Gemm) => 3,
            Some(InputGradPath::Tiled) => 4,
        };
        self.input_grad_path
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// The most input units a block of the tiled dS_in kernel takes: `None` (the default) as many as
    /// shared memory holds, up to 32; tests use small tiles that straddle 32-unit segments.
    pub fn set_tiled_rows_limit(&self, limit: Option<usize>) {
        self.tiled_rows_limit.set(limit);
    }

    /// Bytes of the later adjoint G each launch of dW from it reads: `None` (the default) 96 MiB
    /// beside the sampled dots, and beside the tiled dS_in kernel the larger of 24 MiB and the
    /// bytes of dW's group parts; tests use a sample per launch to check that the launches add up
    /// to the same bits.
    pub fn set_weight_grad_chunk_bytes(&self, bytes: Option<usize>) {
        self.weight_grad_chunk_bytes.set(bytes);
    }

    /// Most bytes of int32 slice products an int8-split GEMM holds at once: `None` (the default)
    /// 256 MiB; tests use a few columns' worth to check that the chunks add up to the same bits.
    pub fn set_int8_split_group_bytes(&self, bytes: Option<usize>) {
        self.int8_split_group_bytes.set(bytes);
    }

    /// Threads of a block of dW from the later adjoint: `None` (the default) 128 beside the tiled
    /// dS_in kernel and BLOCK beside the sampled dots; `Some(n)`, a multiple of 32 up to 1024, for
    /// A/B runs.
    pub fn set_weight_grad_block(&self, threads: Option<usize>) {
        self.weight_grad_block
            .set(threads.map(|n| (n / 32 * 32).clamp(32, 1024)));
    }

    /// How dW of a layer over the uploaded input (the first layer, which needs no dS_in) is
    /// computed: `None` (the default) by predicted time, `Some(true)` from the dense later adjoint
    /// (a row of it per input event), `Some(false)` by the trace kernel (tests check both).
    pub fn set_input_layer_weight_grad_from_adjoint(&self, choice: Option<bool>) {
        self.input_layer_dw_from_adjoint.set(choice);
    }

    /// Whether the sampled dots (dS_in over the dense later adjoint) take the entries below in
    /// order of step within each sample, so that the entries of a (sample, step) share its row of
    /// G: `None` (the default) where W is larger than the L2 cache, `Some(on)` forced (tests check
    /// both; the outputs are the same bits either way). Where W fits in L2 the tape's order, which
    /// keeps a 32-unit segment's rows of W together, was faster (v99 in docs/gpu.md).
    pub fn set_sampled_input_grad_by_step(&self, choice: Option<bool>) {
        self.sampled_by_step.set(choice);
    }

    /// Sample groups dW from the later adjoint splits each launch's samples into, each summed
    /// into its own part of dW, the parts added in group order afterwards: `None` (the default)
    /// by shape (`adjoint_weight_grad_groups`), `Some(g)` at most g (tests force one group to check
    /// that launches over chunks of samples add up to the same bits).
    pub fn set_weight_grad_groups(&self, groups: Option<usize>) {
        self.weight_grad_groups.set(groups);
    }

    /// Lets dW beside the tiled dS_in kernel come by columns of dW in shared memory (on by
    /// default, where the shapes fit: `column_warps_for`); off, it comes from the dense later
    /// adjoint (tests compare the two; A/B runs).
    pub fn set_weight_grad_by_columns(&self, on: bool) {
        self.weight_grad_by_columns
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tiled dS_in kernel and dW run on two streams (the default: beside dW by columns
    /// the tiled kernel on the main stream and dW on the side one, beside dW from the dense
    /// adjoint the other way round) or one after the other on the main stream, the tiled kernel
    /// first (A/B runs; profiles then time each kernel alone).
    pub fn set_tiled_beside(&self, on: bool) {
        self.tiled_beside
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tiled dS_in kernel reads the flat list re-ordered by step, each pass starting
    /// after its earliest entry below (the default), or in tape order, each pass walking the
    /// sample's whole list (A/B runs; tests check both).
    pub fn set_tiled_by_step(&self, on: bool) {
        self.tiled_by_step
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Groups of 32 entries each block of the list by step is dealt into by shared-memory bank, so
    /// that the tiled kernel's gathers of W conflict less: `None` (the default) TILED_DEAL_GROUPS,
    /// `Some(0)` or `Some(1)` none (the list stays by step within each sample), `Some(g)` g,
    /// at most TILED_DEAL_MAX_GROUPS (A/B runs; tests check several). The dealing changes the
    /// order each lane adds its pairs in, so the bits of dS_in, but not from run to run.
    pub fn set_tiled_deal_groups(&self, groups: Option<usize>) {
        // 0 and 1 alike deal nothing.
        self.tiled_deal_groups
            .set(groups.map(|g| g.clamp(1, TILED_DEAL_MAX_GROUPS)));
    }

    fn tiled_deal_groups(&self) -> usize {
        self.tiled_deal_groups.forced().unwrap_or(TILED_DEAL_GROUPS)
    }

    /// Warps of a block of the kernel that builds the flat list a sample at a time
    /// (`flatten_by_sample`): `None` (the default) FLATTEN_WARPS, else 1 to 32 (A/B runs; tests
    /// check several). The warps change no bit of the list or its order.
    pub fn set_flatten_warps(&self, warps: Option<usize>) {
        self.flatten_warps.set(warps.map(|w| w.clamp(1, 32)));
    }

    fn flatten_warps(&self) -> usize {
        self.flatten_warps.forced().unwrap_or(FLATTEN_WARPS)
    }

    /// Samples of a float-input layer's batch each cuBLAS call of its currents GEMM takes: `None`
    /// (the default) by shape (see `currents_chunks`), else at least 1 (A/B runs; tests). Only
    /// TF32 and fp32 products are chunked.
    pub fn set_currents_chunk_samples(&self, samples: Option<usize>) {
        self.currents_chunk_samples.set(samples.map(|s| s.max(1)));
    }

    /// Whether each chunk of the currents is scanned on the side stream while the next one's GEMM
    /// runs (`Some(true)`), or all are scanned at once after the last GEMM (`Some(false)`);
    /// `None` (the default) by shape (see `currents_chunks`). Same bits either way.
    pub fn set_currents_scan_beside(&self, beside: Option<bool>) {
        self.currents_scan_beside.set(beside);
    }

    /// Spikes of a step whose weight rows a thread of the spike-input currents kernel loads at once
    /// before adding them in order: `None` (the default) by the layer's width (see
    /// CURRENT_LOADS_AHEAD_MIN_NEURONS), else 4 or 16 (A/B runs; tests check both). The sums and
    /// their order, hence the bits, are the same.
    pub fn set_current_loads_ahead(&self, ahead: Option<usize>) {
        self.current_loads_ahead
            .set(ahead.map(|a| if a <= 4 { 4 } else { 16 }));
    }

    /// Bytes of f64 currents the spike-input forward holds at once, a chunk of samples at a time:
    /// `None` (the default) CURRENT_CHUNK_BYTES, else at least one sample's (A/B runs). The chunks
    /// change no bits.
    pub fn set_current_chunk_bytes(&self, bytes: Option<usize>) {
        self.current_chunk_bytes.set(bytes.map(|b| b.max(1)));
    }

    /// The samples of each currents GEMM call, and whether each chunk is scanned beside the next
    /// call. cuBLAS picks its kernel by shape; with TF32 products, the harness's pass (B = 16,
    /// T = 500) took 24.3-24.8 ms at N = 16384 with the currents in one call and 24.1-24.2 ms in
    /// calls of 2,000 rows (the backward's dW GEMM, whose code is the same, also ran 0.3 ms
    /// faster after them), 23.9-24.0 ms with each chunk scanned beside the next call; at N = 4096
    /// 1.76 -> 1.64 ms, where a chunk's scan (4 x 4096 threads) is too narrow to run beside
    /// (twenty-first session, calls 3 and 4). fp32, the split precisions and layers narrower than
    /// CURRENTS_CHUNK_MIN_NEURONS take one call.
    fn currents_chunks(&self, batch: usize, steps: usize, neurons: usize) -> (usize, bool) {
        let precision = self.dev.gemm_precision();
        let chunked = precision == GemmPrecision::Tf32 && neurons >= CURRENTS_CHUNK_MIN_NEURONS;
        let chunk_samples = self.currents_chunk_samples.forced().unwrap_or(if chunked {
            (CURRENTS_CHUNK_ROWS / steps.max(1)).max(1)
        } else {
            batch
        });
        let plain = matches!(precision, GemmPrecision::Fp32 | GemmPrecision::Tf32);
        if !plain || chunk_samples >= batch {
            return (batch, false);
        }
        let beside = self
            .currents_scan_beside
            .forced()
            .unwrap_or(chunk_samples * neurons >= CURRENTS_SCAN_BESIDE_MIN_THREADS);
        (chunk_samples, beside)
    }

    /// Whether the tiled dS_in kernel's warps take the samples heaviest first (the default: the
    /// block's last warps then finish light samples) or by index (A/B runs; tests check both).
    /// Which warp takes a sample changes no bits.
    pub fn set_tiled_sample_order(&self, on: bool) {
        self.tiled_sample_order
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Uploads a rows x cols matrix (row-major `data`) stored as its transpose on the device, the
    /// layout in which dW by columns leaves a weight gradient: Adam and the downloads take it,
    /// every other op refuses it with a typed error. For tests of those consumers.
    pub fn upload_stored_transposed(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CudaTensor> {
        if rows * cols != data.len() || rows > 65535 * 32 {
            return Err(shape(
                "upload_stored_transposed",
                format!("{rows} x {cols} floats, at most {} rows", 65535 * 32),
                data.len(),
            ));
        }
        let stored = transposed_on_host(data, rows, cols);
        Ok(CudaTensor::stored_transposed(
            self.dev.upload(&stored, "tensor (stored transposed)")?,
            rows,
            cols,
        ))
    }

    /// Parts each column of dW by columns is split into, each an equal share of the column's live
    /// samples in order (v102; by the words of its sample mask before) and a warp of the column's
    /// block with its own copy of the column, the copies added in order at the end: `None` (the
    /// default) by the layer's width (COLUMN_CHAINS_PER_SM), `Some(n)` for A/B runs (at most one
    /// per word of 32 samples, and as shared memory and the kernel's registers allow). The parts
    /// change the bits of dW (its sums are grouped by part) but not from run to run.
    pub fn set_column_parts(&self, parts: Option<usize>) {
        self.column_parts.set(parts);
    }

    /// Sample groups (blocks per tile) of the tiled dS_in kernel's grid: `None` (the default)
    /// about four blocks per multiprocessor, `Some(n)` for A/B runs (at most one per sample).
    pub fn set_tiled_groups(&self, groups: Option<usize>) {
        self.tiled_groups.set(groups);
    }

    /// Warps (columns of dW) a block of dW by columns takes: `None` (the default) COLUMN_WARPS,
    /// fewer where shared memory is short; `Some(n)`, 1 to 32, for A/B runs.
    pub fn set_column_warps(&self, warps: Option<usize>) {
        self.column_warps.set(warps.map(|n| n.clamp(1, 32)));
    }

    /// Whether freed device memory stays in the allocator's pool for the next step (the default)
    /// or goes back to the driver at every synchronisation.
    pub fn set_pool_retention(&self, keep: bool) -> std::result::Result<(), CudaError> {
        self.dev.set_pool_retention(keep)
    }

    /// Median milliseconds of one cuBLAS GEMM, column-major `c (m x n) = op(a) * op(b)` as the
    /// backend calls it, on operands of uniform noise, over
    /// `reps` runs after one untimed run: the floor the dense and float-input paths sit on, per
    /// operand layout and math mode.
    #[allow(clippy::too_many_arguments)]
    pub fn time_gemm(
        &self,
        transa: bool,
        transb: bool,
        m: usize,
        n: usize,
        k: usize,
        reps: usize,
    ) -> Result<f64> {
        let (a, b, mut c) = self.gemm_probe_operands(m, n, k)?;
        let lda = if transa { k } else { m };
        let ldb = if transb { n } else { k };
        self.median_ms(reps, || {
            self.gemm_col_major(
                "GEMM probe",
                transa,
                transb,
                m,
                n,
                k,
                &a,
                lda,
                &b,
                ldb,
                &mut c,
                m,
            )
        })
    }

    /// The median ms of cuBLAS's DGEMM (f64 tensor cores on sm_80 and later) on the column-major
    /// product `c (m x n) = op(a) op(b)` over random operands: how an f32 GEMM would fare computed
    /// over operands widened to f64 (every f32 product exact, sums in f64), the conversions not
    /// counted. A probe only; no path of the backend runs it.
    pub fn time_dgemm(
        &self,
        transa: bool,
        transb: bool,
        m: usize,
        n: usize,
        k: usize,
        reps: usize,
    ) -> Result<f64> {
        let (a, b, _) = self.gemm_probe_operands(m, n, k)?;
        let a = self.widen_f64(&a, "dgemm probe a")?;
        let b = self.widen_f64(&b, "dgemm probe b")?;
        let mut c = self.dev.alloc::<f64>(m * n, "dgemm probe c")?;
        let cfg = Self::sgemm_config(
            (transa, transb),
            (m, n, k),
            (if transa { k } else { m }, if transb { n } else { k }, m),
        )?;
        self.median_ms(reps, || {
            // SAFETY: a, b and c hold m x k, k x n and m x n elements with the leading dimensions
            // of cfg.
            unsafe { self.dgemm("DGEMM probe", cfg, &a, &b, &mut c) }
        })
    }

    /// One GEMM as the backend runs it with the precision set: column-major
    /// `c (m x n) = op(a) op(b)` from host operands (`a` with leading dimension `lda`, `b` with
    /// `ldb`), for tests and accuracy probes.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_host(
        &self,
        transa: bool,
        transb: bool,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> Result<Vec<f32>> {
        let (a_rows, a_cols) = if transa { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if transb { (n, k) } else { (k, n) };
        for (what, len, rows, cols, ld) in [
            ("gemm_host a", a.len(), a_rows, a_cols, lda),
            ("gemm_host b", b.len(), b_rows, b_cols, ldb),
        ] {
            if ld < rows.max(1) || len < ld * cols {
                return Err(CoreError::Shape {
                    op: what,
                    expected: format!("{rows} x {cols} column-major, leading dimension >= {rows}"),
                    got: format!("{len} floats, leading dimension {ld}"),
                });
            }
        }
        let a = self.dev.upload(a, "gemm_host a")?;
        let b = self.dev.upload(b, "gemm_host b")?;
        let mut c = self.dev.alloc::<f32>(m * n, "gemm_host c")?;
        self.gemm_col_major(
            "gemm_host",
            transa,
            transb,
            m,
            n,
            k,
            &a,
            lda,
            &b,
            ldb,
            &mut c,
            m,
        )?;
        Ok(self.dev.download(&c, m * n)?)
    }

    /// A (m x k) and B (k x n) of uniform noise in [-0.5, 0.5) and C (m x n), for the GEMM probes.
    fn gemm_probe_operands(
        &self,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(DeviceBuf<f32>, DeviceBuf<f32>, DeviceBuf<f32>)> {
        let noise = |len: usize, seed: u32| -> Vec<f32> {
            let mut x = seed.wrapping_mul(2_654_435_761).max(1);
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 8) as f32 / (1 << 24) as f32 - 0.5
                })
                .collect()
        };
        Ok((
            self.dev.upload(&noise(m * k, 1), "gemm probe a")?,
            self.dev.upload(&noise(k * n, 2), "gemm probe b")?,
            self.dev.alloc::<f32>(m * n, "gemm probe c")?,
        ))
    }

    /// The median over `reps` runs of `run` (after one untimed run), in ms between events.
    fn median_ms(&self, reps: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps {
            let start = self.mark()?;
            run()?;
            let end = self.mark()?;
            let ms = self.elapsed_ms(&start, &end)?;
            if rep > 0 {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Times each algorithm cuBLASLt's heuristic offers (up to 16) for the column-major product
    /// C (m x n) = op(A) op(B) of the dense path, in TF32 when `set_gemm_precision` chose tensor
    /// cores and in fp32 otherwise: the median of `reps` runs of each, in the heuristic's order,
    /// with a 32 MiB workspace. A probe of how far cuBLAS's own choice is from the best it could
    /// run.
    pub fn time_gemm_algorithms(
        &self,
        transa: bool,
        transb: bool,
        m: usize,
        n: usize,
        k: usize,
        reps: usize,
    ) -> Result<Vec<f64>> {
        use cudarc::cublaslt::{result as lt, sys};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        // SAFETY: only tries to open the shared library.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoCublasLt.into());
        }
        let fail = |op: &'static str| move |status| CudaError::CublasLt { op, status };
        let dev = &self.dev;
        let (a, b, mut c) = self.gemm_probe_operands(m, n, k)?;
        let workspace_bytes = 32usize << 20;
        let mut workspace = self
            .dev
            .alloc::<u8>(workspace_bytes, "gemm probe workspace")?;
        let f32_type = sys::cudaDataType_t::CUDA_R_32F;
        let compute = if dev.tf32_math() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (a_rows, a_cols) = if transa { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if transb { (n, k) } else { (k, n) };
        let handle = lt::create_handle().map_err(fail("cublasLtCreate"))?;
        let layout = |rows: usize, cols: usize| {
            lt::create_matrix_layout(f32_type, rows as u64, cols as u64, rows as i64)
                .map_err(fail("cublasLtMatrixLayoutCreate"))
        };
        let (a_layout, b_layout, c_layout) = (
            layout(a_rows, a_cols)?,
            layout(b_rows, b_cols)?,
            layout(m, n)?,
        );
        let desc =
            lt::create_matmul_desc(compute, f32_type).map_err(fail("cublasLtMatmulDescCreate"))?;
        // cublasOperation_t as i32: 0 N, 1 T.
        let (op_a, op_b) = (i32::from(transa), i32::from(transb));
        let pref = lt::create_matmul_pref().map_err(fail("cublasLtMatmulPreferenceCreate"))?;
        let mut found =
            [std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit(); 16];
        let mut count: std::ffi::c_int = 0;
        // SAFETY: the attributes are written from values of the sizes given; the heuristic
        // writes at most 16 results into `found` and their number into `count`.
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as D;
            for (attribute, op) in [
                (D::CUBLASLT_MATMUL_DESC_TRANSA, &op_a),
                (D::CUBLASLT_MATMUL_DESC_TRANSB, &op_b),
            ] {
                lt::set_matmul_desc_attribute(
                    desc,
                    attribute,
                    op as *const i32 as *const _,
                    std::mem::size_of::<i32>(),
                )
                .map_err(fail("cublasLtMatmulDescSetAttribute"))?;
            }
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace_bytes) as *const _ as *const _,
                std::mem::size_of::<usize>(),
            )
            .map_err(fail("cublasLtMatmulPreferenceSetAttribute"))?;
            sys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc,
                a_layout,
                b_layout,
                c_layout,
                c_layout,
                pref,
                found.len() as std::ffi::c_int,
                found.as_mut_ptr().cast(),
                &mut count,
            )
            .result()
            .map_err(fail("cublasLtMatmulAlgoGetHeuristic"))?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let mut medians = Vec::new();
        for result in found.iter().take(count.max(0) as usize) {
            // SAFETY: the heuristic wrote the first `count` results.
            let result = unsafe { result.assume_init() };
            medians.push(self.median_ms(reps, || {
                let (pa, _ra) = a.slice.device_ptr(&dev.stream);
                let (pb, _rb) = b.slice.device_ptr(&dev.stream);
                let (pc, _rc) = c.slice.device_ptr_mut(&dev.stream);
                let (pw, _rw) = workspace.slice.device_ptr_mut(&dev.stream);
                // SAFETY: A, B and C hold the sizes their layouts describe, the workspace the
                // bytes the preference allowed; the algorithm comes from the heuristic for these
                // descriptors.
                unsafe {
                    lt::matmul(
                        handle,
                        desc,
                        (&alpha) as *const f32 as *const _,
                        (&beta) as *const f32 as *const _,
                        pa as *const _,
                        a_layout,
                        pb as *const _,
                        b_layout,
                        pc as *const _,
                        c_layout,
                        pc as *mut _,
                        c_layout,
                        &result.algo,
                        pw as *mut _,
                        workspace_bytes,
                        dev.stream.cu_stream() as *mut _,
                    )
                }
                .map_err(fail("cublasLtMatmul"))?;
                Ok(())
            })?);
        }
        self.synchronize()?;
        // SAFETY: nothing uses these descriptors or the handle after the stream has finished.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
            let _ = lt::destroy_matmul_desc(desc);
            for l in [a_layout, b_layout, c_layout] {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_handle(handle);
        }
        Ok(medians)
    }

    /// How the cuBLAS GEMMs (dense method, float-input layers) compute: fp32 (the default), TF32,
    /// or near-fp32 accuracy from three TF32 products (`GemmPrecision`).
    pub fn set_gemm_precision(
        &self,
        precision: GemmPrecision,
    ) -> std::result::Result<(), CudaError> {
        self.dev.set_gemm_precision(precision)
    }

    /// Peak bytes of live device buffers since the last `reset_peak_memory` (kernel module and
    /// cuBLAS workspace not included).
    pub fn peak_memory(&self) -> usize {
        self.dev.tracker.peak()
    }

    /// Bytes of live device buffers now.
    pub fn live_memory(&self) -> usize {
        self.dev.tracker.live()
    }

    pub fn reset_peak_memory(&self) {
        self.dev.tracker.reset_peak()
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn cap_for(&self, batch: usize, steps: usize, neurons: usize) -> usize {
        let caps = self.caps.lock().unwrap_or_else(|e| e.into_inner());
        // Start at 10% of a segment's cells; the first stats read adapts it.
        caps.get(&(batch, steps, neurons))
            .copied()
            .unwrap_or_else(|| (32 * steps / 10).clamp(64, 32 * steps))
    }

    fn update_cap(&self, tape: &CudaTape, largest: usize, cap: usize) {
        let want = ((largest * 5 / 4 + 16).div_ceil(16) * 16).min(32 * tape.steps);
        if largest > cap || cap > 2 * want {
            let mut caps = self.caps.lock().unwrap_or_else(|e| e.into_inner());
            caps.insert((tape.batch, tape.steps, tape.neurons), want.max(16));
        }
    }

    fn f32_buf(&self, len: usize, what: &'static str) -> Result<CudaTensor> {
        Ok(CudaTensor::row_major(
            self.dev.alloc::<f32>(len, what)?,
            len,
        ))
    }

    fn check_tensor(op: &'static str, what: &str, want: usize, t: &CudaTensor) -> Result<()> {
        Self::check_row_major(op, what, t)?;
        Self::check_tensor_len(op, what, want, t)
    }

    fn check_tensor_len(op: &'static str, what: &str, want: usize, t: &CudaTensor) -> Result<()> {
        if t.len == want {
            Ok(())
        } else {
            Err(shape(op, format!("{what} of {want}"), t.len))
        }
    }

    /// Only Adam and the downloads take a tensor stored transposed (a weight gradient of dW by
    /// columns).
    fn check_row_major(op: &'static str, what: &str, t: &CudaTensor) -> Result<()> {
        match t.stored_transposed {
            None => Ok(()),
            Some((rows, cols)) => Err(CoreError::Config {
                name: "tensor layout",
                value: format!("{op}: {what} of {rows} x {cols} stored transposed"),
                why: "this op takes row-major tensors; only Adam and the downloads take a weight \
                      gradient stored transposed",
            }),
        }
    }

    /// The output buffers of a LIF layer's forward pass, and the tape `keep` asks for.
    fn layer_outputs(
        &self,
        op: &'static str,
        b: usize,
        t: usize,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerWrite> {
        keep.validate()?;
        if b == 0 || t == 0 {
            return Err(CoreError::EmptyBatch { op });
        }
        if matches!(keep, Keep::Sparse { .. }) && t > MAX_TAPE_STEPS {
            return Err(CudaError::TooLarge {
                what: "time steps of a sparse tape",
                value: t,
                limit: MAX_TAPE_STEPS,
            }
            .into());
        }
        let n = layer.neurons;
        let (wn, wt) = (words(n), words(t));
        let dev = &self.dev;
        let sparse = match keep {
            Keep::Sparse { .. } => {
                let cap = self.cap_for(b, t, n);
                Some((
                    cap,
                    dev.alloc::<u16>(b * wn * cap, "active entries")?,
                    dev.alloc::<f32>(b * wn * cap, "active values")?,
                    dev.alloc::<u32>(b * wn, "active counts")?,
                ))
            }
            _ => None,
        };
        Ok(LayerWrite {
            batch: b,
            steps: t,
            keep,
            rows: dev.alloc::<u32>(b * t * wn, "spike rows")?,
            cols: dev.alloc::<u32>(b * n * wt, "spike words by neuron")?,
            counts: dev.alloc::<f32>(b * n, "spike counts")?,
            stats: dev.zeros::<u32>(3, "layer stats")?,
            vmt: match keep {
                Keep::Dense { .. } => Some(dev.alloc::<f32>(b * t * n, "membrane record")?),
                _ => None,
            },
            sparse,
        })
    }

    /// Runs the membrane recursion of samples [b0, b0 + samples) over their currents.
    #[allow(clippy::too_many_arguments)]
    fn launch_scan<T: cudarc::driver::DeviceRepr>(
        &self,
        side: bool,
        function: &cudarc::driver::CudaFunction,
        name: &'static str,
        current: &cudarc::driver::CudaView<'_, T>,
        b0: usize,
        samples: usize,
        layer: &LayerSpec,
        out: &mut LayerWrite,
    ) -> Result<()> {
        let n = layer.neurons;
        let (bi, ti, ni) = (
            int("batch", out.batch)?,
            int("steps", out.steps)?,
            int("neurons", n)?,
        );
        let (b0_i, samples_i) = (int("batch", b0)?, int("batch", samples)?);
        let (keep_code, band) = match out.keep {
            Keep::Nothing => (0i32, 0.0f64),
            Keep::Dense { .. } => (1, 0.0),
            Keep::Sparse { band } => (2, band),
        };
        let cap_i = int("tape capacity", out.sparse.as_ref().map_or(0, |s| s.0))?;
        let scan_threads = (32 * words(n)).min(128);
        let cfg = LaunchConfig {
            grid_dim: (
                int("scan grid", samples * n.div_ceil(scan_threads))? as u32,
                1,
                1,
            ),
            block_dim: (scan_threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.dev.stream_on(side).launch_builder(function);
        l.arg(current)
            .arg(&bi)
            .arg(&ti)
            .arg(&ni)
            .arg(&b0_i)
            .arg(&samples_i)
            .arg(&layer.beta)
            .arg(&keep_code)
            .arg(&band)
            .arg(&mut out.rows.slice)
            .arg(&mut out.cols.slice)
            .arg(&mut out.counts.slice)
            .arg(&mut out.stats.slice);
        // Placeholders stand in for the outputs `keep` does not ask for; the kernel never touches
        // them then.
        match out.vmt.as_mut() {
            Some(v) => l.arg(&mut v.slice),
            None => l.arg(&self.dummy_f32.slice),
        };
        match out.sparse.as_mut() {
            Some((_, idx, val, count)) => l
                .arg(&mut idx.slice)
                .arg(&mut val.slice)
                .arg(&mut count.slice),
            None => l
                .arg(&self.dummy_u16.slice)
                .arg(&self.dummy_f32.slice)
                .arg(&self.dummy_u32.slice),
        };
        l.arg(&cap_i);
        // SAFETY: thread per neuron of the chunk's samples; rows B*T*words(N), cols B*N*words(T),
        // counts B*N, stats 3, vmt B*T*N (dense), idx/val B*words(N)*cap and count B*words(N)
        // (sparse); current holds samples*T*N values from sample b0 on; a side-stream launch
        // comes between the caller's fork_side and join_side.
        unsafe { self.dev.launch_on(side, name, &mut l, cfg) }?;
        Ok(())
    }

    /// Wraps a finished forward pass's buffers into its spikes, counts and tape.
    fn finish_layer(
        &self,
        out: LayerWrite,
        layer: &LayerSpec,
        input_bytes: usize,
    ) -> Result<LayerOutput<Self>> {
        let (b, t, n) = (out.batch, out.steps, layer.neurons);
        let stats = Arc::new(out.stats);
        let kept = match (out.keep, out.vmt, out.sparse) {
            (Keep::Dense { band }, Some(vmt), _) => TapeKept::Dense { vmt, band },
            (Keep::Sparse { band }, _, Some((cap, idx, val, count))) => TapeKept::Sparse {
                band,
                cap,
                idx,
                val,
                count,
            },
            _ => TapeKept::Nothing,
        };
        Ok(LayerOutput {
            spikes: CudaSpikes {
                batch: b,
                steps: t,
                units: n,
                layout: SpikeLayout::Bits {
                    rows: out.rows,
                    cols: out.cols,
                    stats: stats.clone(),
                },
            },
            counts: CudaTensor::row_major(out.counts, b * n),
            tape: CudaTape {
                batch: b,
                steps: t,
                neurons: n,
                inputs: layer.inputs,
                beta: layer.beta,
                input_bytes,
                stats,
                kept,
            },
        })
    }

    /// The dense branch of `lif_backward_float`: dW = sum over t >= 1 of x[t-1]^T dV[t], the scan
    /// writing dV one step earlier (row T - 1 zero), then one GEMM over all rows.
    fn dense_backward_float(
        &self,
        tape: &CudaTape,
        (vmt, band): (&DeviceBuf<f32>, Option<f64>),
        input: &CudaTensor,
        grad_spikes: SpikeGradIn<'_>,
    ) -> Result<CudaTensor> {
        let (rows, n) = (tape.batch * tape.steps, tape.neurons);
        let ni = input.len / rows;
        let layout = self.float_weight_grad_layout();
        let shifted = self.dense_adjoint(tape, vmt, band, grad_spikes, true, layout)?;
        self.float_weight_grad("GEMM dW (float)", &shifted, layout, &input.buf, rows, n, ni)
    }

    /// The checks `lif_backward_float` makes of its operands other than dS: the inputs per row.
    fn check_float_backward_operands(
        tape: &CudaTape,
        input: &CudaTensor,
        weights: &CudaTensor,
    ) -> Result<usize> {
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let rows = b * t;
        Self::check_row_major("lif_backward_float", "input", input)?;
        if rows == 0 || !input.len.is_multiple_of(rows) {
            return Err(shape(
                "lif_backward_float",
                format!("input of {b} x {t} x inputs"),
                input.len,
            ));
        }
        let ni = input.len / rows;
        Self::check_tensor("lif_backward_float", "weights", ni * n, weights)?;
        Ok(ni)
    }

    /// The checks `lif_backward` makes of its operands other than dS.
    fn check_backward_operands(
        tape: &CudaTape,
        input: &CudaSpikes,
        weights: &CudaTensor,
        below: Option<(&CudaTape, &RegGrad<Self>)>,
    ) -> Result<()> {
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let ni = input.units;
        if input.batch != b || input.steps != t {
            return Err(shape("lif_backward", (b, t), (input.batch, input.steps)));
        }
        Self::check_tensor("lif_backward", "weights", ni * n, weights)?;
        if let Some((bt, reg)) = below {
            if bt.batch != b || bt.steps != t || bt.neurons != ni {
                return Err(shape(
                    "lif_backward",
                    (b, t, ni),
                    (bt.batch, bt.steps, bt.neurons),
                ));
            }
            Self::check_tensor("lif_backward", "per-sample regulariser", b, &reg.per_sample)?;
            Self::check_tensor(
                "lif_backward",
                "per-neuron regulariser",
                b * ni,
                &reg.per_neuron,
            )?;
            let same = matches!(
                (&tape.kept, &bt.kept),
                (TapeKept::Dense { .. }, TapeKept::Dense { .. })
                    | (TapeKept::Sparse { .. }, TapeKept::Sparse { .. })
            );
            if !same {
                return Err(CoreError::Tape {
                    op: "lif_backward",
                    why: "a layer and the layer below must keep the same kind of tape".into(),
                });
            }
        }
        Ok(())
    }

    /// The classes C of dS in the readout's form, once its operands are checked against a layer of
    /// `batch x steps x neurons`.
    fn check_readout_operands(
        op: &'static str,
        grad: &ReadoutSpikeGrad<'_, Self>,
        (b, t, n): (usize, usize, usize),
    ) -> Result<usize> {
        let g = grad.g;
        if !g.len.is_multiple_of(b * t) || g.len == 0 {
            return Err(shape(op, format!("g of {b} x {t} x classes"), g.len));
        }
        let c = g.len / (b * t);
        Self::check_tensor(op, "readout weights", n * c, grad.weights)?;
        Self::check_tensor(op, "per-sample regulariser", b, &grad.reg.per_sample)?;
        Self::check_tensor(op, "per-neuron regulariser", b * n, &grad.reg.per_neuron)?;
        Ok(c)
    }

    /// The dense branch of `lif_backward`: the adjoint scan (dS laid out or from the readout's
    /// operands), dW by one GEMM over the shifted input spikes and, when `below` is given, dS_in
    /// by one GEMM with the layer below's regularisers added.
    fn dense_backward(
        &self,
        tape: &CudaTape,
        input: &CudaSpikes,
        weights: &CudaTensor,
        (vmt, band): (&DeviceBuf<f32>, Option<f64>),
        grad_spikes: SpikeGradIn<'_>,
        below: Option<(&CudaTape, &RegGrad<Self>)>,
    ) -> Result<(CudaTensor, Option<CudaTensor>)> {
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let ni = input.units;
        let dev = &self.dev;
        let k = &dev.kernels;
        let (bi, ti, nii) = (int("batch", b)?, int("steps", t)?, int("inputs", ni)?);
        let dv = self.dense_adjoint(tape, vmt, band, grad_spikes, false, AdjointLayout::ByRow)?;
        let shifted = self.dense_input_shifted(input)?;
        let mut dw = dev.alloc::<f32>(ni * n, "weight grad")?;
        // dW (NI x N, row-major) = Sd^T dV: column-major C (N x NI) = dV (N x R) * Sd^T.
        self.gemm_col_major(
            "GEMM dW",
            false,
            true,
            n,
            ni,
            b * t,
            &dv,
            n,
            &shifted,
            ni,
            &mut dw,
            n,
        )?;
        drop(shifted);
        let ds_in = match below {
            None => None,
            Some((_, reg)) => {
                let y = self.adjoint_times_weights_t("GEMM dS_in", &dv, weights, b * t, n, ni)?;
                let mut out = self.f32_buf(b * t * ni, "input spike grad")?;
                let mut l = dev.stream.launch_builder(&k.unshift_add_reg);
                l.arg(&y.slice)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&nii)
                    .arg(&reg.per_sample.buf.slice)
                    .arg(&reg.per_neuron.buf.slice)
                    .arg(&mut out.buf.slice);
                // SAFETY: y and out hold B*T*NI floats, regs B and B*NI; a thread per i of each row.
                unsafe {
                    self.dev
                        .launch("unshift_add_reg_f32", &mut l, grid_rows(b * t, ni, BLOCK))
                }?;
                Some(out)
            }
        };
        Ok((CudaTensor::row_major(dw, ni * n), ds_in))
    }

    /// The dense adjoint dV of a layer (the scan over time, surrogate truncated to `band` if any),
    /// `batch x steps x neurons`, or `neurons x (batch x steps)` where `layout` says transposed.
    fn dense_adjoint(
        &self,
        tape: &CudaTape,
        vmt: &DeviceBuf<f32>,
        band: Option<f64>,
        grad_spikes: SpikeGradIn<'_>,
        shift_out: bool,
        layout: AdjointLayout,
    ) -> Result<DeviceBuf<f32>> {
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let (bi, ti, nn) = (int("batch", b)?, int("steps", t)?, int("neurons", n)?);
        let mut dv = self.dev.alloc::<f32>(b * t * n, "membrane adjoint")?;
        let beta = tape.beta as f32;
        let truncate = i32::from(band.is_some());
        let band_f = band.unwrap_or(0.0) as f32;
        let shift_i = i32::from(shift_out);
        let (function, name) = match layout {
            AdjointLayout::ByRow => (
                &self.dev.kernels.lif_bwd_dense_scan,
                "lif_bwd_dense_scan_f32",
            ),
            AdjointLayout::Transposed => (
                &self.dev.kernels.lif_bwd_dense_scan_transposed,
                "lif_bwd_dense_scan_transposed_f32",
            ),
        };
        let mut l = self.dev.stream.launch_builder(function);
        l.arg(&vmt.slice);
        let classes = match grad_spikes {
            SpikeGradIn::Laid(_) => 0,
            SpikeGradIn::Readout(_, c) => int("classes", c)?,
        };
        match grad_spikes {
            SpikeGradIn::Laid(ds) => l
                .arg(&ds.buf.slice)
                .arg(&self.dummy_f32.slice)
                .arg(&self.dummy_f32.slice)
                .arg(&classes)
                .arg(&self.dummy_f32.slice)
                .arg(&self.dummy_f32.slice),
            SpikeGradIn::Readout(grad, _) => l
                .arg(&self.dummy_f32.slice)
                .arg(&grad.g.buf.slice)
                .arg(&grad.weights.buf.slice)
                .arg(&classes)
                .arg(&grad.reg.per_sample.buf.slice)
                .arg(&grad.reg.per_neuron.buf.slice),
        };
        l.arg(&bi)
            .arg(&ti)
            .arg(&nn)
            .arg(&beta)
            .arg(&truncate)
            .arg(&band_f)
            .arg(&shift_i)
            .arg(&mut dv.slice);
        // SAFETY: vmt and dv hold B*T*N floats, and so does dS laid out; in the readout's form
        // (classes > 0, the only case the kernel reads them) g holds B*T*C floats, W3 N*C, the
        // regularisers B and B*N (check_readout_operands); one thread per (b, j), in blocks of
        // BLOCK threads (the transposed kernel's staging buffer is sized for 256).
        unsafe { self.dev.launch(name, &mut l, grid_for(b * n, BLOCK)) }?;
        Ok(dv)
    }

    /// d = dS sigma'(V) of a sparse tape's active entries, scattered into a zeroed dense
    /// `batch x steps x neurons` array, or `neurons x (batch x steps)` where `layout` says
    /// transposed.
    fn scatter_active(
        &self,
        tape: &CudaTape,
        grad_spikes: &CudaTensor,
        layout: AdjointLayout,
    ) -> Result<DeviceBuf<f32>> {
        let entries = ActiveEntries::of(tape)?;
        let dev = &self.dev;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let (bi, ti, nn) = (int("batch", b)?, int("steps", t)?, int("neurons", n)?);
        let mut dense = dev.zeros::<f32>(b * t * n, "active grad (dense)")?;
        let mut l = dev.stream.launch_builder(&dev.kernels.scatter_active_grad);
        entries.push_with_grad(&mut l, grad_spikes);
        let transposed = i32::from(layout == AdjointLayout::Transposed);
        l.arg(&bi)
            .arg(&ti)
            .arg(&nn)
            .arg(&transposed)
            .arg(&mut dense.slice);
        // SAFETY: one thread per tape slot; entries decode to t < T, j < N; dense B*T*N floats.
        unsafe {
            dev.launch(
                "scatter_active_grad_f32",
                &mut l,
                grid_for(entries.idx.len(), BLOCK),
            )
        }?;
        Ok(dense)
    }

    /// The dense later adjoint G[b, t] = sum over active tau > t of beta^(tau-t-1) d[b, tau] of a
    /// sparse tape (`batch x steps x neurons`), written whole from the tape's entries, on the side
    /// stream when `side` (after a fork; the caller joins).
    fn later_adjoint(
        &self,
        tape: &CudaTape,
        grad_spikes: &CudaTensor,
        side: bool,
    ) -> Result<DeviceBuf<f32>> {
        let entries = ActiveEntries::of(tape)?;
        let dev = &self.dev;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let (bi, ti, nn) = (int("batch", b)?, int("steps", t)?, int("neurons", n)?);
        let mut adjoint = dev.alloc::<f32>(b * t * n, "later adjoint (dense)")?;
        if side {
            dev.fork_side()?;
        }
        let stream = dev.stream_on(side);
        let beta = tape.beta as f32;
        let mut l = stream.launch_builder(&dev.kernels.later_adjoint_from_tape);
        entries.push_with_grad(&mut l, grad_spikes);
        l.arg(&bi)
            .arg(&ti)
            .arg(&nn)
            .arg(&beta)
            .arg(&mut adjoint.slice);
        let cfg = grid_for(b * words(n) * 32, BLOCK);
        // SAFETY: a warp per (sample, segment) (BLOCK is a multiple of 32); slots below the
        // segment's count and capacity; entries decode to t < T, j < N; adjoint B*T*N floats, every
        // one written; on the side stream only between fork and join.
        unsafe { dev.launch_on(side, "later_adjoint_from_tape_f32", &mut l, cfg) }?;
        Ok(adjoint)
    }

    /// dS_in of the sparse method by one dot per active entry below over the dense later
    /// adjoint G, on the side stream when `side` (it forks; the caller joins after). Returns G and
    /// the order of the entries below, which must outlive the join.
    fn input_grad_by_sampling(
        &self,
        tape: &CudaTape,
        grad_spikes: &CudaTensor,
        weights: &CudaTensor,
        below_tape: &CudaTape,
        reg: &RegGrad<Self>,
        out: &mut CudaTensor,
        side: bool,
    ) -> Result<SampledBuffers> {
        let below = ActiveEntries::of(below_tape)?;
        let dev = &self.dev;
        let (b, t, n, ni) = (tape.batch, tape.steps, tape.neurons, below_tape.neurons);
        let (bi, ti, nn, nii) = (
            int("batch", b)?,
            int("steps", t)?,
            int("neurons", n)?,
            int("inputs", ni)?,
        );
        let by_step = self
            .sampled_by_step
            .forced()
            .unwrap_or(ni * n * 4 > dev.l2_cache_bytes());
        // Allocated before the fork (in later_adjoint), so that the side stream may use it.
        let mut order = if by_step {
            let slots = below.idx.len();
            int("below tape slots", slots)?;
            Some(dev.alloc::<u32>(slots, "below slots by step")?)
        } else {
            None
        };
        let adjoint = self.later_adjoint(tape, grad_spikes, side)?;
        let stream = dev.stream_on(side);
        if let Some(order) = order.as_mut() {
            let shared_bytes = 4 * (t + 1);
            dev.allow_shared_memory(&dev.kernels.below_slots_by_step, shared_bytes)?;
            let mut l = stream.launch_builder(&dev.kernels.below_slots_by_step);
            below.push_slots(&mut l);
            l.arg(&bi).arg(&ti).arg(&nii).arg(&mut order.slice);
            let cfg = LaunchConfig {
                grid_dim: (b as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: shared_bytes as u32,
            };
            // SAFETY: a block per sample, each writing its region of B*words(NI)*cap slots of
            // order (the below tape's slots); entries decode to t < T; T + 1 words of shared
            // memory, allowed above; on the side stream only between fork and join.
            unsafe { dev.launch_on(side, "below_slots_by_step", &mut l, cfg) }?;
        }
        let no_order: u64 = 0;
        let mut l = stream.launch_builder(&dev.kernels.sampled_input_grad);
        l.arg(&adjoint.slice).arg(&weights.buf.slice);
        below.push_slots(&mut l);
        match &order {
            Some(order) => l.arg(&order.slice),
            None => l.arg(&no_order),
        };
        l.arg(&bi)
            .arg(&ti)
            .arg(&nii)
            .arg(&nn)
            .arg(&reg.per_sample.buf.slice)
            .arg(&reg.per_neuron.buf.slice)
            .arg(&mut out.buf.slice);
        // SAFETY: a warp per below tape slot (BLOCK is a multiple of 32), or per position of
        // order (a null pointer where there is none), which lists each slot once; entries decode
        // to t < T, i < NI; adjoint B*T*N and W NI*N floats; regulariser terms B and B*NI; out
        // one value per slot; on the side stream only between fork and join.
        let cfg = grid_for(below.idx.len() * 32, BLOCK);
        unsafe { dev.launch_on(side, "sampled_input_grad_f32", &mut l, cfg) }?;
        Ok(SampledBuffers {
            adjoint,
            _order: order,
        })
    }

    /// dW of a layer from the dense later adjoint G and its input spikes (hidden spikes as bits by
    /// unit, or the uploaded input's events by unit): one row of G added per input spike, in
    /// launches over chunks of samples. `beside_tiles`: it runs beside the tiled dS_in kernel,
    /// where a launch reads at least as many bytes of G as dW has.
    fn weight_grad_from_adjoint(
        &self,
        tape: &CudaTape,
        input: &SpikeLayout,
        inputs: usize,
        adjoint: &DeviceBuf<f32>,
        beside_tiles: bool,
    ) -> Result<CudaTensor> {
        let dev = &self.dev;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let (ti, nii, nn) = (int("steps", t)?, int("inputs", inputs)?, int("neurons", n)?);
        // Beside the tiled kernel, blocks of 4 warps: a block holds an SM's slot until its unit
        // with the most spikes is done (v52: N = 4096 backward 1.96 -> 1.92 ms against 8 warps).
        let threads = match self.weight_grad_block.forced() {
            None if beside_tiles => 128,
            None => BLOCK as usize,
            Some(n) => n,
        };
        let warps = threads / 32;
        let tiles = n.div_ceil(32 * WEIGHT_GRAD_COLS_PER_LANE);
        let groups = self
            .weight_grad_groups
            .forced()
            .unwrap_or_else(|| adjoint_weight_grad_groups(tiles * inputs, inputs * n))
            .clamp(1, b);
        // Launches over chunks of samples, each reading and writing all of the groups' parts of
        // dW. Beside the sampled dots 96 MiB of G a launch (v91: faster than 24 or 48 MiB on
        // every shape measured, N = 1000-4096); beside the tiled dS_in kernel 24 MiB, or as many
        // bytes as the parts (v40 in docs/gpu.md: N = 4096, 64 MiB of G a launch, as many bytes
        // as dW: 1.95 ms against 2.18 with 24 MiB).
        let parts_bytes = 4 * groups * inputs * n;
        let chunk_bytes = match self.weight_grad_chunk_bytes.forced() {
            None if beside_tiles => WEIGHT_GRAD_G_BESIDE_TILES.max(parts_bytes),
            None => WEIGHT_GRAD_G_PER_LAUNCH,
            Some(bytes) => bytes,
        };
        let per_launch = (chunk_bytes / (4 * t * n).max(1)).clamp(1, b);
        let groups = groups.min(per_launch);
        // With several groups each writes its own part, summed in group order afterwards.
        let mut out = dev.alloc::<f32>(
            groups * inputs * n,
            if groups > 1 {
                "weight grad partials"
            } else {
                "weight grad"
            },
        )?;
        let cfg = LaunchConfig {
            grid_dim: (tiles as u32, inputs.div_ceil(warps) as u32, groups as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let groups_i = int("groups", groups)?;
        let (function, name) = match input {
            SpikeLayout::Bits { .. } => (
                &dev.kernels.weight_grad_from_adjoint_bits,
                "weight_grad_from_adjoint_bits_f32",
            ),
            SpikeLayout::Events { .. } => (
                &dev.kernels.weight_grad_from_adjoint_events,
                "weight_grad_from_adjoint_events_f32",
            ),
        };
        for b0 in (0..b).step_by(per_launch) {
            let b1 = (b0 + per_launch).min(b);
            let (b0i, b1i, accumulate) = (int("batch", b0)?, int("batch", b1)?, i32::from(b0 > 0));
            let mut l = dev.stream.launch_builder(function);
            input.push_by_unit(&mut l);
            l.arg(&adjoint.slice)
                .arg(&ti)
                .arg(&nii)
                .arg(&nn)
                .arg(&b0i)
                .arg(&b1i)
                .arg(&groups_i)
                .arg(&accumulate)
                .arg(&mut out.slice);
            // SAFETY: the input matches its kernel (bits: B*NI*words(T) words; events: B*NI+1
            // offsets and a time < T per event), adjoint B*T*N floats, the output groups*NI*N
            // floats (dw when one group); a warp per (unit, column tile, group), both bounds
            // checked in the kernel.
            unsafe { dev.launch(name, &mut l, cfg) }?;
        }
        if groups > 1 {
            self.sum_weight_partials(&out, groups, inputs * n)
        } else {
            Ok(CudaTensor::row_major(out, inputs * n))
        }
    }

    /// Warps a block of dW by columns can hold in shared memory (each its G and its column).
    fn column_fitting(&self, steps: usize, inputs: usize) -> usize {
        let limit = self.dev.shared_memory_limit();
        limit.saturating_sub(4 * steps) / (4 * (steps + 1 + column_len(inputs)))
    }

    /// Parts (warps of a block) each column of dW by columns is split into: as asked
    /// (`set_column_parts`), else by width (COLUMN_CHAINS_PER_SM: two for layers of thousands of
    /// neurons, up to four for narrower ones); at most one per word of 32 samples, and as shared
    /// memory allows beside `warps` columns a block.
    fn column_parts_for(
        &self,
        batch: usize,
        steps: usize,
        inputs: usize,
        neurons: usize,
        warps: usize,
    ) -> usize {
        let wanted = self
            .column_parts
            .forced()
            .unwrap_or_else(|| column_parts_by_width(self.dev.multiprocessors(), neurons));
        wanted
            .clamp(1, words(batch))
            .min((self.column_fitting(steps, inputs) / warps.max(1)).max(1))
    }

    /// Warps a block of dW by columns takes for this layer over `inputs` units, or `None` where
    /// dW by columns is off or does not fit: steps and units past what its list packs, or not
    /// even one column of dW (and its G) in shared memory.
    fn column_warps_for(&self, tape: &CudaTape, inputs: usize) -> Option<usize> {
        if !self
            .weight_grad_by_columns
            .load(std::sync::atomic::Ordering::Relaxed)
            || tape.steps > COLUMN_MAX_STEPS
            || inputs > COLUMN_MAX_INPUTS
        {
            return None;
        }
        let fitting = self.column_fitting(tape.steps, inputs);
        let wanted = self.column_warps.forced().unwrap_or(COLUMN_WARPS);
        (fitting >= 1).then(|| wanted.min(fitting))
    }

    /// The buffers of dW by columns for a layer over `inputs` units (s3gd_bwd_columns.cu),
    /// allocated on the main stream, so that they are allocated before any fork that lets the
    /// side stream fill them.
    fn alloc_columns(&self, tape: &CudaTape, inputs: usize, warps: usize) -> Result<ColumnBuffers> {
        let dev = &self.dev;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let stride = inputs.next_multiple_of(COLUMN_CHUNK_UNITS);
        Ok(ColumnBuffers {
            inputs,
            warps,
            stride,
            first_list: dev.alloc::<u32>(b * stride, "first spikes by bank")?,
            first_rows: dev.alloc::<u32>(b * (t + 1), "rows of first spikes by step")?,
            second_list: dev.alloc::<u32>(b * stride, "second spikes by bank")?,
            second_rows: dev.alloc::<u32>(b * (t + 1), "rows of second spikes by step")?,
            repeats: dev.alloc::<u32>(b * inputs, "units spiking three times or more")?,
            repeat_steps: dev.alloc::<u32>(2 * b * inputs, "later spikes of repeat units")?,
            repeat_count: dev.alloc::<u32>(b, "units spiking three times or more")?,
            order: dev.alloc::<u32>(n, "columns by work")?,
            dw_t: dev.alloc::<f32>(n * inputs, "weight grad (stored transposed)")?,
        })
    }

    /// Lists each sample's spiking inputs (bits by unit) by bank and step for dW by columns
    /// (`spiking_units_by_bank`), on the side stream when `side` (after a fork). They need only
    /// the layer's input, so they can be built beside the flat list.
    fn list_spiking_units(
        &self,
        tape: &CudaTape,
        cols: &DeviceBuf<u32>,
        side: bool,
        columns: &ColumnBuffers,
    ) -> Result<()> {
        let dev = &self.dev;
        let (b, t) = (tape.batch, tape.steps);
        let (bi, ti, nii, stride_i) = (
            int("batch", b)?,
            int("steps", t)?,
            int("inputs", columns.inputs)?,
            int("inputs", columns.stride)?,
        );
        let build_bytes = 4 * 2 * COLUMN_BANKS * (t + 1);
        dev.allow_shared_memory(&dev.kernels.spiking_units_by_bank, build_bytes)?;
        let stream = dev.stream_on(side);
        let mut l = stream.launch_builder(&dev.kernels.spiking_units_by_bank);
        l.arg(&cols.slice)
            .arg(&bi)
            .arg(&ti)
            .arg(&nii)
            .arg(&stride_i);
        columns.push_lists(&mut l);
        let cfg = LaunchConfig {
            grid_dim: (b as u32, 1, 1),
            block_dim: (32 * COLUMN_BUILD_WARPS as u32, 1, 1),
            shared_mem_bytes: build_bytes as u32,
        };
        // SAFETY: a block of COLUMN_BUILD_WARPS warps per sample (the kernel's static shared
        // array is sized by it) with 2*32*(T+1) words of dynamic shared memory (allowed above);
        // cols holds B*NI*words(T) words, both lists B*stride (stride a multiple of the chunk and
        // of 32, >= NI: every bank's rows and padding stay in the sample's row), both row counts
        // B*(T+1), repeats B*NI, repeat_steps 2*B*NI, repeat_count B (alloc_columns); T <=
        // COLUMN_MAX_STEPS, NI + 63 < 2^16 (COLUMN_MAX_INPUTS: the trash slots' units fit 16
        // bits); on the side stream only between fork and join.
        unsafe { dev.launch_on(side, "spiking_units_by_bank", &mut l, cfg) }?;
        Ok(())
    }

    /// dW of a layer over hidden spikes (bits by unit) by columns, into `columns.dw_t`: a warp per
    /// column of dW in shared memory, visiting only the samples where its neuron is active, adding
    /// the later adjoint at the spikes of the units that spiked before the neuron's last active
    /// step (s3gd_bwd_columns.cu), on the side stream when `side` (after a fork). Needs
    /// `column_warps_for` to have said yes, the spiking units listed (`list_spiking_units`), and
    /// `flat` built with the sample masks.
    fn weight_grad_by_columns(
        &self,
        tape: &CudaTape,
        flat: &FlatEntries,
        cols: &DeviceBuf<u32>,
        side: bool,
        columns: &ColumnBuffers,
    ) -> Result<()> {
        let dev = &self.dev;
        let (b, t, n, inputs) = (tape.batch, tape.steps, tape.neurons, columns.inputs);
        let (bi, ti, nii, nn, stride_i) = (
            int("batch", b)?,
            int("steps", t)?,
            int("inputs", inputs)?,
            int("neurons", n)?,
            int("inputs", columns.stride)?,
        );
        let words_bi = int("batch words", words(b))?;
        let live = flat.live().ok_or_else(|| CoreError::Tape {
            op: "backward",
            why: "dW by columns needs the flat list's sample masks (flat_entries with_live)".into(),
        })?;
        let stream = dev.stream_on(side);
        let mut l = stream.launch_builder(&dev.kernels.columns_by_work);
        l.arg(&live)
            .arg(&nn)
            .arg(&words_bi)
            .arg(&columns.order.slice);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block; live holds N*words(B) words, order N (each column placed once); on
        // the side stream only between fork and join.
        unsafe { dev.launch_on(side, "columns_by_work", &mut l, cfg) }?;
        // Up to COLUMN_SHORT_STEPS, a kernel with half the suffix sums per lane.
        let (function, name) = if t <= COLUMN_SHORT_STEPS {
            (
                &dev.kernels.weight_grad_by_columns_short_bits,
                "weight_grad_by_columns_short_bits_f32",
            )
        } else {
            (
                &dev.kernels.weight_grad_by_columns_bits,
                "weight_grad_by_columns_bits_f32",
            )
        };
        // A block's warps share the registers of one multiprocessor: as many as the kernel's
        // registers let launch (11 warps at 179 registers a thread, 12 at 168).
        let block_threads = function
            .max_threads_per_block()
            .map_err(crate::CudaError::driver("cuFuncGetAttribute"))?
            .max(32) as usize;
        let warps = columns.warps.min(block_threads / 32);
        let parts = self
            .column_parts_for(b, t, inputs, n, warps)
            .min(block_threads / (32 * warps));
        let parts_i = int("column parts", parts)?;
        let block_warps = warps * parts;
        let shared_bytes = 4 * (t + block_warps * (t + 1 + column_len(inputs)));
        dev.allow_shared_memory(function, shared_bytes)?;
        let mut l = stream.launch_builder(function);
        l.arg(&flat.key.slice)
            .arg(&flat.dd.slice)
            .arg(&flat.starts.slice)
            .arg(&live)
            .arg(&columns.order.slice);
        columns.push_lists(&mut l);
        l.arg(&cols.slice)
            .arg(&bi)
            .arg(&ti)
            .arg(&nii)
            .arg(&stride_i)
            .arg(&nn)
            .arg(&flat.step_factors.slice)
            .arg(&parts_i)
            .arg(&columns.dw_t.slice);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(warps) as u32, 1, 1),
            block_dim: (32 * block_warps as u32, 1, 1),
            shared_mem_bytes: shared_bytes as u32,
        };
        // SAFETY: a warp per part of a column of dW, `warps` columns a block (blocks cover N); the
        // flat list holds B*(words(N)+1) starts and a key and value per tape slot; live, order,
        // both lists (16-byte aligned rows of stride slots, padded to whole chunks), their row
        // counts, repeats, repeat_steps and repeat_count as filled by list_spiking_units; cols
        // B*NI*words(T) words; dw_t N*NI floats, every one written; shared memory as laid out by
        // the kernel and allowed (column_warps_for); on the side stream only between fork and
        // join.
        unsafe { dev.launch_on(side, name, &mut l, cfg) }?;
        Ok(())
    }

    /// dS_in of the sparse method: one value per slot of the layer below's tape.
    fn below_grad_buf(&self, below_tape: &CudaTape) -> Result<CudaTensor> {
        self.f32_buf(below_tape.slots(), "input spike grad")
    }

    /// Rows of W (of `neurons` floats) a block of the tiled dS_in kernel holds in shared memory
    /// beside its warps' lists, at most 32; 0 when not even one fits.
    fn tiled_input_rows(&self, neurons: usize) -> usize {
        let rows = tiled_rows_within(self.dev.shared_memory_limit(), neurons);
        match self.tiled_rows_limit.forced() {
            None => rows,
            Some(most) => rows.min(most),
        }
    }

    /// The tiled dS_in kernel's grid: rows of W per tile, tiles over the inputs, and sample
    /// groups, about four blocks per multiprocessor, each with samples for all its warps.
    fn tiled_input_grid(
        &self,
        batch: usize,
        neurons: usize,
        inputs: usize,
    ) -> (usize, usize, usize) {
        let rows = self.tiled_input_rows(neurons).max(1);
        let (tiles, groups) =
            tiled_tiles_and_groups(rows, batch, inputs, self.dev.multiprocessors());
        let groups = match self.tiled_groups.forced() {
            None => groups,
            Some(asked) => asked.clamp(1, batch.max(1)),
        };
        (rows, tiles, groups)
    }

    /// Whether the tiled dS_in kernel takes a layer and its layer below: a row of W
    /// fits in shared memory, neuron indices fit the entry keys, below slots fit an int, and the
    /// split powers of beta (beta^(tau - t_ref), beta^(t_ref - t - 1), t_ref = T / 2) stay within
    /// e^(+-40), far from f32's range.
    fn tiled_fits(&self, tape: &CudaTape, below_tape: &CudaTape) -> bool {
        let t = tape.steps;
        let half_span = (t - t / 2).max(t / 2 + 1) as f64;
        tape.neurons < 1 << TILED_UNIT_BITS
            && t <= MAX_SPARSE_STEPS
            && self.tiled_input_rows(tape.neurons) >= 1
            && below_tape.slots() < i32::MAX as usize
            && tape.slots() < u32::MAX as usize
            && tape.beta > 0.0
            && half_span * tape.beta.ln().abs() <= 40.0
    }

    /// A sparse tape's active entries in one flat list, sample by sample (tape order), and what
    /// the tiled dS_in kernel reads besides (`flatten_by_sample`, one launch): key (t << 21 | j)
    /// and dd = beta^(t - t_ref) dS sigma'(V) per entry, where each (sample, segment)'s entries
    /// start, the split powers of beta, each neuron's live samples where `with_live` (for dW by
    /// columns), and into the returned scratch the list as one word per entry (by step and dealt
    /// by bank, as set) and the samples by decreasing work (where set).
    fn flat_entries(
        &self,
        tape: &CudaTape,
        grad_spikes: &CudaTensor,
        with_live: bool,
        below_tape: &CudaTape,
    ) -> Result<(FlatEntries, TiledScratch)> {
        let entries = ActiveEntries::of(tape)?;
        let below = ActiveEntries::of(below_tape)?;
        let dev = &self.dev;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let (bi, ti, nn) = (int("batch", b)?, int("steps", t)?, int("neurons", n)?);
        let words_ni = int("input segments", words(below_tape.neurons))?;
        let t_ref = int("steps", t / 2)?;
        let deal_groups = int("deal groups", self.tiled_deal_groups())?;
        let starts = dev.alloc::<u32>(b * (words(n) + 1), "flat tape starts")?;
        let key = dev.alloc::<u32>(entries.idx.len(), "flat tape keys")?;
        let dd = dev.alloc::<f32>(entries.idx.len(), "flat tape values")?;
        let live_words = if with_live { n * words(b) } else { 0 };
        let zeroed = dev.zeros::<u32>(live_words + 1, "live samples by unit")?;
        let (live, blocks_done) = (
            zeroed.slice.slice(..live_words),
            zeroed.slice.slice(live_words..),
        );
        let step_factors = dev.alloc::<f64>(2 * t, "split powers of beta")?;
        let by_step = FlatByStep {
            entries: dev.alloc::<u64>(entries.idx.len(), "flat tape entries by step")?,
            step_start: if self.tiled_by_step.load(relaxed) {
                Some(dev.alloc::<u32>(b * (t + 1), "flat tape step starts")?)
            } else {
                None
            },
        };
        let sample_order = if self.tiled_sample_order.load(relaxed) {
            Some(SampleOrder {
                work: dev.alloc::<u64>(b, "tiled sample work")?,
                order: dev.alloc::<u32>(b, "tiled sample order")?,
            })
        } else {
            None
        };
        let warps = self.flatten_warps();
        let shared_bytes = 8 * t + 4 * (warps * (t + 1) + words(n) + words(words(n)));
        dev.allow_shared_memory(&dev.kernels.flatten_by_sample, shared_bytes)?;
        let mut l = dev.stream.launch_builder(&dev.kernels.flatten_by_sample);
        entries.push_with_grad(&mut l, grad_spikes);
        l.arg(&bi)
            .arg(&ti)
            .arg(&nn)
            .arg(&tape.beta)
            .arg(&t_ref)
            .arg(&below.count.slice)
            .arg(&below.cap)
            .arg(&words_ni)
            .arg(&deal_groups)
            .arg(&starts.slice)
            .arg(&step_factors.slice)
            .arg(&key.slice)
            .arg(&dd.slice);
        let no_pointer = 0u64;
        if with_live {
            l.arg(&live);
        } else {
            l.arg(&no_pointer);
        }
        l.arg(&by_step.entries.slice);
        match &by_step.step_start {
            Some(step_start) => l.arg(&step_start.slice),
            None => l.arg(&no_pointer),
        };
        match &sample_order {
            Some(order) => l
                .arg(&order.work.slice)
                .arg(&order.order.slice)
                .arg(&blocks_done),
            None => l.arg(&no_pointer).arg(&no_pointer).arg(&no_pointer),
        };
        let cfg = LaunchConfig {
            grid_dim: (b as u32, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: shared_bytes as u32,
        };
        // SAFETY: a block per sample (the sample order's counter counts B blocks), 1 to 32 warps
        // (the kernel's warp totals); the tape's counts hold B*words(N) values and its slots
        // B*words(N)*cap, the spike gradients one per slot; starts B*(words(N)+1); step factors
        // 2T values, written by block 0; key, dd and the entries one per slot, each sample's
        // written inside its own slots (its entries at most words(N)*cap, re-placed and dealt
        // within its range, at most TILED_DEAL_MAX_GROUPS groups: the kernel's registers); live
        // (where given, zeroed) N*words(B) words, entries decoding to j < N, b < B; step_start
        // (where given) B*(T+1); the layer below's counts B*words(NI); work and order B and the
        // counter zeroed (the ranks a permutation of 0 .. B, each order slot written once);
        // shared memory T doubles and warps*(T+1) + words(N) + words(words(N)) words (T <=
        // MAX_SPARSE_STEPS, a row of W fits: tiled_fits), allowed above; every slot index fits a
        // u32 (tiled_fits).
        unsafe { dev.launch("flatten_by_sample", &mut l, cfg) }?;
        Ok((
            FlatEntries {
                key,
                dd,
                starts,
                step_factors,
                zeroed,
                live_words,
            },
            TiledScratch {
                by_step,
                sample_order,
            },
        ))
    }

    /// dS_in of the sparse method by the tiled pairs kernel, on the side stream when `side`
    /// (it forks; the caller joins after). What it builds for the kernel (the list by step, the
    /// sample order) goes to `scratch`, which the caller holds until after the join, whatever
    /// happens.
    #[allow(clippy::too_many_arguments)]
    fn input_grad_by_tiles(
        &self,
        tape: &CudaTape,
        flat: &FlatEntries,
        weights: &CudaTensor,
        below_tape: &CudaTape,
        reg: &RegGrad<Self>,
        out: &mut CudaTensor,
        side: bool,
        scratch: &TiledScratch,
    ) -> Result<()> {
        let below = ActiveEntries::of(below_tape)?;
        let dev = &self.dev;
        let (b, t, n, ni) = (tape.batch, tape.steps, tape.neurons, below_tape.neurons);
        let (rows, tiles, groups) = self.tiled_input_grid(b, n, ni);
        let shared_bytes = 4 * rows * n + TILED_LIST_BYTES;
        let function = &dev.kernels.tiled_input_grad;
        dev.allow_shared_memory(function, shared_bytes)?;
        let (words_n, nii, nn, bi, ti) = (
            int("segments", words(n))?,
            int("inputs", ni)?,
            int("neurons", n)?,
            int("batch", b)?,
            int("steps", t)?,
        );
        let rows_i = int("tile rows", rows)?;
        let by_step = &scratch.by_step;
        if side {
            dev.fork_side()?;
        }
        let stream = dev.stream_on(side);
        // The entry below's factors: the second half of the flat list's step factors.
        let below_factors = flat.step_factors.slice.slice(t..);
        let mut l = stream.launch_builder(function);
        // Without the list by step the kernel takes a null step_start and walks whole lists.
        let no_pointer = 0u64;
        l.arg(&by_step.entries.slice).arg(&flat.starts.slice);
        match &by_step.step_start {
            Some(step_start) => l.arg(&step_start.slice),
            None => l.arg(&no_pointer),
        };
        l.arg(&words_n);
        below.push_slots(&mut l);
        l.arg(&nii)
            .arg(&weights.buf.slice)
            .arg(&nn)
            .arg(&bi)
            .arg(&ti)
            .arg(&below_factors)
            .arg(&rows_i);
        match &scratch.sample_order {
            Some(sample_order) => l.arg(&sample_order.order.slice),
            None => l.arg(&no_pointer),
        };
        let share_rows = self
            .tiled_row_sharing
            .forced()
            .unwrap_or(n >= TILED_ROW_SHARING_MIN_NEURONS);
        let share_rows_i = i32::from(share_rows);
        l.arg(&reg.per_sample.buf.slice)
            .arg(&reg.per_neuron.buf.slice)
            .arg(&share_rows_i)
            .arg(&mut out.buf.slice);
        let cfg = LaunchConfig {
            grid_dim: (tiles as u32, groups as u32, 1),
            block_dim: (TILED_INPUT_BLOCK as u32, 1, 1),
            shared_mem_bytes: shared_bytes as u32,
        };
        // SAFETY: tiles of `rows` units cover NI; group y takes positions y, y + groups, .. < B of
        // the sample order (B samples) or of 0 .. B; W holds NI*N floats, the flat list
        // B*(words(N)+1) starts and an 8-byte entry per tape slot (flatten_by_sample); the step
        // factors 2T values, T from the second half; below slots fit an int (tiled_fits) and
        // index out; regulariser terms B and B*NI; shared memory as laid out by the kernel and
        // allowed; on the side stream only between fork and join.
        unsafe { dev.launch_on(side, "tiled_input_grad_f32", &mut l, cfg) }?;
        Ok(())
    }

    /// How dS_in is computed: as forced (`set_input_grad_path`), else the path
    /// `predicted_input_grad_path` picks from the active counts of the last step with these shapes
    /// (before any, by pairs).
    fn input_grad_path(
        &self,
        tape: &CudaTape,
        below_tape: &CudaTape,
        dw_from_adjoint: bool,
        tiled_ok: bool,
    ) -> InputGradPath {
        match self
            .input_grad_path
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            1 => return InputGradPath::Pairs,
            2 => return InputGradPath::Sampled,
            3 => return InputGradPath::Gemm,
            4 if tiled_ok => return InputGradPath::Tiled,
            _ => {}
        }
        let Some((above, below)) = self.last_active_of(tape, below_tape) else {
            return InputGradPath::Pairs;
        };
        let inputs = below_tape.neurons;
        let column_parts = self.column_warps_for(tape, inputs).map(|warps| {
            self.column_parts_for(tape.batch, tape.steps, inputs, tape.neurons, warps)
        });
        let tiled_grid = tiled_ok.then(|| {
            let (_, tiles, groups) = self.tiled_input_grid(tape.batch, tape.neurons, inputs);
            (tiles, groups)
        });
        predicted_input_grad_path(&PathInputs {
            batch: tape.batch,
            steps: tape.steps,
            neurons: tape.neurons,
            inputs,
            above_active: above.active,
            below_active: below.active,
            below_spikes: below.spikes,
            multiprocessors: self.dev.multiprocessors(),
            dw_from_adjoint,
            tiled_grid,
            column_parts,
        })
    }

    /// Whether dW of a layer over the uploaded input (events) comes from the dense later adjoint:
    /// as forced (`set_input_layer_weight_grad_from_adjoint`), else where the adjoint and dW from
    /// it are predicted faster than the trace kernel, from the layer's active entries last seen
    /// and the batch's events (before any step with this shape, the trace kernel).
    fn input_layer_dw_from_adjoint(&self, tape: &CudaTape, input: &CudaSpikes) -> bool {
        let SpikeLayout::Events { total, .. } = &input.layout else {
            return false;
        };
        if !self.weight_grad_from_adjoint_allowed() || tape.steps > MAX_SPARSE_STEPS {
            return false;
        }
        if let Some(forced) = self.input_layer_dw_from_adjoint.forced() {
            return forced;
        }
        self.seen_activity(tape).is_some_and(|seen| {
            let p = PathInputs {
                batch: tape.batch,
                steps: tape.steps,
                neurons: tape.neurons,
                inputs: input.units,
                above_active: seen.active,
                below_active: 0,
                below_spikes: *total,
                multiprocessors: self.dev.multiprocessors(),
                dw_from_adjoint: true,
                tiled_grid: None,
                column_parts: None,
            };
            adjoint_time(&p) + adjoint_dw_time(&p) < trace_dw_time(&p)
        })
    }

    /// Pairs of (active entry below, later active entry of this layer) per sample, from the
    /// active counts last seen for both shapes (about half of all pairs are in time order).
    fn pairs_per_sample(&self, tape: &CudaTape, below_tape: &CudaTape) -> Option<f64> {
        let (above, below) = self.last_active_of(tape, below_tape)?;
        Some(pairs_given(above.active, below.active, tape.batch))
    }

    /// The activity last seen for this layer's shape and for the layer below's.
    fn last_active_of(
        &self,
        tape: &CudaTape,
        below_tape: &CudaTape,
    ) -> Option<(SeenActivity, SeenActivity)> {
        Some((self.seen_activity(tape)?, self.seen_activity(below_tape)?))
    }

    /// The activity of the last tape statistics read for this layer's shape, if any.
    fn seen_activity(&self, tape: &CudaTape) -> Option<SeenActivity> {
        self.last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tape.activity_key())
            .copied()
    }

    /// Whether the pairs kernel copies all weights to shared memory: each block then loads every
    /// weight once, worth it only when a sample's pairs (each a gather) outnumber the weights. On
    /// the H200 at FMNIST's N = 200 and ~0.5% active (12k pairs, 40k weights) copying made the
    /// kernel 106 us instead of 47 us.
    fn stage_weights(&self, tape: &CudaTape, below_tape: &CudaTape) -> bool {
        self.weight_staging.forced().unwrap_or_else(|| {
            self.pairs_per_sample(tape, below_tape)
                .is_some_and(|pairs| pairs > (tape.neurons * below_tape.neurons) as f64)
        })
    }

    /// dS_in of the sparse method through dense arrays: d of this layer's active entries
    /// scattered, turned into the later adjoint G[t] = sum over tau > t of beta^(tau-t-1) d[tau],
    /// multiplied by W^T in one GEMM, and read back at the layer below's active entries. For wide
    /// layers, where pairing every active entry below with every later one above costs more.
    fn input_grad_by_gemm_path(
        &self,
        tape: &CudaTape,
        grad_spikes: &CudaTensor,
        weights: &CudaTensor,
        below_tape: &CudaTape,
        reg: &RegGrad<Self>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let below = ActiveEntries::of(below_tape)?;
        let dev = &self.dev;
        let (b, t, n, ni) = (tape.batch, tape.steps, tape.neurons, below_tape.neurons);
        let rows = b * t;
        let (bi, ti, nii) = (int("batch", b)?, int("steps", t)?, int("inputs", ni)?);
        let adjoint = self.later_adjoint(tape, grad_spikes, false)?;
        let y = self.adjoint_times_weights_t(
            "GEMM dS_in (sparse, gemm path)",
            &adjoint,
            weights,
            rows,
            n,
            ni,
        )?;
        drop(adjoint);
        let mut l = dev.stream.launch_builder(&dev.kernels.gather_below_grad);
        l.arg(&y.slice);
        below.push_slots(&mut l);
        l.arg(&bi)
            .arg(&ti)
            .arg(&nii)
            .arg(&reg.per_sample.buf.slice)
            .arg(&reg.per_neuron.buf.slice)
            .arg(&mut out.buf.slice);
        // SAFETY: one thread per below tape slot; entries decode to t < T, i < NI; y B*T*NI floats;
        // regulariser terms B and B*NI; out one value per below slot.
        unsafe {
            dev.launch(
                "gather_below_grad_f32",
                &mut l,
                grid_for(below.idx.len(), BLOCK),
            )
        }?;
        Ok(())
    }

    /// dW from per-group partial sums, added in group order.
    fn sum_weight_partials(
        &self,
        partial: &DeviceBuf<f32>,
        groups: usize,
        len: usize,
    ) -> Result<CudaTensor> {
        let mut dw = self.f32_buf(len, "weight grad")?;
        let groups_i = int("groups", groups)?;
        let mut l = self.dev.stream.launch_builder(&self.dev.kernels.sum_groups);
        l.arg(&partial.slice)
            .arg(&groups_i)
            .arg(&len)
            .arg(&mut dw.buf.slice);
        // SAFETY: partial holds groups*len floats, dw len floats.
        unsafe {
            self.dev
                .launch("sum_groups_f32", &mut l, grid_for(len, BLOCK))
        }?;
        Ok(dw)
    }

    fn dense_input_shifted(&self, input: &CudaSpikes) -> Result<DeviceBuf<f32>> {
        let (b, t, u) = (input.batch, input.steps, input.units);
        let k = &self.dev.kernels;
        match &input.layout {
            SpikeLayout::Events {
                data, offsets, ids, ..
            } => {
                let mut out = self.dev.zeros::<f32>(b * t * u, "dense input spikes")?;
                let (bi, ti, ui) = (int("batch", b)?, int("steps", t)?, int("units", u)?);
                let (offsets, ids) = (
                    data.slice.slice(offsets.clone()),
                    data.slice.slice(ids.clone()),
                );
                let mut l = self
                    .dev
                    .stream
                    .launch_builder(&k.spikes_events_to_dense_shifted);
                l.arg(&offsets)
                    .arg(&ids)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&ui)
                    .arg(&mut out.slice);
                // SAFETY: offsets has B*T+1 entries, ids every event id < U, out B*T*U floats.
                unsafe {
                    self.dev.launch(
                        "spikes_events_to_dense_shifted_f32",
                        &mut l,
                        grid_for(b * t, BLOCK),
                    )
                }?;
                Ok(out)
            }
            SpikeLayout::Bits { rows, .. } => {
                let mut out = self.dev.alloc::<f32>(b * t * u, "dense input spikes")?;
                let (bi, ti, ui) = (int("batch", b)?, int("steps", t)?, int("units", u)?);
                let mut l = self
                    .dev
                    .stream
                    .launch_builder(&k.spikes_bits_to_dense_shifted);
                l.arg(&rows.slice)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&ui)
                    .arg(&mut out.slice);
                // SAFETY: rows has B*T*words(U) words; out has B*T*U floats, a thread per i of each row.
                unsafe {
                    self.dev.launch(
                        "spikes_bits_to_dense_shifted_f32",
                        &mut l,
                        grid_rows(b * t, u, BLOCK),
                    )
                }?;
                Ok(out)
            }
        }
    }

    /// dW (NI x N) = sum over rows r of x[r]^T d[r] for `x` (rows x NI, row-major) and `d`
    /// (rows x N, row-major, or N x rows where `d_layout` is transposed): the float-input layer's
    /// weight gradient, one GEMM. With TF32 cuBLAS runs the NT product over row-major operands at
    /// 255 TFLOP/s on the H200 but an NN product at 400; with d transposed (written so by the
    /// kernel that makes it) the product is NN as it stands, and dW comes out stored transposed
    /// (v98; before, x was copied transposed for each backward). In fp32 the NT form is as fast.
    #[allow(clippy::too_many_arguments)]
    fn float_weight_grad(
        &self,
        what: &'static str,
        d: &DeviceBuf<f32>,
        d_layout: AdjointLayout,
        x: &DeviceBuf<f32>,
        rows: usize,
        n: usize,
        ni: usize,
    ) -> Result<CudaTensor> {
        let dev = &self.dev;
        let mut dw = dev.alloc::<f32>(ni * n, "weight grad")?;
        match d_layout {
            AdjointLayout::ByRow => {
                // Column-major C (N x NI) = D (N x R) * X^T (the split GEMMs read either layout).
                self.gemm_col_major(what, false, true, n, ni, rows, d, n, x, ni, &mut dw, n)?;
                Ok(CudaTensor::row_major(dw, ni * n))
            }
            AdjointLayout::Transposed => {
                // Column-major C (NI x N) = X^T (NI x R: x as stored) * D^T (R x N: d as
                // stored), which is dW^T row-major.
                self.gemm_col_major(what, false, false, ni, n, rows, x, ni, d, rows, &mut dw, ni)?;
                Ok(CudaTensor::stored_transposed(dw, ni, n))
            }
        }
    }

    /// The layout in which the float-input layer's backward makes the d its weight GEMM reads:
    /// transposed where cuBLAS runs TF32 products (see `float_weight_grad`).
    fn float_weight_grad_layout(&self) -> AdjointLayout {
        if self.dev.tf32_math() {
            AdjointLayout::Transposed
        } else {
            AdjointLayout::ByRow
        }
    }

    /// Y (`rows x inputs`, row-major) = G W^T for a dense adjoint G (`rows x neurons`) and the
    /// layer's weights (`inputs x neurons`): column-major Y^T (NI x R) = W^T (as N x NI) * G.
    fn adjoint_times_weights_t(
        &self,
        what: &'static str,
        adjoint: &DeviceBuf<f32>,
        weights: &CudaTensor,
        rows: usize,
        n: usize,
        ni: usize,
    ) -> Result<DeviceBuf<f32>> {
        let mut y = self.dev.alloc::<f32>(rows * ni, "input grad (dense)")?;
        self.gemm_col_major(
            what,
            true,
            false,
            ni,
            rows,
            n,
            &weights.buf,
            n,
            adjoint,
            n,
            &mut y,
            ni,
        )?;
        Ok(y)
    }

    /// cuBLAS's configuration of the column-major `c (m x n) = op(a) op(b)` (alpha 1, beta 0).
    fn sgemm_config(
        (transa, transb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (lda, ldb, ldc): (usize, usize, usize),
    ) -> Result<GemmConfig<f32>> {
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        Ok(GemmConfig {
            transa: op(transa),
            transb: op(transb),
            m: int("gemm m", m)?,
            n: int("gemm n", n)?,
            k: int("gemm k", k)?,
            alpha: 1.0f32,
            lda: int("gemm lda", lda)?,
            ldb: int("gemm ldb", ldb)?,
            beta: 0.0f32,
            ldc: int("gemm ldc", ldc)?,
        })
    }

    /// One timed `cublasSgemm` on the main stream (TF32 products where the precision set asks).
    ///
    /// # Safety
    /// `a`, `b` and `c` must hold the elements `cfg`'s dimensions and leading dimensions reach.
    unsafe fn sgemm<A, B, C>(
        &self,
        what: &'static str,
        cfg: GemmConfig<f32>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<()>
    where
        A: cudarc::driver::DevicePtr<f32>,
        B: cudarc::driver::DevicePtr<f32>,
        C: cudarc::driver::DevicePtrMut<f32>,
    {
        let blas = self.dev.blas()?;
        self.dev
            .timed(what, || {
                // SAFETY: delegated to the caller (see above).
                unsafe { blas.gemm(cfg, a, b, c) }.map_err(|status| CudaError::Cublas {
                    op: "cublasSgemm",
                    status,
                })
            })
            .map_err(CoreError::from)
    }

    /// One timed `cublasDgemm` on the main stream, with the shape and layouts of `cfg` (an SGEMM's
    /// configuration: alpha 1, beta 0).
    ///
    /// # Safety
    /// `a`, `b` and `c` must hold the elements `cfg`'s dimensions and leading dimensions reach.
    unsafe fn dgemm(
        &self,
        what: &'static str,
        cfg: GemmConfig<f32>,
        a: &DeviceBuf<f64>,
        b: &DeviceBuf<f64>,
        c: &mut DeviceBuf<f64>,
    ) -> Result<()> {
        let wide = GemmConfig {
            transa: cfg.transa,
            transb: cfg.transb,
            m: cfg.m,
            n: cfg.n,
            k: cfg.k,
            alpha: 1.0f64,
            lda: cfg.lda,
            ldb: cfg.ldb,
            beta: 0.0f64,
            ldc: cfg.ldc,
        };
        let blas = self.dev.blas()?;
        self.dev
            .timed(what, || {
                // SAFETY: delegated to the caller (see above).
                unsafe { blas.gemm(wide, &a.slice, &b.slice, &mut c.slice) }.map_err(|status| {
                    CudaError::Cublas {
                        op: "cublasDgemm",
                        status,
                    }
                })
            })
            .map_err(CoreError::from)
    }

    /// Columns `c0 .. c0 + cols` of the column-major product `c (m x n) = a * b` (`a` m x k with
    /// leading dimension `lda`, `b` k x n with `ldb`, `c` with `ldc`) in one cuBLAS call, in the
    /// precision cuBLAS itself runs (fp32 or TF32; the callers keep split precisions whole).
    #[allow(clippy::too_many_arguments)]
    fn gemm_columns(
        &self,
        what: &'static str,
        (m, k): (usize, usize),
        (a, lda): (&DeviceBuf<f32>, usize),
        (b, ldb): (&DeviceBuf<f32>, usize),
        (c, ldc): (&mut DeviceBuf<f32>, usize),
        (c0, cols): (usize, usize),
    ) -> Result<()> {
        let cfg = Self::sgemm_config((false, false), (m, cols, k), (lda, ldb, ldc))?;
        let b_view = b.slice.slice(c0 * ldb..);
        let mut c_view = c.slice.slice_mut(c0 * ldc..);
        // SAFETY: the caller sizes a, b and c for the whole product with these leading dimensions;
        // columns c0 .. c0 + cols of b and of c start at the views' offsets.
        unsafe { self.sgemm(what, cfg, &a.slice, &b_view, &mut c_view) }
    }

    /// Row-major `c[m x n] = op(a) * op(b)` through cuBLAS (column-major underneath).
    #[allow(clippy::too_many_arguments)]
    fn gemm_col_major(
        &self,
        what: &'static str,
        transa: bool,
        transb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &DeviceBuf<f32>,
        lda: usize,
        b: &DeviceBuf<f32>,
        ldb: usize,
        c: &mut DeviceBuf<f32>,
        ldc: usize,
    ) -> Result<()> {
        let cfg = Self::sgemm_config((transa, transb), (m, n, k), (lda, ldb, ldc))?;
        let gemm = |cfg: GemmConfig<f32>,
                    a: &DeviceBuf<f32>,
                    b: &DeviceBuf<f32>,
                    c: &mut DeviceBuf<f32>| {
            // SAFETY: the callers size a, b and c for these dimensions and leading dimensions
            // (split copies have their operand's length and layout).
            unsafe { self.sgemm(what, cfg, &a.slice, &b.slice, &mut c.slice) }
        };
        // The split GEMMs read each operand as rows along k: element (r, kk) of op(a) at
        // a[r * a_view.0 + kk * a_view.1], column r of op(b) likewise.
        let a_view = if transa { (lda, 1) } else { (1, lda) };
        let b_view = if transb { (1, ldb) } else { (ldb, 1) };
        match self.dev.gemm_precision() {
            GemmPrecision::Tf32x3 => {}
            // An empty product is cuBLAS's to define (zeros for k = 0): no slices to take.
            GemmPrecision::Int8Split | GemmPrecision::Fp16Scaled if m == 0 || n == 0 || k == 0 => {
                return gemm(cfg, a, b, c)
            }
            GemmPrecision::Int8Split => {
                return self.gemm_int8_split(
                    what,
                    INT8_SPLIT_SLICES,
                    (m, n, k),
                    (a, a_view),
                    (b, b_view),
                    c,
                    ldc,
                );
            }
            GemmPrecision::Fp16Scaled => {
                return self.gemm_fp16_scaled(what, (m, n, k), (a, a_view), (b, b_view), c, ldc);
            }
            GemmPrecision::Fp64Widened if m == 0 || n == 0 || k == 0 => return gemm(cfg, a, b, c),
            GemmPrecision::Fp64Widened => {
                return self.gemm_f64_widened(what, cfg, a, b, c, (m, n, ldc));
            }
            GemmPrecision::Fp32 | GemmPrecision::Tf32 => return gemm(cfg, a, b, c),
        }
        let (a_hi, a_lo) = self.split_tf32(a)?;
        let (b_hi, b_lo) = self.split_tf32(b)?;
        // The two small products first, then the large one added to them.
        gemm(cfg, &a_lo, &b_hi, c)?;
        let accumulate = GemmConfig { beta: 1.0, ..cfg };
        gemm(accumulate, &a_hi, &b_lo, c)?;
        gemm(accumulate, &a_hi, &b_hi, c)
    }

    /// One TN `cublasGemmEx` of a split GEMM: column-major `c (m x n) = a^T b`, where `a` and `b`
    /// hold k-contiguous rows of `lda` / `ldb` elements from the element offsets given, and `c`
    /// columns of `ldc` from its offset.
    ///
    /// # Safety
    /// The rows read (m of `a`, n of `b`, k elements each from the offsets) and the columns
    /// written (n of `c`) must lie inside the buffers, whose element types must be the inputs'
    /// (i8 or u16) and the sums' (i32 or f32).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_ex_tn<In, Out>(
        &self,
        what: &'static str,
        inputs: SplitInputs,
        (m, n, k): (i32, i32, i32),
        (a, a_offset, lda): (&DeviceBuf<In>, usize, i32),
        (b, b_offset, ldb): (&DeviceBuf<In>, usize, i32),
        (c, c_offset, ldc): (&mut DeviceBuf<Out>, usize, i32),
    ) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t, cublasGemmAlgo_t, cublasGemmEx, cublasStatus_t, cudaDataType,
        };
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let dev = &self.dev;
        let blas = dev.blas()?;
        let handle = *blas.handle();
        // alpha = 1 and beta = 0 in the sums' type (both four bytes).
        let (input_type, output_type, compute, one, op) = match inputs {
            SplitInputs::Int8 => (
                cudaDataType::CUDA_R_8I,
                cudaDataType::CUDA_R_32I,
                cublasComputeType_t::CUBLAS_COMPUTE_32I,
                1u32,
                "cublasGemmEx (int8)",
            ),
            SplitInputs::Fp16 => (
                cudaDataType::CUDA_R_16F,
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                1.0f32.to_bits(),
                "cublasGemmEx (fp16)",
            ),
        };
        let zero = 0u32;
        let (in_bytes, out_bytes) = (size_of::<In>() as u64, size_of::<Out>() as u64);
        dev.timed(what, || {
            let (pa, _ra) = a.slice.device_ptr(&dev.stream);
            let (pb, _rb) = b.slice.device_ptr(&dev.stream);
            let (pc, _rc) = c.slice.device_ptr_mut(&dev.stream);
            // SAFETY: the caller's contract above.
            let status = unsafe {
                cublasGemmEx(
                    handle,
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    (&one as *const u32).cast(),
                    (pa + a_offset as u64 * in_bytes) as *const std::ffi::c_void,
                    input_type,
                    lda,
                    (pb + b_offset as u64 * in_bytes) as *const std::ffi::c_void,
                    input_type,
                    ldb,
                    (&zero as *const u32).cast(),
                    (pc + c_offset as u64 * out_bytes) as *mut std::ffi::c_void,
                    output_type,
                    ldc,
                    compute,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            };
            if status == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                Ok(())
            } else {
                Err(CudaError::Cublas {
                    op,
                    status: cudarc::cublas::result::CublasError(status),
                })
            }
        })?;
        Ok(())
    }

    /// Column-major `c (m x n) = op(a) op(b)` from int8 slices (`GemmPrecision::Int8Split`,
    /// kernels/gemm_int8.cu). Each operand comes as a row view: element (r, kk) of op(a) at
    /// `a[r * stride.0 + kk * stride.1]`, and column r of op(b) likewise, one stride being 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_int8_split(
        &self,
        what: &'static str,
        slices: usize,
        (m, n, k): (usize, usize, usize),
        (a, a_view): (&DeviceBuf<f32>, (usize, usize)),
        (b, b_view): (&DeviceBuf<f32>, (usize, usize)),
        c: &mut DeviceBuf<f32>,
        ldc: usize,
    ) -> Result<()> {
        let dev = &self.dev;
        let k_padded = k.max(1).next_multiple_of(16);
        // A group's stacked product sums up to slices * k_padded terms of |s_p s_q| <= 2^12.
        let k_limit = (i32::MAX as usize >> 12) / slices;
        if k_padded > k_limit {
            return Err(CudaError::TooLarge {
                what: "inner dimension of an int8-split GEMM",
                value: k,
                limit: k_limit,
            }
            .into());
        }
        let (a_slices, a_exponents) = self.split_int8(a, m, k, a_view, slices, false, k_padded)?;
        let (b_slices, b_exponents) = self.split_int8(b, n, k, b_view, slices, true, k_padded)?;
        // The int32 products of a chunk of columns at a time, so that they take at most
        // INT8_SPLIT_GROUP_BYTES (or one column's worth) beside the f32 output.
        let budget = self
            .int8_split_group_bytes
            .forced()
            .unwrap_or(INT8_SPLIT_GROUP_BYTES);
        let chunk = (budget / (slices * m * 4)).clamp(1, n.max(1));
        let mut groups = dev.alloc::<i32>(slices * m * chunk, "int8-split GEMM products")?;
        let ld = int("int8-split slice rows", slices * k_padded)?;
        let (mi, slices_i, ldc_i) = (
            int("gemm m", m)?,
            int("slices", slices)?,
            int("gemm ldc", ldc)?,
        );
        for j0 in (0..n).step_by(chunk) {
            let j_end = (j0 + chunk).min(n);
            let columns = int("gemm n", j_end - j0)?;
            for group in 0..slices {
                let depth = int("int8-split GEMM depth", (group + 1) * k_padded)?;
                let b_offset = j0 * slices * k_padded + (slices - 1 - group) * k_padded;
                let c_offset = group * m * (j_end - j0);
                // SAFETY: a_slices holds m rows and b_slices n rows of `ld` bytes; this product
                // reads `depth` bytes of the rows from the offsets given (within a row:
                // (slices - 1 - group) * k_padded + depth = ld) for rows j0..j_end of B; groups
                // holds `slices` blocks of m x chunk int32 and this writes block `group`'s first
                // j_end - j0 columns.
                unsafe {
                    self.gemm_ex_tn(
                        what,
                        SplitInputs::Int8,
                        (mi, columns, depth),
                        (&a_slices, 0, ld),
                        (&b_slices, b_offset, ld),
                        (&mut groups, c_offset, mi),
                    )
                }?;
            }
            let (j0_i, j_end_i) = (int("gemm column", j0)?, int("gemm column", j_end)?);
            let mut l = dev.stream.launch_builder(&dev.kernels.int8_split_combine);
            l.arg(&groups.slice)
                .arg(&slices_i)
                .arg(&mi)
                .arg(&j0_i)
                .arg(&j_end_i)
                .arg(&a_exponents.slice)
                .arg(&b_exponents.slice)
                .arg(&mut c.slice)
                .arg(&ldc_i);
            let cfg = output_columns_grid(m, j_end - j0);
            // SAFETY: groups holds slices blocks of m x (j_end - j0) products, the exponents m
            // and n entries, and c (ldc >= m) n columns; x-blocks cover m and y-blocks stride
            // over j0..j_end.
            unsafe { dev.launch("int8_split_combine", &mut l, cfg) }?;
        }
        Ok(())
    }

    /// The bits of each row's largest magnitude in a view of `x` (element (r, kk) at
    /// `x[r * stride.0 + kk * stride.1]`, one stride 1), and the launch shape that tiles the view's
    /// rows and `k_len` columns: the first step of the int8 and fp16 splits.
    fn row_maxima(
        &self,
        what: &'static str,
        x: &DeviceBuf<f32>,
        rows: usize,
        k: usize,
        (row_stride, k_stride): (usize, usize),
    ) -> Result<(DeviceBuf<u32>, impl Fn(usize) -> LaunchConfig)> {
        let dev = &self.dev;
        let last = (rows.max(1) - 1) * row_stride + (k.max(1) - 1) * k_stride;
        if last >= x.len() || (row_stride != 1 && k_stride != 1) {
            return Err(CoreError::Shape {
                op: what,
                expected: format!(
                    "{rows} rows of {k} with strides ({row_stride}, {k_stride}), one of them 1"
                ),
                got: format!("{} floats", x.len()),
            });
        }
        let row_tiles = rows.div_ceil(32);
        if row_tiles > 65535 {
            return Err(CudaError::TooLarge {
                what: "rows of a split GEMM operand",
                value: rows,
                limit: 65535 * 32,
            }
            .into());
        }
        let mut row_max = dev.zeros::<u32>(rows, "split GEMM row maxima")?;
        let (rows_i, k_i) = (int("split GEMM rows", rows)?, int("gemm k", k)?);
        let (row_stride_l, k_stride_l) = (row_stride as i64, k_stride as i64);
        // Enough blocks to fill the device: 32-row stripes, each split along k in tiles of 128.
        let k_blocks = move |k_len: usize| k_len.div_ceil(128).clamp(1, (4096 / row_tiles).max(1));
        let tiles = move |k_len: usize| LaunchConfig {
            grid_dim: (k_blocks(k_len) as u32, row_tiles as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut l = dev.stream.launch_builder(&dev.kernels.int8_split_row_max);
        l.arg(&x.slice)
            .arg(&rows_i)
            .arg(&k_i)
            .arg(&row_stride_l)
            .arg(&k_stride_l)
            .arg(&mut row_max.slice);
        // SAFETY: the view's last element is inside x (checked above); row_max holds rows entries.
        unsafe { dev.launch("int8_split_row_max", &mut l, tiles(k)) }?;
        Ok((row_max, tiles))
    }

    /// The int8 slices of the `rows` rows of a view of `x` (element (r, kk) at
    /// `x[r * stride.0 + kk * stride.1]`) and each row's exponent, for `gemm_int8_split`.
    #[allow(clippy::too_many_arguments)]
    fn split_int8(
        &self,
        x: &DeviceBuf<f32>,
        rows: usize,
        k: usize,
        view: (usize, usize),
        slices: usize,
        reversed: bool,
        k_padded: usize,
    ) -> Result<(DeviceBuf<i8>, DeviceBuf<i32>)> {
        let dev = &self.dev;
        let (row_max, tiles) = self.row_maxima("int8-split GEMM operand", x, rows, k, view)?;
        let mut out = dev.alloc::<i8>(rows * slices * k_padded, "int8-split slices")?;
        let mut exponents = dev.alloc::<i32>(rows, "int8-split exponents")?;
        let (rows_i, k_i) = (int("int8-split rows", rows)?, int("gemm k", k)?);
        let (row_stride_l, k_stride_l) = (view.0 as i64, view.1 as i64);
        let (slices_i, k_padded_i, reversed_i) = (
            int("slices", slices)?,
            int("int8-split padded k", k_padded)?,
            i32::from(reversed),
        );
        let mut l = dev.stream.launch_builder(&dev.kernels.int8_split_slices);
        l.arg(&x.slice)
            .arg(&rows_i)
            .arg(&k_i)
            .arg(&row_stride_l)
            .arg(&k_stride_l)
            .arg(&row_max.slice)
            .arg(&slices_i)
            .arg(&reversed_i)
            .arg(&k_padded_i)
            .arg(&mut out.slice)
            .arg(&mut exponents.slice);
        // SAFETY: row_maxima checked the view against x; out holds rows x slices x k_padded bytes
        // and exponents rows entries.
        unsafe { dev.launch("int8_split_slices", &mut l, tiles(k_padded)) }?;
        Ok((out, exponents))
    }

    /// Column-major `c (m x n) = op(a) op(b)` from one fp16 tensor-core GEMM over scaled operands
    /// (`GemmPrecision::Fp16Scaled`, kernels/gemm_fp16.cu); operands as row views, as for
    /// `gemm_int8_split`.
    pub(crate) fn gemm_fp16_scaled(
        &self,
        what: &'static str,
        (m, n, k): (usize, usize, usize),
        (a, a_view): (&DeviceBuf<f32>, (usize, usize)),
        (b, b_view): (&DeviceBuf<f32>, (usize, usize)),
        c: &mut DeviceBuf<f32>,
        ldc: usize,
    ) -> Result<()> {
        let dev = &self.dev;
        // 16-byte rows for the tensor cores' loads.
        let k_padded = k.max(1).next_multiple_of(8);
        let (a_half, a_exponents) = self.split_fp16(a, m, k, a_view, k_padded)?;
        let (b_half, b_exponents) = self.split_fp16(b, n, k, b_view, k_padded)?;
        let (mi, ni, ki, ldc_i) = (
            int("gemm m", m)?,
            int("gemm n", n)?,
            int("fp16-scaled padded k", k_padded)?,
            int("gemm ldc", ldc)?,
        );
        // SAFETY: a_half holds m rows and b_half n rows of k_padded fp16 numbers (the leading
        // dimension); c holds n columns of ldc >= m floats.
        unsafe {
            self.gemm_ex_tn(
                what,
                SplitInputs::Fp16,
                (mi, ni, ki),
                (&a_half, 0, ki),
                (&b_half, 0, ki),
                (c, 0, ldc_i),
            )
        }?;
        let mut l = dev.stream.launch_builder(&dev.kernels.fp16_scaled_unscale);
        l.arg(&mut c.slice)
            .arg(&mi)
            .arg(&ni)
            .arg(&ldc_i)
            .arg(&a_exponents.slice)
            .arg(&b_exponents.slice);
        let cfg = output_columns_grid(m, n);
        // SAFETY: c holds n columns of ldc >= m floats, the exponents m and n entries; x-blocks
        // cover m and y-blocks stride over n.
        unsafe { dev.launch("fp16_scaled_unscale", &mut l, cfg) }?;
        Ok(())
    }

    /// Column-major `c (m x n) = op(a) op(b)` on f64 tensor cores (`GemmPrecision::Fp64Widened`,
    /// kernels/gemm_f64.cu): `a` and `b` widened whole to f64, one cuBLAS DGEMM with the same
    /// layouts and leading dimensions, and its m x n outputs rounded once into `c`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_f64_widened(
        &self,
        what: &'static str,
        cfg: GemmConfig<f32>,
        a: &DeviceBuf<f32>,
        b: &DeviceBuf<f32>,
        c: &mut DeviceBuf<f32>,
        (m, n, ldc): (usize, usize, usize),
    ) -> Result<()> {
        let dev = &self.dev;
        let a_wide = self.widen_f64(a, "GEMM operand a widened to f64")?;
        let b_wide = self.widen_f64(b, "GEMM operand b widened to f64")?;
        let mut c_wide = dev.alloc::<f64>(c.len(), "GEMM output in f64")?;
        // SAFETY: the widened copies have their operands' lengths and layouts, which the callers
        // size for cfg's dimensions and leading dimensions; c_wide has c's length.
        unsafe { self.dgemm(what, cfg, &a_wide, &b_wide, &mut c_wide) }?;
        let (mi, ni, ldc_i) = (int("gemm m", m)?, int("gemm n", n)?, int("gemm ldc", ldc)?);
        let mut l = dev.stream.launch_builder(&dev.kernels.narrow_f64_f32);
        l.arg(&c_wide.slice)
            .arg(&mi)
            .arg(&ni)
            .arg(&ldc_i)
            .arg(&mut c.slice);
        // SAFETY: c and c_wide hold n columns of ldc >= m elements; the kernel strides over m x n.
        unsafe {
            dev.launch(
                "narrow_f64_f32",
                &mut l,
                grid_for((m * n).min(1 << 22), BLOCK),
            )
        }?;
        Ok(())
    }

    /// An exact f64 copy of `x`.
    fn widen_f64(&self, x: &DeviceBuf<f32>, what: &'static str) -> Result<DeviceBuf<f64>> {
        let dev = &self.dev;
        let len = x.len();
        let mut wide = dev.alloc::<f64>(len, what)?;
        let mut l = dev.stream.launch_builder(&dev.kernels.widen_f32_f64);
        l.arg(&x.slice).arg(&len).arg(&mut wide.slice);
        // SAFETY: x holds len floats and wide len doubles; the kernel strides over len.
        unsafe { dev.launch("widen_f32_f64", &mut l, grid_for(len.min(1 << 22), BLOCK)) }?;
        Ok(wide)
    }

    /// The scaled fp16 rows (`k_padded` each, zero past k) of the `rows` rows of a view of `x`
    /// and each row's exponent, for `gemm_fp16_scaled`.
    fn split_fp16(
        &self,
        x: &DeviceBuf<f32>,
        rows: usize,
        k: usize,
        view: (usize, usize),
        k_padded: usize,
    ) -> Result<(DeviceBuf<u16>, DeviceBuf<i32>)> {
        let dev = &self.dev;
        let (row_max, tiles) = self.row_maxima("fp16-scaled GEMM operand", x, rows, k, view)?;
        let mut out = dev.alloc::<u16>(rows * k_padded, "fp16-scaled operand")?;
        let mut exponents = dev.alloc::<i32>(rows, "fp16-scaled exponents")?;
        let (rows_i, k_i, k_padded_i) = (
            int("fp16-scaled rows", rows)?,
            int("gemm k", k)?,
            int("fp16-scaled padded k", k_padded)?,
        );
        let (row_stride_l, k_stride_l) = (view.0 as i64, view.1 as i64);
        let mut l = dev.stream.launch_builder(&dev.kernels.fp16_scaled_convert);
        l.arg(&x.slice)
            .arg(&rows_i)
            .arg(&k_i)
            .arg(&row_stride_l)
            .arg(&k_stride_l)
            .arg(&row_max.slice)
            .arg(&k_padded_i)
            .arg(&mut out.slice)
            .arg(&mut exponents.slice);
        // SAFETY: row_maxima checked the view against x; out holds rows x k_padded fp16 numbers
        // and exponents rows entries.
        unsafe { dev.launch("fp16_scaled_convert", &mut l, tiles(k_padded)) }?;
        Ok((out, exponents))
    }

    /// x = hi + lo as two TF32-exact copies (`GemmPrecision::Tf32x3`).
    fn split_tf32(&self, x: &DeviceBuf<f32>) -> Result<(DeviceBuf<f32>, DeviceBuf<f32>)> {
        let dev = &self.dev;
        let mut hi = dev.alloc::<f32>(x.len(), "gemm operand (TF32 high part)")?;
        let mut lo = dev.alloc::<f32>(x.len(), "gemm operand (TF32 low part)")?;
        let len = x.len();
        let mut l = dev.stream.launch_builder(&dev.kernels.split_tf32);
        l.arg(&x.slice)
            .arg(&len)
            .arg(&mut hi.slice)
            .arg(&mut lo.slice);
        // SAFETY: x, hi and lo hold len floats (device allocations are 256-byte aligned, so the
        // kernel's float4 view is aligned); the kernel strides over len.
        unsafe {
            dev.launch(
                "split_tf32_f32",
                &mut l,
                grid_for(len.div_ceil(4).min(1 << 20), BLOCK),
            )
        }?;
        Ok((hi, lo))
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Spikes = CudaSpikes;
    type Labels = CudaLabels;
    type LayerTape = CudaTape;
    type ReadoutTape = CudaReadoutTape;
    type Mark = CudaMark;

    fn describe(&self) -> String {
        let gemms = match self.dev.gemm_precision() {
            GemmPrecision::Fp32 => "",
            GemmPrecision::Tf32 => ", TF32 GEMMs",
            GemmPrecision::Tf32x3 => ", 3xTF32 GEMMs",
            GemmPrecision::Int8Split => ", int8-split GEMMs",
            GemmPrecision::Fp16Scaled => ", fp16-scaled GEMMs",
            GemmPrecision::Fp64Widened => ", f32 GEMMs on f64 tensor cores",
        };
        format!("cuda ({}, {}, f32{gemms})", self.dev.name, self.dev.arch)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaTensor> {
        Ok(CudaTensor::row_major(
            self.dev.upload(data, "tensor")?,
            data.len(),
        ))
    }

    fn zeros(&self, len: usize) -> Result<CudaTensor> {
        Ok(CudaTensor::row_major(self.dev.zeros(len, "tensor")?, len))
    }

    fn download(&self, tensor: &CudaTensor) -> Result<Vec<f64>> {
        Ok(self
            .download_f32(tensor)?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    fn download_f32(&self, tensor: &CudaTensor) -> Result<Vec<f32>> {
        let stored = self.dev.download(&tensor.buf, tensor.len)?;
        Ok(match tensor.stored_transposed {
            None => stored,
            // Stored as its transpose: cols x rows.
            Some((rows, cols)) => transposed_on_host(&stored, cols, rows),
        })
    }

    fn upload_spikes(&self, spikes: &SpikeEvents) -> Result<CudaSpikes> {
        if spikes.steps() > u16::MAX as usize {
            return Err(CudaError::TooLarge {
                what: "time steps",
                value: spikes.steps(),
                limit: u16::MAX as usize,
            }
            .into());
        }
        let (b, t, u) = (spikes.batch(), spikes.steps(), spikes.units());
        if (u + 1) * 4 > 48 << 10 {
            return Err(CudaError::TooLarge {
                what: "input units (events_by_unit keeps a counter per unit in shared memory)",
                value: u,
                limit: (48 << 10) / 4 - 1,
            }
            .into());
        }
        let events = spikes.total_events();
        let mut packed = Vec::with_capacity(spikes.offsets().len() + events);
        packed.extend_from_slice(spikes.offsets());
        packed.extend_from_slice(spikes.unit_ids());
        let offsets = 0..spikes.offsets().len();
        let ids = offsets.end..packed.len();
        let data = self.dev.upload_staged(&packed, "input spikes")?;
        let mut unit_offsets = self.dev.alloc::<u32>(b * u + 1, "input spikes by unit")?;
        let mut unit_times = self.dev.alloc::<u32>(events, "input spike times by unit")?;
        {
            let (offsets_view, ids_view) = (
                data.slice.slice(offsets.clone()),
                data.slice.slice(ids.clone()),
            );
            let (bi, ti, ui) = (int("batch", b)?, int("steps", t)?, int("units", u)?);
            let mut l = self
                .dev
                .stream
                .launch_builder(&self.dev.kernels.events_by_unit);
            l.arg(&offsets_view)
                .arg(&ids_view)
                .arg(&bi)
                .arg(&ti)
                .arg(&ui)
                .arg(&mut unit_offsets.slice)
                .arg(&mut unit_times.slice);
            let cfg = LaunchConfig {
                grid_dim: (bi.max(1) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: ((u + 1) * 4) as u32,
            };
            // SAFETY: block per sample; offsets B*T+1, ids every event (< U), unit_offsets B*U+1,
            // unit_times one word per event; shared memory U+1 words (<= 48 KiB, checked).
            unsafe { self.dev.launch("events_by_unit", &mut l, cfg) }?;
        }
        Ok(CudaSpikes {
            batch: b,
            steps: t,
            units: u,
            layout: SpikeLayout::Events {
                data,
                offsets,
                ids,
                unit_offsets,
                unit_times,
                total: events as u64,
            },
        })
    }

    fn download_spikes(&self, spikes: &CudaSpikes) -> Result<SpikeEvents> {
        let (b, t, u) = (spikes.batch, spikes.steps, spikes.units);
        match &spikes.layout {
            SpikeLayout::Events {
                data, offsets, ids, ..
            } => {
                let all = self.dev.download(data, data.len())?;
                SpikeEvents::from_parts(
                    b,
                    t,
                    u,
                    all[offsets.clone()].to_vec(),
                    all[ids.clone()].to_vec(),
                )
            }
            SpikeLayout::Bits { rows, .. } => {
                let wn = words(u);
                let rows = self.dev.download(rows, b * t * wn)?;
                let mut builder = SpikeEventsBuilder::new(t, u);
                for s in 0..b {
                    let mut events = Vec::new();
                    for step in 0..t {
                        for w in 0..wn {
                            let mut m = rows[(s * t + step) * wn + w];
                            while m != 0 {
                                let bit = m.trailing_zeros();
                                m &= m - 1;
                                events.push((step, w as u32 * 32 + bit));
                            }
                        }
                    }
                    builder.push_sorted_sample(events)?;
                }
                Ok(builder.finish())
            }
        }
    }

    fn spike_count(&self, spikes: &CudaSpikes) -> Result<u64> {
        match &spikes.layout {
            SpikeLayout::Events { total, .. } => Ok(*total),
            SpikeLayout::Bits { stats, .. } => Ok(self.dev.download(stats, 1)?[0] as u64),
        }
    }

    fn upload_labels(&self, labels: &[u32], classes: usize) -> Result<CudaLabels> {
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
        Ok(CudaLabels {
            buf: self.dev.upload(labels, "labels")?,
            len: labels.len(),
        })
    }

    fn lif_forward(
        &self,
        input: &CudaSpikes,
        weights: &CudaTensor,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>> {
        let (b, t, n) = (input.batch, input.steps, layer.neurons);
        if input.units != layer.inputs {
            return Err(shape("lif_forward", layer.inputs, input.units));
        }
        Self::check_tensor("lif_forward", "weights", layer.inputs * n, weights)?;
        let mut out = self.layer_outputs("lif_forward", b, t, layer, keep)?;
        let dev = &self.dev;
        let (ti, ni) = (int("steps", t)?, int("neurons", n)?);
        let words_in = int("input words", words(input.units))?;
        let k = &dev.kernels;
        // The f64 currents of a chunk of samples at a time, so that they stay bounded
        // (CURRENT_CHUNK_BYTES).
        let per_sample = t * n * 8;
        let budget = self
            .current_chunk_bytes
            .forced()
            .unwrap_or(CURRENT_CHUNK_BYTES);
        let mut chunk = equal_sample_chunks(b, per_sample, budget);
        // Where the device is short of memory, smaller chunks: slower, but the step runs.
        let mut current = loop {
            match dev.alloc::<f64>(chunk * t * n, "input currents") {
                Ok(buf) => break buf,
                Err(CudaError::OutOfMemory { .. }) if chunk > 1 => chunk = chunk.div_ceil(2),
                Err(e) => return Err(e.into()),
            }
        };
        let current_threads = (32 * words(n)).min(256);
        let wide_loads = self
            .current_loads_ahead
            .forced()
            .map_or(n >= CURRENT_LOADS_AHEAD_MIN_NEURONS, |ahead| ahead > 4);
        for b0 in (0..b).step_by(chunk) {
            let samples = chunk.min(b - b0);
            let (b0_i, samples_i) = (int("batch", b0)?, int("batch", samples)?);
            let cfg = LaunchConfig {
                grid_dim: (
                    int("rows", (samples * t).div_ceil(CURRENT_ROWS))? as u32,
                    n.div_ceil(current_threads) as u32,
                    1,
                ),
                block_dim: (current_threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            match &input.layout {
                SpikeLayout::Events {
                    data, offsets, ids, ..
                } => {
                    let (offsets, ids) = (
                        data.slice.slice(offsets.clone()),
                        data.slice.slice(ids.clone()),
                    );
                    let (function, name) = if wide_loads {
                        (
                            &k.spike_current_events_wide,
                            "spike_current_events_wide_f64",
                        )
                    } else {
                        (&k.spike_current_events, "spike_current_events_f64")
                    };
                    let mut l = dev.stream.launch_builder(function);
                    l.arg(&offsets)
                        .arg(&ids)
                        .arg(&weights.buf.slice)
                        .arg(&ti)
                        .arg(&ni)
                        .arg(&b0_i)
                        .arg(&samples_i)
                        .arg(&mut current.slice);
                    // SAFETY: block per CURRENT_ROWS rows of the chunk; offsets B*T+1, every id
                    // < inputs, weights inputs*N floats, current chunk*T*N doubles.
                    unsafe { dev.launch(name, &mut l, cfg) }?;
                }
                SpikeLayout::Bits { rows: in_rows, .. } => {
                    let (function, name) = if wide_loads {
                        (&k.spike_current_bits_wide, "spike_current_bits_wide_f64")
                    } else {
                        (&k.spike_current_bits, "spike_current_bits_f64")
                    };
                    let mut l = dev.stream.launch_builder(function);
                    l.arg(&in_rows.slice)
                        .arg(&words_in)
                        .arg(&weights.buf.slice)
                        .arg(&ti)
                        .arg(&ni)
                        .arg(&b0_i)
                        .arg(&samples_i)
                        .arg(&mut current.slice);
                    // SAFETY: as above, with input bit rows of B*T*words(inputs) words.
                    unsafe { dev.launch(name, &mut l, cfg) }?;
                }
            }
            self.launch_scan(
                false,
                &k.lif_scan,
                "lif_scan_f32",
                &current.slice.slice(..),
                b0,
                samples,
                layer,
                &mut out,
            )?;
        }
        drop(current);
        let input_bytes = input.kept_bytes(matches!(keep, Keep::Sparse { .. }));
        self.finish_layer(out, layer, input_bytes)
    }

    fn lif_forward_float(
        &self,
        input: &CudaTensor,
        batch: usize,
        steps: usize,
        weights: &CudaTensor,
        layer: &LayerSpec,
        keep: Keep,
    ) -> Result<LayerOutput<Self>> {
        let (b, t, n, ni) = (batch, steps, layer.neurons, layer.inputs);
        Self::check_tensor("lif_forward_float", "input", b * t * ni, input)?;
        Self::check_tensor("lif_forward_float", "weights", ni * n, weights)?;
        let mut out = self.layer_outputs("lif_forward_float", b, t, layer, keep)?;
        let dev = &self.dev;
        // I (R x N, row-major) = X W: column-major I^T (N x R) = W (as N x NI) * X (as NI x R).
        let mut current = dev.alloc::<f32>(b * t * n, "input currents")?;
        let (chunk_samples, scan_beside) = self.currents_chunks(b, t, n);
        if chunk_samples >= b {
            self.gemm_col_major(
                "GEMM currents",
                false,
                false,
                n,
                b * t,
                ni,
                &weights.buf,
                n,
                &input.buf,
                ni,
                &mut current,
                n,
            )?;
        } else {
            for b0 in (0..b).step_by(chunk_samples) {
                let samples = chunk_samples.min(b - b0);
                self.gemm_columns(
                    "GEMM currents",
                    (n, ni),
                    (&weights.buf, n),
                    (&input.buf, ni),
                    (&mut current, n),
                    (b0 * t, samples * t),
                )?;
                if scan_beside {
                    // The side stream scans this chunk while the main one computes the next.
                    dev.fork_side()?;
                    self.launch_scan(
                        true,
                        &dev.kernels.lif_scan_float_current,
                        "lif_scan_float_current_f32",
                        &current.slice.slice(b0 * t * n..),
                        b0,
                        samples,
                        layer,
                        &mut out,
                    )?;
                }
            }
        }
        if scan_beside {
            dev.join_side()?;
        } else {
            self.launch_scan(
                false,
                &dev.kernels.lif_scan_float_current,
                "lif_scan_float_current_f32",
                &current.slice.slice(..),
                0,
                b,
                layer,
                &mut out,
            )?;
        }
        drop(current);
        self.finish_layer(out, layer, input.buf.bytes())
    }

    fn readout_forward(
        &self,
        hidden: &CudaSpikes,
        weights: &CudaTensor,
        readout: &ReadoutSpec,
    ) -> Result<(CudaTensor, CudaReadoutTape)> {
        let (b, t, n, c) = (hidden.batch, hidden.steps, hidden.units, readout.classes);
        if hidden.units != readout.inputs {
            return Err(shape("readout_forward", readout.inputs, hidden.units));
        }
        Self::check_tensor("readout_forward", "weights", n * c, weights)?;
        let SpikeLayout::Bits { rows, .. } = &hidden.layout else {
            return Err(CoreError::Spikes(
                "the CUDA readout reads hidden-layer spikes (from lif_forward), not uploaded ones"
                    .into(),
            ));
        };
        let mut logits = self.f32_buf(b * c, "logits")?;
        let mut argmax = self.dev.alloc::<u32>(b * c, "readout argmax")?;
        let (bi, ti, ni, ci) = (
            int("batch", b)?,
            int("steps", t)?,
            int("neurons", n)?,
            int("classes", c)?,
        );
        let mode_sum = i32::from(readout.mode == Readout::Sum);
        let chunk = (4096 / c).clamp(1, 64);
        let chunk_i = int("chunk", chunk)?;
        let mut l = self
            .dev
            .stream
            .launch_builder(&self.dev.kernels.readout_fwd);
        l.arg(&rows.slice)
            .arg(&weights.buf.slice)
            .arg(&bi)
            .arg(&ti)
            .arg(&ni)
            .arg(&ci)
            .arg(&readout.beta)
            .arg(&mode_sum)
            .arg(&chunk_i)
            .arg(&mut logits.buf.slice)
            .arg(&mut argmax.slice);
        let cfg = LaunchConfig {
            grid_dim: (bi as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (chunk * c * 8) as u32,
        };
        // SAFETY: block per sample; rows B*T*words(N), weights N*C, logits and argmax B*C; shared
        // memory holds chunk*C doubles (<= 32 KiB).
        unsafe { self.dev.launch("readout_fwd_f32", &mut l, cfg) }?;
        Ok((
            logits,
            CudaReadoutTape {
                batch: b,
                steps: t,
                spec: *readout,
                argmax,
            },
        ))
    }

    fn loss(
        &self,
        logits: &CudaTensor,
        labels: &CudaLabels,
        counts: [&CudaTensor; 2],
        hidden: usize,
        loss: &LossSpec,
    ) -> Result<LossOutput<Self>> {
        let b = labels.len;
        if b == 0 || hidden == 0 {
            return Err(CoreError::EmptyBatch { op: "loss" });
        }
        Self::check_row_major("loss", "logits", logits)?;
        if !logits.len.is_multiple_of(b) || logits.len == 0 {
            return Err(shape(
                "loss",
                format!("logits of {b} x classes"),
                logits.len,
            ));
        }
        let c = logits.len / b;
        for cnt in counts {
            Self::check_tensor("loss", "spike counts", b * hidden, cnt)?;
        }
        let dev = &self.dev;
        let mut grad_logits = self.f32_buf(b * c, "grad logits")?;
        let mut partial = dev.alloc::<f64>(b * 6, "loss partials")?;
        let mut u1 = self.f32_buf(b, "regulariser grad")?;
        let mut l1 = self.f32_buf(b * hidden, "regulariser grad")?;
        let mut u2 = self.f32_buf(b, "regulariser grad")?;
        let mut l2 = self.f32_buf(b * hidden, "regulariser grad")?;
        let mut terms = self.f32_buf(s3gd_core::backend::terms::LEN, "loss terms")?;
        let (bi, ci, ni) = (
            int("batch", b)?,
            int("classes", c)?,
            int("neurons", hidden)?,
        );
        let (uw, mr, lw, mc) = (
            loss.upper_weight as f32,
            loss.max_rate as f32,
            loss.lower_weight as f32,
            loss.min_count as f32,
        );
        let threads = 256u32;
        let mut l = dev.stream.launch_builder(&dev.kernels.loss_sample);
        l.arg(&logits.buf.slice)
            .arg(&labels.buf.slice)
            .arg(&counts[0].buf.slice)
            .arg(&counts[1].buf.slice)
            .arg(&bi)
            .arg(&ci)
            .arg(&ni)
            .arg(&uw)
            .arg(&mr)
            .arg(&lw)
            .arg(&mc)
            .arg(&mut grad_logits.buf.slice)
            .arg(&mut partial.slice)
            .arg(&mut u1.buf.slice)
            .arg(&mut l1.buf.slice)
            .arg(&mut u2.buf.slice)
            .arg(&mut l2.buf.slice);
        let cfg = LaunchConfig {
            grid_dim: (bi as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * 8,
        };
        // SAFETY: logits B*C, labels B (each < C, checked at upload), counts B*N, outputs sized above;
        // block b writes row b; shared memory holds one double per thread.
        unsafe { self.dev.launch("loss_sample_f32", &mut l, cfg) }?;
        let mut l = dev.stream.launch_builder(&dev.kernels.loss_reduce);
        l.arg(&partial.slice).arg(&bi).arg(&mut terms.buf.slice);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * 8,
        };
        // SAFETY: partial holds B*6 doubles; terms 7 floats.
        unsafe { self.dev.launch("loss_reduce_f32", &mut l, cfg) }?;
        Ok(LossOutput {
            terms,
            grad_logits,
            reg: [
                RegGrad {
                    per_sample: u1,
                    per_neuron: l1,
                },
                RegGrad {
                    per_sample: u2,
                    per_neuron: l2,
                },
            ],
        })
    }

    fn readout_backward(
        &self,
        tape: &CudaReadoutTape,
        hidden: &CudaSpikes,
        weights: &CudaTensor,
        grad_logits: &CudaTensor,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let spec = &tape.spec;
        let (b, t, n, c) = (tape.batch, tape.steps, spec.inputs, spec.classes);
        if hidden.batch != b || hidden.steps != t || hidden.units != n {
            return Err(shape(
                "readout_backward",
                (b, t, n),
                (hidden.batch, hidden.steps, hidden.units),
            ));
        }
        Self::check_tensor("readout_backward", "weights", n * c, weights)?;
        Self::check_tensor("readout_backward", "grad_logits", b * c, grad_logits)?;
        let SpikeLayout::Bits { cols, .. } = &hidden.layout else {
            return Err(CoreError::Spikes(
                "the CUDA readout reads hidden-layer spikes".into(),
            ));
        };
        let dev = &self.dev;
        let mut g = self.f32_buf(b * t * c, "readout adjoint")?;
        let mut dw = self.f32_buf(n * c, "readout weight grad")?;
        let (bi, ti, ni, ci) = (
            int("batch", b)?,
            int("steps", t)?,
            int("neurons", n)?,
            int("classes", c)?,
        );
        let (beta, gain) = (spec.beta as f32, (1.0 - spec.beta) as f32);
        let mode_sum = i32::from(spec.mode == Readout::Sum);
        let mut l = dev.stream.launch_builder(&dev.kernels.readout_bwd_g);
        l.arg(&grad_logits.buf.slice)
            .arg(&tape.argmax.slice)
            .arg(&bi)
            .arg(&ti)
            .arg(&ci)
            .arg(&beta)
            .arg(&gain)
            .arg(&mode_sum)
            .arg(&mut g.buf.slice);
        // SAFETY: grad_logits and argmax B*C, g B*T*C; one thread per (b, c).
        unsafe {
            self.dev
                .launch("readout_bwd_g_f32", &mut l, grid_for(b * c, 128))
        }?;
        let mut l = dev.stream.launch_builder(&dev.kernels.readout_bwd_w);
        l.arg(&cols.slice)
            .arg(&g.buf.slice)
            .arg(&bi)
            .arg(&ti)
            .arg(&ni)
            .arg(&ci)
            .arg(&mut dw.buf.slice);
        let threads = 256u32;
        let cfg = LaunchConfig {
            grid_dim: (ni as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * 4 * c.min(32) as u32,
        };
        // SAFETY: block per neuron j; cols B*N*words(T), g B*T*C, dw N*C; shared memory holds
        // blockDim * min(C, 32) floats.
        unsafe { self.dev.launch("readout_bwd_w_f32", &mut l, cfg) }?;
        Ok((dw, g))
    }

    fn readout_spike_grad(
        &self,
        g: &CudaTensor,
        weights: &CudaTensor,
        reg: &RegGrad<Self>,
        layout: &CudaTape,
    ) -> Result<CudaTensor> {
        let (b, t, n) = (layout.batch, layout.steps, layout.neurons);
        let readout = ReadoutSpikeGrad { g, weights, reg };
        let c = Self::check_readout_operands("readout_spike_grad", &readout, (b, t, n))?;
        let out_len = layout.grad_len()?;
        let mut out = self.f32_buf(out_len, "spike grad")?;
        let (bi, ti, ni, ci) = (
            int("batch", b)?,
            int("steps", t)?,
            int("neurons", n)?,
            int("classes", c)?,
        );
        let dev = &self.dev;
        match &layout.kept {
            TapeKept::Sparse { .. } => {
                let entries = ActiveEntries::of(layout)?;
                let mut l = dev
                    .stream
                    .launch_builder(&dev.kernels.readout_spike_grad_sparse);
                l.arg(&g.buf.slice)
                    .arg(&weights.buf.slice)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&ni)
                    .arg(&ci)
                    .arg(&reg.per_sample.buf.slice)
                    .arg(&reg.per_neuron.buf.slice);
                entries.push_slots(&mut l);
                l.arg(&mut out.buf.slice);
                // SAFETY: one thread per tape slot (B*words(N)*cap); entries decode to t < T, j < N.
                unsafe {
                    self.dev.launch(
                        "readout_spike_grad_sparse_f32",
                        &mut l,
                        grid_for(out_len, BLOCK),
                    )
                }?;
            }
            _ => {
                // The kernel widens W3 and g into shared memory: up to READOUT_GRAD_MAX_C classes.
                let staged = c <= READOUT_GRAD_MAX_C;
                let (function, name) = if staged {
                    (
                        &dev.kernels.readout_spike_grad_dense,
                        "readout_spike_grad_dense_f32",
                    )
                } else {
                    (
                        &dev.kernels.readout_spike_grad_dense_any_c,
                        "readout_spike_grad_dense_any_c_f32",
                    )
                };
                let mut l = dev.stream.launch_builder(function);
                l.arg(&g.buf.slice)
                    .arg(&weights.buf.slice)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&ni)
                    .arg(&ci)
                    .arg(&reg.per_sample.buf.slice)
                    .arg(&reg.per_neuron.buf.slice)
                    .arg(&mut out.buf.slice);
                let cfg = if staged {
                    let mut cfg = grid_rows(
                        (b * t).div_ceil(READOUT_GRAD_ROWS),
                        n,
                        READOUT_GRAD_THREADS as u32,
                    );
                    cfg.shared_mem_bytes = readout_grad_shared_bytes(c);
                    cfg
                } else {
                    grid_rows(b * t, n, BLOCK)
                };
                // SAFETY: a thread per j of each (b, t) row, bounds-checked; g B*T*C, weights N*C,
                // out B*T*N; shared memory as readout_grad_shared_bytes lays it out (<= 37 KiB).
                unsafe { self.dev.launch(name, &mut l, cfg) }?;
            }
        }
        Ok(out)
    }

    fn lif_backward(
        &self,
        tape: &CudaTape,
        input: &CudaSpikes,
        weights: &CudaTensor,
        grad_spikes: &CudaTensor,
        below: Option<(&CudaTape, &RegGrad<Self>)>,
    ) -> Result<(CudaTensor, Option<CudaTensor>)> {
        Self::check_backward_operands(tape, input, weights, below)?;
        Self::check_tensor("lif_backward", "grad_spikes", tape.grad_len()?, grad_spikes)?;
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let ni = input.units;
        let dev = &self.dev;
        let k = &dev.kernels;
        let (bi, ti, nii, nn) = (
            int("batch", b)?,
            int("steps", t)?,
            int("inputs", ni)?,
            int("neurons", n)?,
        );
        match &tape.kept {
            TapeKept::Nothing => unreachable!("grad_len rejected a tape that kept nothing"),
            TapeKept::Dense { vmt, band } => self.dense_backward(
                tape,
                input,
                weights,
                (vmt, *band),
                SpikeGradIn::Laid(grad_spikes),
                below,
            ),
            TapeKept::Sparse { .. } => {
                let entries = ActiveEntries::of(tape)?;
                let dw_from_adjoint = matches!(input.layout, SpikeLayout::Bits { .. })
                    && self.weight_grad_from_adjoint_allowed()
                    && t <= MAX_SPARSE_STEPS;
                let tiled_ok = dw_from_adjoint
                    && below.is_some_and(|(below_tape, _)| self.tiled_fits(tape, below_tape));
                let path = below.map(|(below_tape, _)| {
                    self.input_grad_path(tape, below_tape, dw_from_adjoint, tiled_ok)
                });
                // Tiled: dS_in pair by pair on the side stream, beside dW from the dense later
                // adjoint.
                if let (Some((below_tape, reg)), SpikeLayout::Bits { cols, .. }, true) =
                    (below, &input.layout, path == Some(InputGradPath::Tiled))
                {
                    let mut out = self.below_grad_buf(below_tape)?;
                    let beside = self.tiled_beside.load(std::sync::atomic::Ordering::Relaxed);
                    let Some(warps) = self.column_warps_for(tape, ni) else {
                        // dW from the dense later adjoint on the main stream, the tiled kernel
                        // beside it on the side stream.
                        let (flat, scratch) =
                            self.flat_entries(tape, grad_spikes, false, below_tape)?;
                        let dw = self
                            .input_grad_by_tiles(
                                tape, &flat, weights, below_tape, reg, &mut out, beside, &scratch,
                            )
                            .and_then(|()| {
                                let adjoint = self.later_adjoint(tape, grad_spikes, false)?;
                                self.weight_grad_from_adjoint(
                                    tape,
                                    &input.layout,
                                    ni,
                                    &adjoint,
                                    true,
                                )
                            });
                        // Joined whatever happened, so that nothing the side stream reads is
                        // freed early.
                        dev.join_side()?;
                        drop((flat, scratch));
                        return Ok((dw?, Some(out)));
                    };
                    // dW by columns: its spiking units listed on the side stream beside the flat
                    // list, then dW there beside the tiled kernel on the main stream (forked after
                    // the flat list, before the tiled kernel is queued). The two big kernels take
                    // turns on the multiprocessors (each fills the device), so the tiled kernel
                    // starts right after the flat list, with no wait on an event (v102).
                    let columns = self.alloc_columns(tape, ni, warps)?;
                    let mut flat_and_scratch = None;
                    let queued = (|| {
                        if beside {
                            dev.fork_side()?;
                        }
                        self.list_spiking_units(tape, cols, beside, &columns)?;
                        let (flat, scratch) = flat_and_scratch.insert(self.flat_entries(
                            tape,
                            grad_spikes,
                            true,
                            below_tape,
                        )?);
                        if beside {
                            dev.fork_side()?;
                        }
                        self.input_grad_by_tiles(
                            tape, flat, weights, below_tape, reg, &mut out, false, scratch,
                        )?;
                        self.weight_grad_by_columns(tape, flat, cols, beside, &columns)
                    })();
                    // Joined whatever happened, so that nothing the side stream reads is freed
                    // early.
                    dev.join_side()?;
                    queued?;
                    drop(flat_and_scratch);
                    let ColumnBuffers { dw_t, .. } = columns;
                    return Ok((CudaTensor::stored_transposed(dw_t, ni, n), Some(out)));
                }
                // With dS_in from the dense later adjoint G and hidden spikes as input, dW comes
                // from G too: one row of G per input spike instead of a trace walk per entry.
                if let (Some((below_tape, reg)), true) = (below, dw_from_adjoint) {
                    if path == Some(InputGradPath::Sampled) {
                        let mut out = self.below_grad_buf(below_tape)?;
                        let sampled = self.input_grad_by_sampling(
                            tape,
                            grad_spikes,
                            weights,
                            below_tape,
                            reg,
                            &mut out,
                            false,
                        )?;
                        let dw = self.weight_grad_from_adjoint(
                            tape,
                            &input.layout,
                            ni,
                            &sampled.adjoint,
                            false,
                        )?;
                        return Ok((dw, Some(out)));
                    }
                }
                // The first layer (no dS_in) over the uploaded input: dW from the dense later
                // adjoint, one row of G per input event, where that is predicted faster than the
                // trace kernel's walk per active entry (v94).
                if below.is_none() && self.input_layer_dw_from_adjoint(tape, input) {
                    let adjoint = self.later_adjoint(tape, grad_spikes, false)?;
                    let dw =
                        self.weight_grad_from_adjoint(tape, &input.layout, ni, &adjoint, false)?;
                    return Ok((dw, None));
                }
                // Otherwise dS_in first: the pairs kernel and the sampled path run on the side
                // stream, beside the weight kernels (each alone fills only part of the device).
                let mut on_side = false;
                // What the side stream reads and nothing else holds, freed after the join.
                let mut keep_alive = None;
                let mut input_grad = || -> Result<Option<CudaTensor>> {
                    Ok(match below {
                        None => None,
                        Some((below_tape, reg)) => {
                            let mut out = self.below_grad_buf(below_tape)?;
                            if path == Some(InputGradPath::Gemm) {
                                self.input_grad_by_gemm_path(
                                    tape,
                                    grad_spikes,
                                    weights,
                                    below_tape,
                                    reg,
                                    &mut out,
                                )?;
                            } else if path == Some(InputGradPath::Sampled) {
                                on_side = true;
                                keep_alive = Some(self.input_grad_by_sampling(
                                    tape,
                                    grad_spikes,
                                    weights,
                                    below_tape,
                                    reg,
                                    &mut out,
                                    true,
                                )?);
                            } else {
                                let below_entries = ActiveEntries::of(below_tape)?;
                                let threads = 256usize;
                                let chunk = 2048usize;
                                let base_words = t + 3 * chunk + words(n) + 1 + words(ni) + 1;
                                // All weights go to shared memory when they fit and the pairs are
                                // many: every gather of the inner loop then stays on chip.
                                let limit = dev.shared_memory_limit();
                                // Staged rows are n | 1 apart (an odd stride: no bank conflicts).
                                let staged_words = ni * (n | 1);
                                let stage_w = self.stage_weights(tape, below_tape)
                                    && (base_words + staged_words) * 4 <= limit;
                                let shared_bytes =
                                    4 * (base_words + if stage_w { staged_words } else { 0 });
                                dev.allow_shared_memory(&k.s3gd_bwd_input, shared_bytes)?;
                                let cfg = LaunchConfig {
                                    grid_dim: (bi as u32, 1, 1),
                                    block_dim: (threads as u32, 1, 1),
                                    shared_mem_bytes: shared_bytes as u32,
                                };
                                let stage_w_i = i32::from(stage_w);
                                let chunk_i = int("chunk", chunk)?;
                                dev.fork_side()?;
                                on_side = true;
                                let mut l = dev.side.launch_builder(&k.s3gd_bwd_input);
                                entries.push_with_grad(&mut l, grad_spikes);
                                l.arg(&nn);
                                below_entries.push_slots(&mut l);
                                l.arg(&nii)
                                    .arg(&weights.buf.slice)
                                    .arg(&bi)
                                    .arg(&ti)
                                    .arg(&tape.beta)
                                    .arg(&reg.per_sample.buf.slice)
                                    .arg(&reg.per_neuron.buf.slice)
                                    .arg(&chunk_i)
                                    .arg(&stage_w_i)
                                    .arg(&mut out.buf.slice);
                                // SAFETY: block per sample; every slot index stays below its segment's
                                // count and capacity; W holds NI*N floats; shared memory is sized as the
                                // kernel lays it out and allowed for the function.
                                // The main stream joins the side stream before returning.
                                unsafe {
                                    self.dev.launch_on(true, "s3gd_bwd_input_f32", &mut l, cfg)
                                }?;
                            }
                            Some(out)
                        }
                    })
                };
                let ds_in = input_grad();
                let weight_grad = || -> Result<CudaTensor> {
                    let layout = WeightGradLayout::new(b, n, ni);
                    let groups = layout.groups;
                    let mut partial = dev.alloc::<f32>(groups * ni * n, "weight grad partials")?;
                    let groups_i = int("groups", groups)?;
                    let per_group_i = int("samples per group", layout.per_group)?;
                    // The kernel's shared memory (s3gd_bwd.cu), then each trace source's part.
                    let base_words = layout.shared_words();
                    let (function, name, source_words) = match &input.layout {
                        SpikeLayout::Bits { .. } => {
                            if t > MAX_SPARSE_STEPS {
                                return Err(CudaError::TooLarge {
                                    what: "time steps of the sparse backward over hidden spikes",
                                    value: t,
                                    limit: MAX_SPARSE_STEPS,
                                }
                                .into());
                            }
                            (
                                &k.s3gd_bwd_weights_bits,
                                "s3gd_bwd_weights_bits_f32",
                                t + words(t) * layout.chunk_threads,
                            )
                        }
                        SpikeLayout::Events { .. } => {
                            (&k.s3gd_bwd_weights_events, "s3gd_bwd_weights_events_f32", t)
                        }
                    };
                    let mut l = dev.stream.launch_builder(function);
                    input.layout.push_by_unit(&mut l);
                    entries.push_with_grad(&mut l, grad_spikes);
                    l.arg(&bi)
                        .arg(&ti)
                        .arg(&nii)
                        .arg(&nn)
                        .arg(&groups_i)
                        .arg(&per_group_i)
                        .arg(&tape.beta)
                        .arg(&mut partial.slice);
                    // SAFETY: the input source matches its kernel (bits: B*NI*words(T) words; events:
                    // B*NI+1 offsets and a time < T per event); tape slots B*words(N)*cap; partial
                    // groups*NI*N; shared memory sized as the kernel lays it out.
                    unsafe { dev.launch(name, &mut l, layout.config(base_words + source_words)) }?;
                    self.sum_weight_partials(&partial, groups, ni * n)
                };
                let dw = weight_grad();
                // Joined whatever happened, so that nothing the side stream reads is freed early.
                if on_side {
                    dev.join_side()?;
                }
                drop(keep_alive);
                let (dw, ds_in) = (dw?, ds_in?);
                Self::check_tensor_len("lif_backward", "weight grad", ni * n, &dw)?;
                Ok((dw, ds_in))
            }
        }
    }

    fn lif_backward_float(
        &self,
        tape: &CudaTape,
        input: &CudaTensor,
        weights: &CudaTensor,
        grad_spikes: &CudaTensor,
    ) -> Result<CudaTensor> {
        let (b, t, n) = (tape.batch, tape.steps, tape.neurons);
        let rows = b * t;
        let ni = Self::check_float_backward_operands(tape, input, weights)?;
        Self::check_tensor(
            "lif_backward_float",
            "grad_spikes",
            tape.grad_len()?,
            grad_spikes,
        )?;
        let dev = &self.dev;
        let (bi, ti, nii, nn) = (
            int("batch", b)?,
            int("steps", t)?,
            int("inputs", ni)?,
            int("neurons", n)?,
        );
        match &tape.kept {
            TapeKept::Nothing => unreachable!("grad_len rejected a tape that kept nothing"),
            TapeKept::Dense { vmt, band } => {
                self.dense_backward_float(tape, (vmt, *band), input, SpikeGradIn::Laid(grad_spikes))
            }
            TapeKept::Sparse { cap, .. } => {
                let entries = ActiveEntries::of(tape)?;
                let mut trace = dev.alloc::<f32>(rows * ni, "input trace")?;
                let beta = tape.beta as f32;
                let mut l = dev.stream.launch_builder(&dev.kernels.input_trace);
                l.arg(&input.buf.slice)
                    .arg(&bi)
                    .arg(&ti)
                    .arg(&nii)
                    .arg(&beta)
                    .arg(&mut trace.slice);
                // SAFETY: input and trace hold B*T*NI floats; one thread per (b, i).
                unsafe { dev.launch("input_trace_f32", &mut l, grid_for(b * ni, BLOCK)) }?;
                let tile_steps = float_tile_steps(t, dev.shared_memory_limit());
                let path = match self
                    .float_weight_grad_path
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    1 => FloatWeightGradPath::PerEntry,
                    2 => FloatWeightGradPath::Gemm,
                    3 => FloatWeightGradPath::Tiles,
                    _ => {
                        // Entries as last seen for this shape; before any, every slot of the
                        // tape (an upper bound).
                        let active = self
                            .seen_activity(tape)
                            .map_or(entries.idx.len() as f64, |seen| seen.active as f64);
                        float_weight_grad_choice(
                            active,
                            b,
                            rows,
                            n,
                            ni,
                            dev.gemm_precision(),
                            tile_steps.is_some(),
                        )
                    }
                };
                if path == FloatWeightGradPath::Gemm {
                    let layout = self.float_weight_grad_layout();
                    let dense = self.scatter_active(tape, grad_spikes, layout)?;
                    return self.float_weight_grad(
                        "GEMM dW (float, sparse)",
                        &dense,
                        layout,
                        &trace,
                        rows,
                        n,
                        ni,
                    );
                }
                if path == FloatWeightGradPath::Tiles {
                    // A forced path where not even the fewest steps fit is the launch's error to
                    // report.
                    let chunk_steps = tile_steps.unwrap_or(FLOAT_TILE_MIN_STEPS);
                    let chunk_steps_i = int("chunk steps", chunk_steps)?;
                    let segments = b * words(n);
                    let slots = segments * *cap;
                    let bins = t.div_ceil(chunk_steps) * 32;
                    let bins_i = int("run bins", bins)?;
                    // (row offset, d) pairs: two u32 words a slot, and FLOAT_RUNS_PAD slots past
                    // the last segment for the tiles kernel's loads ahead.
                    let mut runs =
                        dev.alloc::<u32>(2 * (slots + FLOAT_RUNS_PAD), "entry runs by neuron")?;
                    let mut starts = dev.alloc::<u32>((bins + 1) * segments, "run starts")?;
                    let segments_i = int("segments", segments)?;
                    let runs_shared = (BLOCK as usize / 32) * bins * 4;
                    dev.allow_shared_memory(&dev.kernels.neuron_runs, runs_shared)?;
                    let mut l = dev.stream.launch_builder(&dev.kernels.neuron_runs);
                    entries.push_with_grad(&mut l, grad_spikes);
                    l.arg(&segments_i)
                        .arg(&chunk_steps_i)
                        .arg(&bins_i)
                        .arg(&mut runs.slice)
                        .arg(&mut starts.slice);
                    let cfg = LaunchConfig {
                        shared_mem_bytes: runs_shared as u32,
                        ..grid_for(32 * segments, BLOCK)
                    };
                    // SAFETY: tape slots segments*cap; runs two words a slot; starts bins + 1 a
                    // segment; a warp per segment, BLOCK / 32 warps a block with bins counts each
                    // in shared memory.
                    unsafe { dev.launch("neuron_runs_f32", &mut l, cfg) }?;
                    let mut dw = dev.alloc::<f32>(ni * n, "weight grad")?;
                    let mut l = dev
                        .stream
                        .launch_builder(&dev.kernels.float_weight_grad_tiles);
                    let trace_map = {
                        use cudarc::driver::DevicePtr;
                        let (ptr, _sync) = trace.slice.device_ptr(&dev.stream);
                        float_tile_trace_map(dev.arch, ptr, b * t, ni, chunk_steps)?
                    };
                    let trace_map_set = i32::from(trace_map.is_some());
                    let trace_map = trace_map.unwrap_or(TensorMapArg([0; 16]));
                    l.arg(&trace.slice)
                        .arg(&runs.slice)
                        .arg(&starts.slice)
                        .arg(&entries.cap)
                        .arg(&bi)
                        .arg(&ti)
                        .arg(&nii)
                        .arg(&nn)
                        .arg(&chunk_steps_i)
                        .arg(&mut dw.slice)
                        .arg(&trace_map)
                        .arg(&trace_map_set);
                    let shared_bytes = float_tile_shared_bytes(chunk_steps);
                    dev.allow_shared_memory(&dev.kernels.float_weight_grad_tiles, shared_bytes)?;
                    let cfg = LaunchConfig {
                        grid_dim: (
                            words(n).div_ceil(FLOAT_TILE_SEGMENTS) as u32,
                            ni.div_ceil(FLOAT_TILE_INPUTS) as u32,
                            1,
                        ),
                        block_dim: (512, 1, 1),
                        shared_mem_bytes: shared_bytes as u32,
                    };
                    // SAFETY: trace B*T*NI floats; runs and starts as neuron_runs_f32 wrote
                    // them; dw NI*N floats, every element written by one thread (the grid covers
                    // all segments and inputs); shared memory as the kernel lays it out.
                    unsafe { dev.launch("float_weight_grad_tiles_f32", &mut l, cfg) }?;
                    return Ok(CudaTensor::row_major(dw, ni * n));
                }
                let layout = WeightGradLayout::new(b, n, ni);
                let mut partial =
                    dev.alloc::<f32>(layout.groups * ni * n, "weight grad partials")?;
                let groups_i = int("groups", layout.groups)?;
                let mut l = dev
                    .stream
                    .launch_builder(&dev.kernels.s3gd_bwd_weights_trace);
                l.arg(&trace.slice);
                entries.push_with_grad(&mut l, grad_spikes);
                l.arg(&bi)
                    .arg(&ti)
                    .arg(&nii)
                    .arg(&nn)
                    .arg(&groups_i)
                    .arg(&mut partial.slice);
                let shared_words = layout.shared_words();
                // SAFETY: trace B*T*NI floats; tape slots B*words(N)*cap; partial groups*NI*N;
                // shared memory sized as the kernel lays it out.
                unsafe {
                    dev.launch(
                        "s3gd_bwd_weights_trace_f32",
                        &mut l,
                        layout.config(shared_words),
                    )
                }?;
                drop(trace);
                self.sum_weight_partials(&partial, layout.groups, ni * n)
            }
        }
    }

    fn lif_backward_from_readout(
        &self,
        tape: &CudaTape,
        input: &CudaSpikes,
        weights: &CudaTensor,
        grad_spikes: ReadoutSpikeGrad<'_, Self>,
        below: Option<(&CudaTape, &RegGrad<Self>)>,
    ) -> Result<(CudaTensor, Option<CudaTensor>)> {
        let TapeKept::Dense { vmt, band } = &tape.kept else {
            let laid = grad_spikes.laid_out(self, tape)?;
            return self.lif_backward(tape, input, weights, &laid, below);
        };
        Self::check_backward_operands(tape, input, weights, below)?;
        let shape = (tape.batch, tape.steps, tape.neurons);
        let classes =
            Self::check_readout_operands("lif_backward_from_readout", &grad_spikes, shape)?;
        self.dense_backward(
            tape,
            input,
            weights,
            (vmt, *band),
            SpikeGradIn::Readout(&grad_spikes, classes),
            below,
        )
    }

    fn lif_backward_float_from_readout(
        &self,
        tape: &CudaTape,
        input: &CudaTensor,
        weights: &CudaTensor,
        grad_spikes: ReadoutSpikeGrad<'_, Self>,
    ) -> Result<CudaTensor> {
        let TapeKept::Dense { vmt, band } = &tape.kept else {
            let laid = grad_spikes.laid_out(self, tape)?;
            return self.lif_backward_float(tape, input, weights, &laid);
        };
        Self::check_float_backward_operands(tape, input, weights)?;
        let shape = (tape.batch, tape.steps, tape.neurons);
        let classes =
            Self::check_readout_operands("lif_backward_float_from_readout", &grad_spikes, shape)?;
        self.dense_backward_float(
            tape,
            (vmt, *band),
            input,
            SpikeGradIn::Readout(&grad_spikes, classes),
        )
    }

    fn adam(
        &self,
        param: &mut CudaTensor,
        grad: &CudaTensor,
        moment1: &mut CudaTensor,
        moment2: &mut CudaTensor,
        step: u64,
        adam: &AdamSpec,
    ) -> Result<()> {
        let n = param.len;
        Self::check_row_major("adam", "parameter", param)?;
        Self::check_tensor_len("adam", "grad", n, grad)?;
        Self::check_tensor("adam", "moment1", n, moment1)?;
        Self::check_tensor("adam", "moment2", n, moment2)?;
        if step == 0 {
            return Err(CoreError::Config {
                name: "step",
                value: "0".into(),
                why: "Adam steps count from 1",
            });
        }
        let k = step.min(i32::MAX as u64) as i32;
        let bias1 = 1.0 - adam.beta1.powi(k);
        let bias2 = 1.0 - adam.beta2.powi(k);
        let args = [
            adam.beta1 as f32,
            adam.beta2 as f32,
            (1.0 - adam.beta1) as f32,
            (1.0 - adam.beta2) as f32,
            (adam.learning_rate / bias1) as f32,
            (1.0 / bias2.sqrt()) as f32,
            adam.eps as f32,
        ];
        let kernels = &self.dev.kernels;
        // A plain gradient takes a thread per element; one stored transposed (dW by columns, a
        // row per column of dW) is read through 32 x 32 tiles turned in shared memory.
        // `dims`: the transposed kernel's (rows, cols) arguments.
        let (function, name, cfg, dims) = match grad.stored_transposed {
            None => (&kernels.adam, "adam_f32", grid_for(n, BLOCK), None),
            Some((rows, cols)) => (
                &kernels.adam_transposed_grad,
                "adam_transposed_grad_f32",
                LaunchConfig {
                    grid_dim: (cols.div_ceil(32) as u32, rows.div_ceil(32) as u32, 1),
                    block_dim: (32, 8, 1),
                    shared_mem_bytes: 0,
                },
                Some((int("rows", rows)?, int("columns", cols)?)),
            ),
        };
        let mut l = self.dev.stream.launch_builder(function);
        l.arg(&mut param.buf.slice)
            .arg(&grad.buf.slice)
            .arg(&mut moment1.buf.slice)
            .arg(&mut moment2.buf.slice);
        match &dims {
            None => l.arg(&n),
            Some((rows_i, cols_i)) => l.arg(rows_i).arg(cols_i),
        };
        for a in &args {
            l.arg(a);
        }
        // SAFETY: all four buffers hold n floats (checked above; a transposed tensor's len is
        // rows*cols). Plain: one thread per element, bounds-checked. Transposed: the grid's tiles
        // cover the matrix (rows < COLUMN_MAX_INPUTS, so rows / 32 fits the grid's y) and every
        // element is bounds-checked.
        unsafe { self.dev.launch(name, &mut l, cfg) }?;
        Ok(())
    }

    fn step_scalars(
        &self,
        terms: &CudaTensor,
        tapes: [&CudaTape; 2],
        _spikes: [&CudaSpikes; 2],
    ) -> Result<StepScalars> {
        Self::check_row_major("step_scalars", "terms", terms)?;
        let n_terms = terms.len;
        let mut out = self.dev.alloc::<u32>(n_terms + 6, "step scalars")?;
        let n_terms_i = int("terms", n_terms)?;
        let mut l = self
            .dev
            .stream
            .launch_builder(&self.dev.kernels.gather_scalars);
        l.arg(&terms.buf.slice)
            .arg(&n_terms_i)
            .arg(&tapes[0].stats.slice)
            .arg(&tapes[1].stats.slice)
            .arg(&mut out.slice);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (n_terms.max(3).div_ceil(32) as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: terms holds n_terms floats, each stats buffer 3 words, out n_terms + 6 words.
        unsafe { self.dev.launch("gather_scalars_f32", &mut l, cfg) }?;
        let raw = self.dev.download(&out, n_terms + 6)?;
        let terms = raw[..n_terms]
            .iter()
            .map(|&bits| f64::from(f32::from_bits(bits)))
            .collect();
        let mut stats = [TapeStats::default(); 2];
        let mut spikes = [0u64; 2];
        for (layer, tape) in tapes.iter().enumerate() {
            let s = &raw[n_terms + 3 * layer..n_terms + 3 * layer + 3];
            spikes[layer] = u64::from(s[0]);
            stats[layer] = self.stats_from(tape, [s[0], s[1], s[2]]);
        }
        Ok(StepScalars {
            terms,
            tapes: stats,
            spikes,
        })
    }

    fn tape_stats(&self, tape: &CudaTape) -> Result<TapeStats> {
        let raw = self.dev.download(&tape.stats, 3)?;
        Ok(self.stats_from(tape, [raw[0], raw[1], raw[2]]))
    }

    fn download_tape(&self, tape: &CudaTape) -> Result<HostTape> {
        Ok(match &tape.kept {
            TapeKept::Nothing => HostTape::Nothing,
            TapeKept::Dense { vmt, band } => HostTape::Dense {
                v_minus_theta: self
                    .dev
                    .download(vmt, tape.cells())?
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                band: *band,
            },
            TapeKept::Sparse {
                band,
                cap,
                idx,
                val,
                count,
            } => {
                let slots = self.sparse_slots(tape, *cap, idx, count)?;
                let values = self.dev.download(val, val.len())?;
                HostTape::Sparse {
                    entries: slots
                        .iter()
                        .map(|&(slot, flat)| (flat, f64::from(values[slot])))
                        .collect(),
                    band: *band,
                }
            }
        })
    }

    fn spike_grad_to_host(&self, layout: &CudaTape, grad: &CudaTensor) -> Result<Vec<f64>> {
        Self::check_tensor(
            "spike_grad_to_host",
            "spike gradient",
            layout.grad_len()?,
            grad,
        )?;
        let values = self.dev.download(&grad.buf, grad.len)?;
        Ok(match &layout.kept {
            TapeKept::Sparse {
                cap, idx, count, ..
            } => {
                let mut dense = vec![0.0; layout.cells()];
                for (slot, flat) in self.sparse_slots(layout, *cap, idx, count)? {
                    dense[flat as usize] = f64::from(values[slot]);
                }
                dense
            }
            _ => values.into_iter().map(f64::from).collect(),
        })
    }

    fn mark(&self) -> Result<CudaMark> {
        let event = self
            .dev
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::driver("cuEventRecord"))?;
        Ok(CudaMark(event))
    }

    fn elapsed_ms(&self, from: &CudaMark, to: &CudaMark) -> Result<f64> {
        to.0.synchronize()
            .map_err(CudaError::driver("cuEventSynchronize"))?;
        Ok(f64::from(
            from.0
                .elapsed_ms(&to.0)
                .map_err(CudaError::driver("cuEventElapsedTime"))?,
        ))
    }

    fn synchronize(&self) -> Result<()> {
        self.dev
            .stream
            .synchronize()
            .map_err(CudaError::driver("cuStreamSynchronize"))?;
        Ok(())
    }
}

impl CudaBackend {
    /// Tape statistics from the forward kernel's [spikes, active, largest segment]; adapts the
    /// sparse capacity to what was seen.
    fn stats_from(&self, tape: &CudaTape, raw: [u32; 3]) -> TapeStats {
        let input = tape.input_bytes as u64;
        let cells = tape.cells() as u64;
        match &tape.kept {
            TapeKept::Nothing => TapeStats {
                cells,
                kept_bytes: input,
                ..TapeStats::default()
            },
            TapeKept::Dense { vmt, .. } => TapeStats {
                active: cells,
                cells,
                kept_bytes: vmt.bytes() as u64 + input,
                overflowed: false,
            },
            TapeKept::Sparse {
                cap,
                idx,
                val,
                count,
                ..
            } => {
                let largest = raw[2] as usize;
                self.update_cap(tape, largest, *cap);
                self.last_active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        tape.activity_key(),
                        SeenActivity {
                            active: u64::from(raw[1]),
                            spikes: u64::from(raw[0]),
                        },
                    );
                TapeStats {
                    active: u64::from(raw[1]),
                    cells,
                    kept_bytes: (idx.bytes() + val.bytes() + count.bytes()) as u64 + input,
                    overflowed: largest > *cap,
                }
            }
        }
    }
    /// (slot, flat index b*T*N + t*N + j) of every filled slot of a sparse tape, segment by segment.
    fn sparse_slots(
        &self,
        tape: &CudaTape,
        cap: usize,
        idx: &DeviceBuf<u16>,
        count: &DeviceBuf<u32>,
    ) -> Result<Vec<(usize, u32)>> {
        let wn = words(tape.neurons);
        let entries = self.dev.download(idx, idx.len())?;
        let counts = self.dev.download(count, tape.batch * wn)?;
        let mut out = Vec::new();
        for (seg, &c) in counts.iter().enumerate() {
            let (b, tile) = (seg / wn, seg % wn);
            for k in 0..(c as usize).min(cap) {
                let slot = seg * cap + k;
                let e = entries[slot] as usize;
                let (t, j) = (e >> 5, tile * 32 + (e & 31));
                out.push((slot, ((b * tape.steps + t) * tape.neurons + j) as u32));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_tiles_take_a_tensor_map_only_where_tensor_copies_can_read_the_trace() {
        // Each of these is decided before the driver is asked (no GPU here).
        let aligned = 1 << 20;
        assert!(float_tile_trace_map("compute_80", aligned, 8000, 4096, 100)
            .unwrap()
            .is_none());
        assert!(float_tile_trace_map("compute_89", aligned, 8000, 4096, 100)
            .unwrap()
            .is_none());
        // Rows not a multiple of 16 bytes, or a trace not 16-byte aligned: cp.async instead.
        assert!(float_tile_trace_map("compute_90", aligned, 8000, 4094, 100)
            .unwrap()
            .is_none());
        assert!(
            float_tile_trace_map("compute_90", aligned + 4, 8000, 4096, 100)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn float_tile_chunks_are_equal_and_fit_shared_memory() {
        let h200 = 227 << 10;
        // The harness's T = 500 in five chunks of 100 (105 fit), Fashion-MNIST's T = 100 in one.
        assert_eq!(float_tile_steps(500, h200), Some(100));
        assert_eq!(float_tile_steps(100, h200), Some(100));
        // Not even the fewest steps fit: no tiles.
        assert_eq!(float_tile_steps(500, float_tile_shared_bytes(63)), None);
        for limit in [float_tile_shared_bytes(64), 160 << 10, h200, 1 << 20] {
            for steps in [1, 2, 63, 64, 65, 100, 111, 112, 113, 500, 2047] {
                let chunk = float_tile_steps(steps, limit).unwrap();
                assert!(float_tile_shared_bytes(chunk) <= limit, "{steps} {limit}");
                assert!(
                    (1..=FLOAT_TILE_MAX_STEPS).contains(&chunk),
                    "{steps} {limit}"
                );
                let chunks = steps.div_ceil(chunk);
                // The last chunk is short by less than one step per chunk.
                assert!(chunks * chunk - steps < chunks, "{steps} {limit}");
            }
        }
    }

    #[test]
    fn sample_chunks_are_equal_and_within_the_budget() {
        let gib = 1 << 30;
        // Fashion-MNIST, T = 100: N = 200 and N = 4096 take the batch whole; N = 16384 (13 MB a
        // sample) in four chunks of 64 rather than 81 + 81 + 81 + 13.
        assert_eq!(equal_sample_chunks(256, 100 * 200 * 8, gib), 256);
        assert_eq!(equal_sample_chunks(256, 100 * 4096 * 8, gib), 256);
        assert_eq!(equal_sample_chunks(256, 100 * 16384 * 8, gib), 64);
        for batch in [1, 2, 3, 7, 16, 255, 256, 1000] {
            for per_sample in [1, 3, 1000, 1 << 20, 1 << 31] {
                for budget in [0, 1, 1000, 1 << 24, gib] {
                    let chunk = equal_sample_chunks(batch, per_sample, budget);
                    assert!((1..=batch).contains(&chunk));
                    if per_sample <= budget {
                        assert!(
                            chunk * per_sample <= budget,
                            "{batch} {per_sample} {budget}"
                        );
                    } else {
                        assert_eq!(chunk, 1);
                    }
                    let chunks = batch.div_ceil(chunk);
                    // The last chunk is short by less than one sample per chunk.
                    assert!(
                        chunks * chunk - batch < chunks,
                        "{batch} {per_sample} {budget}"
                    );
                }
            }
        }
        assert_eq!(equal_sample_chunks(0, 8, gib), 1);
    }

    #[test]
    fn host_transpose_turns_rows_into_columns_and_back() {
        let (rows, cols) = (3, 5);
        let matrix: Vec<f32> = (0..rows * cols).map(|k| k as f32 * 0.5 - 3.0).collect();
        let turned = transposed_on_host(&matrix, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(turned[c * rows + r], matrix[r * cols + c]);
            }
        }
        assert_eq!(transposed_on_host(&turned, cols, rows), matrix);
        for (rows, cols) in [(0, 4), (4, 0), (0, 0), (1, 7), (7, 1)] {
            let matrix = vec![1.5f32; rows * cols];
            assert_eq!(transposed_on_host(&matrix, rows, cols), matrix);
        }
    }

    /// Checks the automatic dS_in path of a layer 2 as wide as layer 1 (B = 256, H200: 132
    /// multiprocessors, 227 KiB of shared memory a block) against the paths measured fastest:
    /// (N, active fraction below, active fraction above, spike fraction below, paths within a few
    /// percent of the fastest).
    fn check_choices(
        steps: usize,
        tiled: bool,
        by_columns: bool,
        measured: &[(usize, f64, f64, f64, &[InputGradPath])],
    ) {
        let (batch, sms, shared) = (256, 132, 227 << 10);
        for &(n, below_fraction, above_fraction, spike_fraction, fastest) in measured {
            let entries = (batch * steps * n) as f64;
            let rows = tiled_rows_within(shared, n);
            assert!(rows >= 1, "a row of W fits at N = {n}");
            let inputs = PathInputs {
                batch,
                steps,
                neurons: n,
                inputs: n,
                above_active: (above_fraction * entries) as u64,
                below_active: (below_fraction * entries) as u64,
                below_spikes: (spike_fraction * entries) as u64,
                multiprocessors: sms,
                dw_from_adjoint: true,
                tiled_grid: tiled.then(|| tiled_tiles_and_groups(rows, batch, n, sms)),
                column_parts: by_columns.then(|| column_parts_by_width(sms, n).min(words(batch))),
            };
            let chosen = predicted_input_grad_path(&inputs);
            assert!(
                fastest.contains(&chosen),
                "T = {steps}, N = {n}: chose {chosen:?}, measured fastest {fastest:?}: {inputs:?}"
            );
        }
    }

    /// Layer 2 of the Fashion-MNIST network (T = 100; dW by columns beside the tiled kernel)
    /// against the paths measured fastest, `s3gd-bench step --hidden N [--input-grad ...]`
    /// (layer-2 sparse backward, real images; seventeenth session, call 4, after v91): the pairs
    /// and sampled paths level at N = 200 (0.075 / 0.072 ms; tiled 0.093), the sampled and tiled
    /// paths level at 300 (0.099 / 0.099), the tiled path from 400 (0.110 against 0.122; at 1000
    /// 0.181 against 0.331). The fractions are the bench's over its 30 timed steps (spikes of
    /// layer 1 from calls 4 and 5).
    #[test]
    fn input_grad_choice_follows_the_fashion_mnist_measurements() {
        use InputGradPath::{Pairs, Sampled, Tiled};
        check_choices(
            100,
            true,
            true,
            &[
                (200, 0.0070, 0.0041, 0.0051, &[Pairs, Sampled]),
                (250, 0.0065, 0.0046, 0.0047, &[Pairs, Sampled, Tiled]),
                (300, 0.0064, 0.0042, 0.0045, &[Sampled, Tiled]),
                (400, 0.0063, 0.0045, 0.0044, &[Tiled]),
                (500, 0.0061, 0.0042, 0.0043, &[Tiled]),
                (600, 0.0065, 0.0043, 0.0046, &[Tiled]),
                (800, 0.0060, 0.0042, 0.0041, &[Tiled]),
                (1000, 0.0059, 0.0040, 0.0041, &[Tiled]),
                (2000, 0.0055, 0.0043, 0.0037, &[Tiled]),
                (4096, 0.0051, 0.0047, 0.0034, &[Tiled]),
            ],
        );
    }

    /// Layer 2 on the N-MNIST shape (T = 300, tiled beside dW from the adjoint) and the SHD shape
    /// (T = 500, where the tiled kernel does not fit) with synthetic spikes, ~1% active, against
    /// the paths measured fastest by the layer-2 criterion bench (seventeenth session, calls 2-4,
    /// every path forced, after v91): N-MNIST N = 200 sampled 0.211 / tiled 0.222 ms (pairs 0.437,
    /// GEMM 0.529), 300-1000 tiled (0.242 / 0.318 / 0.573 / 1.057 against the sampled path's
    /// 0.286 / 0.368 / 0.639 / 1.226), 2000 sampled (3.18 against 3.95); SHD sampled at every
    /// width (0.287 at N = 200 against pairs 0.613; 4.56 at 2000 against the GEMM path's 41.8).
    #[test]
    fn input_grad_choice_follows_the_long_shape_measurements() {
        use InputGradPath::{Sampled, Tiled};
        check_choices(
            300,
            true,
            false,
            &[
                (200, 0.0110, 0.0118, 0.0014, &[Sampled, Tiled]),
                (300, 0.0113, 0.0085, 0.0015, &[Tiled]),
                (400, 0.0115, 0.0087, 0.0015, &[Tiled]),
                (600, 0.0116, 0.0089, 0.0015, &[Tiled]),
                (1000, 0.0114, 0.0084, 0.0015, &[Tiled]),
                (2000, 0.0117, 0.0088, 0.0015, &[Sampled]),
            ],
        );
        check_choices(
            500,
            false,
            false,
            &[
                (200, 0.0081, 0.0105, 0.0011, &[Sampled]),
                (300, 0.0114, 0.0098, 0.0019, &[Sampled]),
                (400, 0.0085, 0.0103, 0.0012, &[Sampled]),
                (600, 0.0085, 0.0100, 0.0012, &[Sampled]),
                (1000, 0.0089, 0.0082, 0.0012, &[Sampled]),
                (2000, 0.0086, 0.0103, 0.0012, &[Sampled]),
            ],
        );
    }

    #[test]
    fn adjoint_weight_grad_groups_fill_the_device_within_their_memory() {
        // N = 200 over 200 units: 200 warps a group.
        assert_eq!(adjoint_weight_grad_groups(200, 200 * 200), 82);
        // N = 4096: 65,536 warps already.
        assert_eq!(adjoint_weight_grad_groups(4096 * 16, 4096 * 4096), 1);
        // Few warps but a large dW: the parts' memory decides.
        assert_eq!(adjoint_weight_grad_groups(100, 4096 * 4096), 1);
        assert_eq!(adjoint_weight_grad_groups(1000, 2048 * 2048), 4);
        assert_eq!(adjoint_weight_grad_groups(0, 0), WEIGHT_GRAD_TARGET_WARPS);
    }

    /// The float-input layer's dW choice against the paths measured fastest on the H200
    /// (`s3gd-bench harness --band ... --float-weight-grad ...`, 2026-11-29, and the tiles again
    /// after v109 on 2026-11-30): B x T = 8000 rows.
    #[test]
    fn float_weight_grad_choice_follows_the_measurements() {
        let rows = 16 * 500;
        let choose = |active: f64, n: usize, precision| {
            let entries = active * (rows * n) as f64;
            float_weight_grad_choice(entries, 16, rows, n, n, precision, true)
        };
        use FloatWeightGradPath::{Gemm, PerEntry, Tiles};
        use GemmPrecision::{Fp32, Tf32, Tf32x3};
        // (active fraction, N, fastest in fp32): the backward pass in ms with per entry / tiles
        // (v112, 2026-11-30) / GEMM (the GEMM, and per entry at 0.55% to 5.5%, as measured on
        // 2026-11-29 and 30; neither has changed since).
        for (active, n, fastest) in [
            (0.0027, 4096, Tiles),  // 1.10 / 0.55 / 5.28
            (0.0027, 16384, Tiles), // 13.51 / 7.80 / 80.07
            (0.0055, 4096, Tiles),  // 1.77 / 0.59 / 5.26
            (0.0055, 16384, Tiles), // 23.31 / 7.98 / 80.05
            (0.0137, 4096, Tiles),  // 3.74 / 0.72 / 5.28
            (0.0137, 16384, Tiles), // 52.22 / 9.71 / 80.17
            (0.0552, 4096, Tiles),  // 12.77 / 1.54 / 5.33
            (0.0552, 16384, Tiles), // 185.91 / 21.74 / 80.31
        ] {
            assert_eq!(choose(active, n, Fp32), fastest, "{active} at N = {n}");
        }
        // Far sparser, the per-entry kernel, whose cost falls with the entries while the tiles
        // stage every trace row (the model's crossing, about 0.05% at N = 4096: not measured).
        assert_eq!(choose(0.0002, 4096, Fp32), PerEntry);
        // With TF32 GEMMs, the backward pass in ms by tiles / the GEMM over the scattered d (v112,
        // 2026-11-30): the tiles up to 1.37% active, the GEMM from 2.74%.
        for (active, n, fastest) in [
            (0.0027, 4096, Tiles),  // 0.55 / 0.73
            (0.0027, 16384, Tiles), // 8.14 / 11.25
            (0.0055, 4096, Tiles),  // 0.59 / 0.73
            (0.0055, 16384, Tiles), // 8.58 / 11.30
            (0.0137, 4096, Tiles),  // 0.72 / 0.75
            (0.0137, 16384, Tiles), // 10.56 / 11.48
            (0.0274, 4096, Gemm),   // 0.96 / 0.77
            (0.0274, 16384, Gemm),  // 14.27 / 11.66
            (0.0552, 4096, Gemm),   // 1.54 (fp32) / 0.80
            (0.0552, 16384, Gemm),  // 21.74 (fp32) / 11.63
        ] {
            assert_eq!(
                choose(active, n, Tf32),
                fastest,
                "TF32, {active} at N = {n}"
            );
        }
        // With 3xTF32 the tiles (GEMM 2.5 / 36.1 ms at N = 4096 / 16384 and 5.5% active, tiles
        // 1.66 / 26.47, whose fp32 sums are also closer to f64 than 3xTF32's products).
        assert_eq!(choose(0.0552, 4096, Tf32x3), Tiles);
        assert_eq!(choose(0.0552, 16384, Tf32x3), Tiles);
        // Without room for the tiles' staged rows, the next best.
        let entries = 0.0552 * (rows * 4096) as f64;
        assert_eq!(
            float_weight_grad_choice(entries, 16, rows, 4096, 4096, Fp32, false),
            Gemm
        );
    }
}
