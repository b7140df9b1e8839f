//! One CUDA device: context and stream, the NVRTC-compiled kernel module (compiled for the device's
//! architecture and cached on disk by source hash), cuBLAS, and tracked device allocations.
//!
//! Every allocation goes through `Device::alloc`, which counts live and peak bytes and turns an
//! out-of-memory failure into `CudaError::OutOfMemory` with the sizes. In poison mode (tests) fresh
//! buffers are filled with 0xFF bytes (NaN for floats) so that an element a kernel fails to write
//! shows up.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
    LaunchArgs, LaunchConfig, PinnedHostSlice,
};
use cudarc::driver::{DevicePtrMut, ValidAsZeroBits};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::error::CudaError;

/// The kernel sources, concatenated in this order into one NVRTC program.
pub const KERNEL_SOURCES: [(&str, &str); 12] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("lif_fwd.cu", include_str!("../kernels/lif_fwd.cu")),
    ("readout.cu", include_str!("../kernels/readout.cu")),
    ("loss.cu", include_str!("../kernels/loss.cu")),
    (
        "lif_bwd_dense.cu",
        include_str!("../kernels/lif_bwd_dense.cu"),
    ),
    ("s3gd_bwd.cu", include_str!("../kernels/s3gd_bwd.cu")),
    (
        "s3gd_bwd_tiled.cu",
        include_str!("../kernels/s3gd_bwd_tiled.cu"),
    ),
    (
        "s3gd_bwd_columns.cu",
        include_str!("../kernels/s3gd_bwd_columns.cu"),
    ),
    ("adam.cu", include_str!("../kernels/adam.cu")),
    ("gemm_int8.cu", include_str!("../kernels/gemm_int8.cu")),
    ("gemm_fp16.cu", include_str!("../kernels/gemm_fp16.cu")),
    ("gemm_f64.cu", include_str!("../kernels/gemm_f64.cu")),
];

/// NVRTC options: C++17, and no fused multiply-add so that products and sums round as the CPU's.
pub fn compile_options(arch: &'static str) -> CompileOptions {
    CompileOptions {
        arch: Some(arch),
        fmad: Some(false),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    }
}

/// The whole program text handed to NVRTC.
pub fn program_source() -> String {
    let mut src = String::new();
    for (name, text) in KERNEL_SOURCES {
        src.push_str(&format!("// ---- {name} ----\n"));
        src.push_str(text);
        src.push('\n');
    }
    src
}

/// Compiles the kernels to PTX for `arch` (e.g. "compute_90"), without a device: catches compile
/// errors with NVRTC alone.
pub fn compile_ptx(arch: &'static str) -> Result<String, CudaError> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(program_source(), compile_options(arch))
        .map_err(|e| compile_error(arch, e))?;
    Ok(ptx.to_src())
}

fn compile_error(arch: &str, e: CompileError) -> CudaError {
    let log = match &e {
        CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    };
    CudaError::Compile {
        arch: arch.to_string(),
        log,
    }
}

/// Live and peak bytes of the device allocations made through `Device::alloc`.
#[derive(Debug, Default)]
pub struct MemoryTracker {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryTracker {
    fn add(&self, bytes: usize) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
    /// Starts a new peak measurement from the bytes live now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }
}

/// A device buffer counted by the tracker.
#[derive(Debug)]
pub struct DeviceBuf<T> {
    pub(crate) slice: CudaSlice<T>,
    tracker: Arc<MemoryTracker>,
}

impl<T> DeviceBuf<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.slice.num_bytes()
    }
}

impl<T> Drop for DeviceBuf<T> {
    fn drop(&mut self) {
        self.tracker.sub(self.slice.num_bytes());
    }
}

/// Handles of every kernel in the module.
pub struct Kernels {
    pub spike_current_events: CudaFunction,
    pub spike_current_events_wide: CudaFunction,
    pub spike_current_bits: CudaFunction,
    pub spike_current_bits_wide: CudaFunction,
    pub lif_scan: CudaFunction,
    pub lif_scan_float_current: CudaFunction,
    pub input_trace: CudaFunction,
    pub s3gd_bwd_weights_trace: CudaFunction,
    pub neuron_runs: CudaFunction,
    pub float_weight_grad_tiles: CudaFunction,
    pub scatter_active_grad: CudaFunction,
    pub gather_below_grad: CudaFunction,
    pub sampled_input_grad: CudaFunction,
    pub below_slots_by_step: CudaFunction,
    pub later_adjoint_from_tape: CudaFunction,
    pub weight_grad_from_adjoint_bits: CudaFunction,
    pub weight_grad_from_adjoint_events: CudaFunction,
    pub events_by_unit: CudaFunction,
    pub readout_fwd: CudaFunction,
    pub readout_bwd_g: CudaFunction,
    pub readout_bwd_w: CudaFunction,
    pub readout_spike_grad_dense: CudaFunction,
    pub readout_spike_grad_dense_any_c: CudaFunction,
    pub readout_spike_grad_sparse: CudaFunction,
    pub loss_sample: CudaFunction,
    pub loss_reduce: CudaFunction,
    pub lif_bwd_dense_scan: CudaFunction,
    pub lif_bwd_dense_scan_transposed: CudaFunction,
    pub spikes_events_to_dense_shifted: CudaFunction,
    pub spikes_bits_to_dense_shifted: CudaFunction,
    pub unshift_add_reg: CudaFunction,
    pub split_tf32: CudaFunction,
    pub s3gd_bwd_weights_bits: CudaFunction,
    pub s3gd_bwd_weights_events: CudaFunction,
    pub sum_groups: CudaFunction,
    pub s3gd_bwd_input: CudaFunction,
    pub flatten_by_sample: CudaFunction,
    pub tiled_input_grad: CudaFunction,
    pub spiking_units_by_bank: CudaFunction,
    pub columns_by_work: CudaFunction,
    pub weight_grad_by_columns_bits: CudaFunction,
    pub weight_grad_by_columns_short_bits: CudaFunction,
    pub adam: CudaFunction,
    pub adam_transposed_grad: CudaFunction,
    pub gather_scalars: CudaFunction,
    pub int8_split_row_max: CudaFunction,
    pub int8_split_slices: CudaFunction,
    pub int8_split_combine: CudaFunction,
    pub fp16_scaled_convert: CudaFunction,
    pub widen_f32_f64: CudaFunction,
    pub narrow_f64_f32: CudaFunction,
    pub fp16_scaled_unscale: CudaFunction,
}

impl Kernels {
    fn load(module: &Arc<CudaModule>) -> Result<Self, CudaError> {
        let f = |name: &'static str| {
            module
                .load_function(name)
                .map_err(CudaError::driver("cuModuleGetFunction"))
        };
        Ok(Self {
            spike_current_events: f("spike_current_events_f64")?,
            spike_current_events_wide: f("spike_current_events_wide_f64")?,
            spike_current_bits: f("spike_current_bits_f64")?,
            spike_current_bits_wide: f("spike_current_bits_wide_f64")?,
            lif_scan: f("lif_scan_f32")?,
            lif_scan_float_current: f("lif_scan_float_current_f32")?,
            input_trace: f("input_trace_f32")?,
            s3gd_bwd_weights_trace: f("s3gd_bwd_weights_trace_f32")?,
            neuron_runs: f("neuron_runs_f32")?,
            float_weight_grad_tiles: f("float_weight_grad_tiles_f32")?,
            scatter_active_grad: f("scatter_active_grad_f32")?,
            gather_below_grad: f("gather_below_grad_f32")?,
            sampled_input_grad: f("sampled_input_grad_f32")?,
            below_slots_by_step: f("below_slots_by_step")?,
            later_adjoint_from_tape: f("later_adjoint_from_tape_f32")?,
            weight_grad_from_adjoint_bits: f("weight_grad_from_adjoint_bits_f32")?,
            weight_grad_from_adjoint_events: f("weight_grad_from_adjoint_events_f32")?,
            events_by_unit: f("events_by_unit")?,
            readout_fwd: f("readout_fwd_f32")?,
            readout_bwd_g: f("readout_bwd_g_f32")?,
            readout_bwd_w: f("readout_bwd_w_f32")?,
            readout_spike_grad_dense: f("readout_spike_grad_dense_f32")?,
            readout_spike_grad_dense_any_c: f("readout_spike_grad_dense_any_c_f32")?,
            readout_spike_grad_sparse: f("readout_spike_grad_sparse_f32")?,
            loss_sample: f("loss_sample_f32")?,
            loss_reduce: f("loss_reduce_f32")?,
            lif_bwd_dense_scan: f("lif_bwd_dense_scan_f32")?,
            lif_bwd_dense_scan_transposed: f("lif_bwd_dense_scan_transposed_f32")?,
            spikes_events_to_dense_shifted: f("spikes_events_to_dense_shifted_f32")?,
            spikes_bits_to_dense_shifted: f("spikes_bits_to_dense_shifted_f32")?,
            unshift_add_reg: f("unshift_add_reg_f32")?,
            split_tf32: f("split_tf32_f32")?,
            s3gd_bwd_weights_bits: f("s3gd_bwd_weights_bits_f32")?,
            s3gd_bwd_weights_events: f("s3gd_bwd_weights_events_f32")?,
            sum_groups: f("sum_groups_f32")?,
            s3gd_bwd_input: f("s3gd_bwd_input_f32")?,
            flatten_by_sample: f("flatten_by_sample")?,
            tiled_input_grad: f("tiled_input_grad_f32")?,
            spiking_units_by_bank: f("spiking_units_by_bank")?,
            columns_by_work: f("columns_by_work")?,
            weight_grad_by_columns_bits: f("weight_grad_by_columns_bits_f32")?,
            weight_grad_by_columns_short_bits: f("weight_grad_by_columns_short_bits_f32")?,
            adam: f("adam_f32")?,
            adam_transposed_grad: f("adam_transposed_grad_f32")?,
            gather_scalars: f("gather_scalars_f32")?,
            int8_split_row_max: f("int8_split_row_max")?,
            int8_split_slices: f("int8_split_slices")?,
            int8_split_combine: f("int8_split_combine")?,
            fp16_scaled_convert: f("fp16_scaled_convert")?,
            widen_f32_f64: f("widen_f32_f64")?,
            narrow_f64_f32: f("narrow_f64_f32")?,
            fp16_scaled_unscale: f("fp16_scaled_unscale")?,
        })
    }
}

/// Whether a driver and NVRTC can be loaded, and the devices found. Never panics.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
    pub devices: usize,
}

/// Looks for a usable CUDA installation without creating a context.
pub fn probe() -> Probe {
    // SAFETY: these only try to open the shared libraries.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    let devices = if driver {
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .unwrap_or(0)
    } else {
        0
    };
    Probe {
        driver,
        nvrtc,
        cublas,
        devices,
    }
}

/// One device with its stream, kernels and allocation tracker.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// A second stream for work that may run beside the main stream's (joined back by events
    /// before anything on the main stream reads its results).
    pub side: Arc<CudaStream>,
    pub kernels: Kernels,
    pub tracker: Arc<MemoryTracker>,
    pub name: String,
    pub arch: &'static str,
    pub poison: AtomicBool,
    blas: Mutex<Option<Arc<CudaBlas>>>,
    gemm_precision: AtomicU8,
    /// When profiling: (kernel, start, end) events of every launch since the last report.
    profile: Mutex<Option<Vec<LaunchRecord>>>,
    /// When profiling: each launch first waits for the other stream's work, so that every kernel
    /// is timed alone (the side stream then runs in series with the main one).
    profile_serial: AtomicBool,
    /// Pinned host memory for uploads, and the event after the last copy out of it.
    staging: Mutex<Option<(PinnedHostSlice<u32>, CudaEvent)>>,
}

/// A profiled launch: kernel name, and events before and after it.
type LaunchRecord = (&'static str, CudaEvent, CudaEvent);

/// Architecture names handed to NVRTC, leaked once per (major, minor).
type ArchNames = Mutex<Vec<(i32, i32, &'static str)>>;

/// How the f32 GEMMs (cuBLAS) are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemmPrecision {
    /// IEEE fp32 products and sums (CUDA cores): the default.
    #[default]
    Fp32 = 0,
    /// TF32 tensor cores: each operand rounded to a 10-bit mantissa (~1e-3 relative per product),
    /// sums in f32.
    Tf32 = 1,
    /// Near-fp32 accuracy from TF32 tensor cores: each operand split as x = hi + lo with hi and lo
    /// TF32 numbers, and A B = A_lo B_hi + A_hi B_lo + A_hi B_hi (three TF32 GEMMs, sums in f32).
    /// A product then carries at most ~3 * 2^-22 relative error (the dropped A_lo B_lo and the
    /// rounding of lo): about 22 of f32's 24 bits, where TF32 keeps 11. On the float-input layer
    /// (docs/gpu.md) membranes came within 2-6e-6 of the f64 path (fp32 GEMMs: 1-1.6e-6) and dW
    /// within 1.8e-4 relative (fp32: 7e-5). The operands' split copies take twice their memory
    /// while the GEMM runs.
    Tf32x3 = 2,
    /// f32 products from int8 tensor cores (kernels/gemm_int8.cu): each row of op(A) and column
    /// of op(B) scaled by a power of two and split into `INT8_SPLIT_SLICES` slices of 7 bits
    /// (27 bits below the power of two just above the row's largest magnitude, rounded to
    /// nearest), the slice products that reach that depth summed exactly in int32 (10 GEMMs) and
    /// combined in f64, rounded once to f32. Every output is as the same algorithm computes it on
    /// the CPU, bit for bit, so the results do not depend on the GPU, the order of sums or atomics.
    /// A product's error is bounded by the rows' largest magnitudes, not by each element's: an
    /// element far smaller than its row's largest keeps fewer bits (one 2^10 times smaller keeps
    /// 17), which costs a dot product little but is not IEEE f32 arithmetic.
    Int8Split = 3,
    /// TF32's 11 significant bits at fp16 tensor-core speed (kernels/gemm_fp16.cu): each row of
    /// op(A) and column of op(B) scaled by a power of two to lie below 2^15 and rounded to the
    /// nearest fp16 number, one fp16 GEMM with f32 sums, each output scaled back exactly. Every
    /// element within 2^-28 of its row's largest keeps 11 significant bits, rounded to nearest,
    /// as many as TF32 keeps; smaller ones become fp16 subnormals, which costs a dot product at
    /// most 2^-39 of the row's largest magnitude per element. Not IEEE f32 arithmetic: an opt-in
    /// in TF32's place, not fp32's.
    Fp16Scaled = 4,
    /// f32 GEMMs on f64 tensor cores (kernels/gemm_f64.cu): both operands widened to f64, which is
    /// exact, one cuBLAS DGEMM, in which every product of two f32 numbers is exact and the sums
    /// round at 2^-53, and each output rounded once to f32. An output differs from the exact
    /// product by at most half an f32 ulp plus k 2^-53 times the sum of its products' magnitudes:
    /// a tighter bound than an fp32 GEMM's (k 2^-24) on every input. On the H200 the DGEMM took
    /// 16-21% less time than cuBLAS's SGEMM on the harness's shapes (61.6-65.0 against 49.9-53.9
    /// TFLOP/s); the widened copies take twice the operands' own memory while the GEMM runs.
    Fp64Widened = 5,
}

/// Slices per operand row of `GemmPrecision::Int8Split`.
pub const INT8_SPLIT_SLICES: usize = 4;

impl GemmPrecision {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Tf32,
            2 => Self::Tf32x3,
            3 => Self::Int8Split,
            4 => Self::Fp16Scaled,
            5 => Self::Fp64Widened,
            _ => Self::Fp32,
        }
    }
}

/// Time spent in one kernel (or GEMM) over the launches since profiling started.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub name: &'static str,
    pub launches: usize,
    pub total_ms: f64,
}

/// One launch on the device's timeline: its kernel and when it started and ended, in ms after the
/// start of the first launch of the span asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpan {
    pub name: &'static str,
    pub start_ms: f64,
    pub end_ms: f64,
}

fn arch_name(major: i32, minor: i32) -> &'static str {
    static NAMES: OnceLock<ArchNames> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(Vec::new()));
    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, _, n)) = names.iter().find(|(a, b, _)| *a == major && *b == minor) {
        return n;
    }
    let leaked: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    names.push((major, minor, leaked));
    leaked
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("S3GD_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("s3gd").join("kernels"))
}

/// PTX for `arch`, from the on-disk cache when the same source and options built it before.
fn cached_ptx(arch: &'static str) -> Result<Ptx, CudaError> {
    let source = program_source();
    let mut hasher = DefaultHasher::new();
    source.hash(&mut hasher);
    format!("{:?}", compile_options(arch).options).hash(&mut hasher);
    let key = format!("s3gd-{arch}-{:016x}.ptx", hasher.finish());
    let path = cache_dir().map(|d| d.join(&key));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(Ptx::from_src(text));
    }
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&source, compile_options(arch))
        .map_err(|e| compile_error(arch, e))?;
    if let Some(path) = path {
        // The cache is an optimisation: a failure to write it is not an error.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, ptx.to_src()).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }
    Ok(ptx)
}

impl Device {
    /// Opens device `ordinal`: checks for the driver and NVRTC first, so that a machine without
    /// them gets an error rather than a panic.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let found = probe();
        if !found.driver {
            return Err(CudaError::NoDriver);
        }
        if !found.nvrtc {
            return Err(CudaError::NoNvrtc);
        }
        if ordinal >= found.devices {
            return Err(CudaError::NoDevice {
                ordinal,
                count: found.devices,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("cuCtxCreate"))?;
        // cudarc's cross-stream event tracking would add work to every launch; the one place that
        // uses the side stream orders it by explicit events instead.
        // SAFETY: the side stream touches buffers only between `fork_side` and `join_side`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let side = ctx
            .new_stream()
            .map_err(CudaError::driver("cuStreamCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(CudaError::driver("cuDeviceGetAttribute"))?;
        let arch = arch_name(major, minor);
        let name = ctx.name().map_err(CudaError::driver("cuDeviceGetName"))?;
        let module = ctx
            .load_module(cached_ptx(arch)?)
            .map_err(CudaError::driver("cuModuleLoadData"))?;
        let kernels = Kernels::load(&module)?;
        let device = Self {
            ctx,
            stream,
            side,
            kernels,
            tracker: Arc::new(MemoryTracker::default()),
            name,
            arch,
            poison: AtomicBool::new(false),
            blas: Mutex::new(None),
            gemm_precision: AtomicU8::new(GemmPrecision::Fp32 as u8),
            profile: Mutex::new(None),
            profile_serial: AtomicBool::new(false),
            staging: Mutex::new(None),
        };
        device.set_pool_retention(true)?;
        Ok(device)
    }

    /// Whether the stream-ordered allocator keeps freed memory for reuse (`true`, the default) or
    /// hands it back to the driver at every synchronisation (the driver's own default). Handing it
    /// back makes the next step map its buffers again: at a few hundred MiB per step that costs
    /// milliseconds.
    pub fn set_pool_retention(&self, keep: bool) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain queries and attribute writes on the default pool of this context's device.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device())
                .result()
                .map_err(CudaError::driver("cuDeviceGetDefaultMemPool"))?;
            let mut threshold: u64 = if keep { u64::MAX } else { 0 };
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .result()
            .map_err(CudaError::driver("cuMemPoolSetAttribute"))?;
        }
        Ok(())
    }

    /// Starts (or stops) recording the time of every kernel launch.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    /// Whether profiling times each kernel alone (`true`: no two kernels run at once) or as the
    /// kernels run, the side stream's beside the main one's (`false`, the default).
    pub fn set_profiling_serial(&self, serial: bool) {
        self.profile_serial.store(serial, Ordering::Relaxed);
    }

    /// Kernel times since profiling started, largest first; waits for the device and clears them.
    pub fn profile_report(&self) -> Result<Vec<KernelTime>, CudaError> {
        let mut slot = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let Some(records) = slot.as_mut() else {
            return Ok(Vec::new());
        };
        let mut times: Vec<KernelTime> = Vec::new();
        for (name, start, end) in records.drain(..) {
            end.synchronize()
                .map_err(CudaError::driver("cuEventSynchronize"))?;
            let ms = f64::from(
                start
                    .elapsed_ms(&end)
                    .map_err(CudaError::driver("cuEventElapsedTime"))?,
            );
            match times.iter_mut().find(|t| t.name == name) {
                Some(t) => {
                    t.launches += 1;
                    t.total_ms += ms;
                }
                None => times.push(KernelTime {
                    name,
                    launches: 1,
                    total_ms: ms,
                }),
            }
        }
        times.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        Ok(times)
    }

    /// Launches recorded since profiling started (0 when profiling is off).
    pub fn profiled_launches(&self) -> usize {
        self.profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// The last `last` launches recorded since profiling started, in launch order, timed from the
    /// first of them; waits for the device and clears every record.
    pub fn profile_timeline(&self, last: usize) -> Result<Vec<LaunchSpan>, CudaError> {
        let mut slot = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let Some(records) = slot.as_mut() else {
            return Ok(Vec::new());
        };
        let skip = records.len().saturating_sub(last);
        let kept: Vec<LaunchRecord> = records.drain(..).skip(skip).collect();
        let Some((_, origin, _)) = kept.first() else {
            return Ok(Vec::new());
        };
        let mut spans = Vec::with_capacity(kept.len());
        for (name, start, end) in &kept {
            end.synchronize()
                .map_err(CudaError::driver("cuEventSynchronize"))?;
            let since = |event: &CudaEvent| {
                origin
                    .elapsed_ms(event)
                    .map(f64::from)
                    .map_err(CudaError::driver("cuEventElapsedTime"))
            };
            spans.push(LaunchSpan {
                name,
                start_ms: since(start)?,
                end_ms: since(end)?,
            });
        }
        Ok(spans)
    }

    fn timing_event(&self, stream: &CudaStream) -> Result<Option<CudaEvent>, CudaError> {
        if self
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Ok(None);
        }
        stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map(Some)
            .map_err(CudaError::driver("cuEventRecord"))
    }

    /// Runs `work` (one launch or library call on the main stream), timing it when profiling.
    pub fn timed<R>(
        &self,
        name: &'static str,
        work: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        self.timed_on(&self.stream, name, work)
    }

    /// `timed` for work on `stream`.
    fn timed_on<R>(
        &self,
        stream: &CudaStream,
        name: &'static str,
        work: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        if self.profile_serial.load(Ordering::Relaxed)
            && self
                .profile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            let other = if std::ptr::eq(stream, &*self.stream) {
                &self.side
            } else {
                &self.stream
            };
            stream
                .join(other)
                .map_err(CudaError::driver("cuStreamWaitEvent"))?;
        }
        let start = self.timing_event(stream)?;
        let out = work()?;
        if let Some(start) = start {
            if let Some(end) = self.timing_event(stream)? {
                if let Some(records) = self
                    .profile
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    records.push((name, start, end));
                }
            }
        }
        Ok(out)
    }

    /// Launches a kernel, timing it when profiling.
    ///
    /// # Safety
    /// As `LaunchArgs::launch`: the arguments must match the kernel's parameters, and every buffer
    /// must be large enough for the indices the kernel computes from `cfg` and the size arguments.
    pub unsafe fn launch(
        &self,
        name: &'static str,
        args: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
        // SAFETY: delegated to the caller (see above).
        unsafe { self.launch_on(false, name, args, cfg) }
    }

    /// `launch` for arguments built on the side stream (`self.side.launch_builder`) when `side`,
    /// else on the main stream.
    ///
    /// # Safety
    /// As `launch`, and a side-stream launch must come between `fork_side` and `join_side`.
    pub unsafe fn launch_on(
        &self,
        side: bool,
        name: &'static str,
        args: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
        let stream = self.stream_on(side);
        self.timed_on(stream, name, || {
            // SAFETY: delegated to the caller (see above).
            unsafe { args.launch(cfg) }
                .map(|_| ())
                .map_err(CudaError::driver(name))
        })
    }

    /// The side stream where `side`, else the main one.
    pub fn stream_on(&self, side: bool) -> &CudaStream {
        if side {
            &self.side
        } else {
            &self.stream
        }
    }

    /// Lets the side stream start on everything the main stream has been given so far.
    pub fn fork_side(&self) -> Result<(), CudaError> {
        self.side
            .join(&self.stream)
            .map_err(CudaError::driver("cuStreamWaitEvent"))
    }

    /// Makes the main stream wait for everything given to the side stream so far.
    pub fn join_side(&self) -> Result<(), CudaError> {
        self.stream
            .join(&self.side)
            .map_err(CudaError::driver("cuStreamWaitEvent"))
    }

    /// The most dynamic shared memory one block may ask for (after opting in).
    pub fn shared_memory_limit(&self) -> usize {
        self.attribute_or(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            48 << 10,
        )
    }

    /// The device's L2 cache in bytes.
    pub fn l2_cache_bytes(&self) -> usize {
        self.attribute_or(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE,
            50 << 20,
        )
    }

    /// The device's streaming multiprocessors.
    pub fn multiprocessors(&self) -> usize {
        self.attribute_or(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            132,
        )
        .max(1)
    }

    /// A device attribute as a count, or `fallback` where the driver does not answer (an H200's
    /// figure); negative answers count as 0.
    fn attribute_or(&self, attribute: CUdevice_attribute, fallback: usize) -> usize {
        self.ctx
            .attribute(attribute)
            .map(|v| v.max(0) as usize)
            .unwrap_or(fallback)
    }

    /// Lets `function` launch with `bytes` of dynamic shared memory (past the default 48 KiB).
    pub fn allow_shared_memory(
        &self,
        function: &CudaFunction,
        bytes: usize,
    ) -> Result<(), CudaError> {
        if bytes <= 48 << 10 {
            return Ok(());
        }
        use cudarc::driver::sys::CUfunction_attribute;
        function
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(CudaError::driver("cuFuncSetAttribute"))
    }

    /// Allocates `len` elements (uninitialised, or 0xFF bytes in poison mode).
    pub fn alloc<T: DeviceRepr>(
        &self,
        len: usize,
        what: &'static str,
    ) -> Result<DeviceBuf<T>, CudaError> {
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: the buffer is written by a kernel or a copy before it is read (poison mode checks
        // exactly that), or zeroed explicitly by `zeros`.
        let mut slice = unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| self.alloc_error(e, what, bytes))?;
        if self.poison.load(Ordering::Relaxed) {
            let num = slice.num_bytes();
            let (ptr, _sync) = slice.device_ptr_mut(&self.stream);
            // SAFETY: ptr spans num bytes of the buffer just allocated on this stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(ptr, 0xFF, num, self.stream.cu_stream())
            }
            .map_err(CudaError::driver("cuMemsetD8Async"))?;
        }
        self.tracker.add(slice.num_bytes());
        Ok(DeviceBuf {
            slice,
            tracker: self.tracker.clone(),
        })
    }

    /// Allocates `len` zeroed elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &'static str,
    ) -> Result<DeviceBuf<T>, CudaError> {
        let mut buf = self.alloc::<T>(len, what)?;
        self.stream
            .memset_zeros(&mut buf.slice)
            .map_err(CudaError::driver("cuMemsetD8Async"))?;
        Ok(buf)
    }

    /// Copies host data into a new buffer.
    pub fn upload<T: DeviceRepr>(
        &self,
        data: &[T],
        what: &'static str,
    ) -> Result<DeviceBuf<T>, CudaError> {
        let mut buf = self.alloc::<T>(data.len(), what)?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut buf.slice)
                .map_err(CudaError::driver("cuMemcpyHtoDAsync"))?;
        }
        Ok(buf)
    }

    /// Copies host words into a new buffer through pinned memory, so the copy runs asynchronously at
    /// full speed (per-batch uploads).
    pub fn upload_staged(
        &self,
        data: &[u32],
        what: &'static str,
    ) -> Result<DeviceBuf<u32>, CudaError> {
        let mut buf = self.alloc::<u32>(data.len(), what)?;
        if data.is_empty() {
            return Ok(buf);
        }
        let mut slot = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, copied)) = slot.as_ref() {
            copied
                .synchronize()
                .map_err(CudaError::driver("cuEventSynchronize"))?;
        }
        if slot
            .as_ref()
            .is_none_or(|(pinned, _)| pinned.len() < data.len())
        {
            let len = data.len().next_power_of_two();
            // SAFETY: plain page-locked host memory, written before every copy out of it.
            let pinned = unsafe { self.ctx.alloc_pinned_with_flags::<u32>(len, 0) }
                .map_err(CudaError::driver("cuMemHostAlloc"))?;
            let event = self
                .stream
                .record_event(None)
                .map_err(CudaError::driver("cuEventRecord"))?;
            *slot = Some((pinned, event));
        }
        let Some((pinned, copied)) = slot.as_mut() else {
            unreachable!("the staging buffer was just created");
        };
        let host = pinned
            .as_mut_slice()
            .map_err(CudaError::driver("cuEventSynchronize"))?;
        host[..data.len()].copy_from_slice(data);
        {
            let (dst, _sync) = buf.slice.device_ptr_mut(&self.stream);
            // SAFETY: dst spans data.len() words of the new buffer; the pinned source stays
            // untouched until `copied` has completed (checked before the next write above).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    dst,
                    &host[..data.len()],
                    self.stream.cu_stream(),
                )
            }
            .map_err(CudaError::driver("cuMemcpyHtoDAsync"))?;
        }
        copied
            .record(&self.stream)
            .map_err(CudaError::driver("cuEventRecord"))?;
        Ok(buf)
    }

    /// Copies a buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuf<T>,
        len: usize,
    ) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); buf.slice.len()];
        self.stream
            .memcpy_dtoh(&buf.slice, &mut out)
            .map_err(CudaError::driver("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(CudaError::driver("cuStreamSynchronize"))?;
        out.truncate(len);
        Ok(out)
    }

    fn alloc_error(
        &self,
        e: cudarc::driver::DriverError,
        what: &'static str,
        bytes: usize,
    ) -> CudaError {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
            CudaError::OutOfMemory {
                what,
                bytes,
                free,
                total,
            }
        } else {
            CudaError::Driver {
                op: "cuMemAllocAsync",
                source: e,
            }
        }
    }

    /// cuBLAS on this device's stream, created on first use.
    pub fn blas(&self) -> Result<Arc<CudaBlas>, CudaError> {
        let mut slot = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blas) = slot.as_ref() {
            return Ok(blas.clone());
        }
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let blas =
            Arc::new(
                CudaBlas::new(self.stream.clone()).map_err(|status| CudaError::Cublas {
                    op: "cublasCreate",
                    status,
                })?,
            );
        self.apply_math_mode(&blas)?;
        *slot = Some(blas.clone());
        Ok(blas)
    }

    /// How cuBLAS computes the f32 GEMMs (see `GemmPrecision`).
    pub fn set_gemm_precision(&self, precision: GemmPrecision) -> Result<(), CudaError> {
        self.gemm_precision
            .store(precision as u8, Ordering::Relaxed);
        let slot = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blas) = slot.as_ref() {
            self.apply_math_mode(blas)?;
        }
        Ok(())
    }

    pub fn gemm_precision(&self) -> GemmPrecision {
        GemmPrecision::from_u8(self.gemm_precision.load(Ordering::Relaxed))
    }

    /// Whether cuBLAS runs the f32 GEMMs on TF32 tensor cores (plain TF32 or the three-product
    /// split).
    pub fn tf32_math(&self) -> bool {
        matches!(
            self.gemm_precision(),
            GemmPrecision::Tf32 | GemmPrecision::Tf32x3
        )
    }

    fn apply_math_mode(&self, blas: &CudaBlas) -> Result<(), CudaError> {
        use cudarc::cublas::sys::cublasMath_t;
        let mode = if self.tf32_math() {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is live for as long as `blas`.
        let status = unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), mode) };
        if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(CudaError::Cublas {
                op: "cublasSetMathMode",
                status: cudarc::cublas::result::CublasError(status),
            });
        }
        Ok(())
    }
}
