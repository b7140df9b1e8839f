//! Shared by the criterion benches: the devices a bench runs on (the CPU always, CUDA when a driver
//! and a GPU are found), criterion's settings, and a timed op that synchronises the device inside
//! every timed region and keeps each iteration's time, so that the result files can report medians.
//!
//! Benchmark names are `{device}_{op}_{shape}` groups with one function per method.

#![allow(dead_code)] // each bench uses part of this module

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};

use s3gd_core::{Backend, CpuBackend};
use s3gd_kernels::CudaBackend;

/// A backend the benches run on, with what only some devices can report.
pub trait BenchDevice: Backend {
    /// `cpu` or `cuda`: the first part of every benchmark name and of the result files' names.
    fn name(&self) -> &'static str;
    /// Peak device memory since the last reset, where the device tracks it.
    fn peak_memory(&self) -> Option<usize>;
    fn reset_peak_memory(&self);
    /// The mean time of each kernel over `passes` runs of `op`, one line per kernel, where the
    /// device records kernel times (none on the CPU).
    fn kernel_profile(
        &self,
        _passes: usize,
        _op: &mut dyn FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Whether `S3GD_BENCH_PROFILE` asks for each CUDA backward's kernel times beside its median (any
/// value but empty or 0).
pub fn profile_kernels() -> bool {
    std::env::var("S3GD_BENCH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `S3GD_BENCH_PROFILE=serial` asks for each kernel's time alone: every launch then
/// waits for the other stream, so kernels that normally run side by side are timed one by one.
pub fn profile_serial() -> bool {
    std::env::var("S3GD_BENCH_PROFILE").is_ok_and(|v| v == "serial")
}

impl BenchDevice for CpuBackend<f32> {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn peak_memory(&self) -> Option<usize> {
        None
    }
    fn reset_peak_memory(&self) {}
}

impl BenchDevice for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn peak_memory(&self) -> Option<usize> {
        Some(CudaBackend::peak_memory(self))
    }
    fn reset_peak_memory(&self) {
        CudaBackend::reset_peak_memory(self)
    }
    fn kernel_profile(
        &self,
        passes: usize,
        op: &mut dyn FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<String>> {
        self.device().set_profiling_serial(profile_serial());
        self.device().set_profiling(true);
        let ran = (0..passes).try_for_each(|_| op());
        let report = self.device().profile_report();
        self.device().set_profiling(false);
        self.device().set_profiling_serial(false);
        ran?;
        Ok(report?
            .into_iter()
            .map(|t| {
                format!(
                    "  {:<40} {:>9.1} us  ({} launches)",
                    t.name,
                    1e3 * t.total_ms / passes.max(1) as f64,
                    t.launches
                )
            })
            .collect())
    }
}

/// Whether this run benchmarks `device` (`cpu` or `cuda`): `S3GD_BENCH_DEVICES`, a comma-separated
/// list, picks; unset, both.
pub fn wants(device: &str) -> bool {
    match std::env::var("S3GD_BENCH_DEVICES") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|d| d.trim() == device),
        _ => true,
    }
}

/// The CPU backend in f32 on every core, unless `S3GD_BENCH_DEVICES` leaves the CPU out.
pub fn open_cpu() -> Option<CpuBackend<f32>> {
    if wants("cpu") {
        Some(CpuBackend::<f32>::new())
    } else {
        println!("notice: S3GD_BENCH_DEVICES leaves out the cpu_* benchmarks");
        None
    }
}

/// The sparse dS_in path `S3GD_BENCH_INPUT_GRAD` asks CUDA to take (`auto` where unset).
pub fn forced_input_grad() -> String {
    std::env::var("S3GD_BENCH_INPUT_GRAD").unwrap_or_else(|_| "auto".into())
}

/// CUDA device 0, or a notice and `None` when it does not open (no driver, no GPU) or
/// `S3GD_BENCH_DEVICES` leaves it out. `S3GD_BENCH_INPUT_GRAD` (pairs, sampled, gemm, tiled; unset
/// or auto: the cost model's choice) forces the sparse dS_in path, and `S3GD_BENCH_SAMPLED_BY_STEP`
/// (on, off) whether the sampled dots take the entries below by step, for A/B runs.
pub fn open_cuda() -> Option<CudaBackend> {
    if !wants("cuda") {
        println!("notice: S3GD_BENCH_DEVICES leaves out the cuda_* benchmarks");
        return None;
    }
    let forced = forced_input_grad();
    let path = match s3gd_bench::input_grad_path(&forced) {
        Ok(path) => path,
        Err(e) => {
            println!("notice: S3GD_BENCH_INPUT_GRAD: {e:#}; the cuda_* benchmarks are skipped");
            return None;
        }
    };
    match CudaBackend::new(0) {
        Ok(backend) => {
            if path.is_some() {
                println!("notice: S3GD_BENCH_INPUT_GRAD={forced} forces the sparse dS_in path");
            }
            backend.set_input_grad_path(path);
            if let Some(mib) = std::env::var("S3GD_BENCH_WEIGHT_GRAD_CHUNK_MIB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&mib| mib > 0)
            {
                println!("notice: S3GD_BENCH_WEIGHT_GRAD_CHUNK_MIB={mib}: G per launch of dW from the adjoint");
                backend.set_weight_grad_chunk_bytes(Some(mib << 20));
            }
            match std::env::var("S3GD_BENCH_SAMPLED_BY_STEP").as_deref() {
                Ok("on") => backend.set_sampled_input_grad_by_step(Some(true)),
                Ok("off") => backend.set_sampled_input_grad_by_step(Some(false)),
                _ => {}
            }
            Some(backend)
        }
        Err(e) => {
            println!("notice: CUDA device 0 did not open ({e}); the cuda_* benchmarks are skipped");
            None
        }
    }
}

/// Whether `S3GD_BENCH_FULL` asks for the full grid (any value but empty or 0).
pub fn full_grid() -> bool {
    std::env::var("S3GD_BENCH_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The hidden sizes `S3GD_BENCH_HIDDEN` (a comma-separated list) restricts a grid to, or
/// `default` where it is unset or empty; an entry that is not a size is reported and skipped.
pub fn hidden_sizes(default: &[usize]) -> Vec<usize> {
    match std::env::var("S3GD_BENCH_HIDDEN") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .filter_map(|item| match item.trim().parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    println!("notice: S3GD_BENCH_HIDDEN: {item:?} is not a hidden size; skipped");
                    None
                }
            })
            .collect(),
        _ => default.to_vec(),
    }
}

/// Whether this run benchmarks the dataset shape `name` (fmnist, nmnist, shd):
/// `S3GD_BENCH_DATASETS`, a comma-separated list, picks; unset, all.
pub fn wants_dataset(name: &str) -> bool {
    match std::env::var("S3GD_BENCH_DATASETS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|d| d.trim() == name),
        _ => true,
    }
}

/// Criterion's settings for these benches: ten samples, short warm-up and measurement (the ops
/// take milliseconds to seconds, and the default grid must fit in ten minutes on two cores).
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

/// A group named `{device}_{op}_{shape}` whose throughput is `elements` per iteration; flat
/// sampling, so that a slow op runs ten iterations rather than criterion's linear 55.
pub fn group<'a>(c: &'a mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(elements))
        .sampling_mode(SamplingMode::Flat);
    group
}

/// The times of one benchmarked op.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Milliseconds of the first call (allocation; on CUDA also loading kernels), not in the median.
    pub first_ms: f64,
    /// Median milliseconds over every later iteration criterion ran (warm-up included).
    pub median_ms: f64,
    /// Iterations behind the median; 0 when criterion's filter skipped the benchmark.
    pub iterations: usize,
}

/// Benchmarks `op` as `group/id`. The device is synchronised before the clock starts and before it
/// stops, so queued device work is inside the timed region; the op's output is dropped after the
/// clock stops. The first call is timed apart and kept out of criterion's samples and the median.
pub fn bench_op<B: BenchDevice, T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    device: &B,
    mut op: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Timing> {
    device.synchronize()?;
    let start = Instant::now();
    let first = op()?;
    device.synchronize()?;
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    drop(first);

    let mut samples_ms: Vec<f64> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if failure.is_some() {
                    break;
                }
                device.synchronize().expect("device synchronisation");
                let start = Instant::now();
                match op() {
                    Ok(out) => {
                        device.synchronize().expect("device synchronisation");
                        let elapsed = start.elapsed();
                        total += elapsed;
                        samples_ms.push(elapsed.as_secs_f64() * 1e3);
                        drop(out);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            total
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Timing {
        first_ms,
        median_ms: s3gd_bench::median(&samples_ms),
        iterations: samples_ms.len(),
    })
}
