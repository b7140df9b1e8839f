//! Hidden layer 2, forward and backward, dense vs sparse (issues 2 and 6): on the shapes of the
//! three datasets (N_in / T = 784 / 100 with real Fashion-MNIST spikes, 1156 / 300 and 700 / 500
//! with synthetic spike trains) for hidden sizes N, with weights scaled so that about 1% of each
//! layer's B x T x N entries lie in the band h = 0.2.
//!
//! Batch 32 on the CPU (Fashion-MNIST at N = 200 is issue 2's backward benchmark, whose targets
//! are a sparse backward at least 10x faster than the dense one, keeping at most 15% of its
//! bytes), N in {200, 400, 1000, 2000} unless `S3GD_BENCH_FULL=1` adds 4096 (the default grid
//! takes about 4 minutes on two cores); batch 256 and every N on CUDA, when it opens.
//!
//! What is timed: `lif_forward` of layer 2 from layer 1's spikes (with the tape the method keeps),
//! and `lif_backward` of layer 2 (dW2 and dS1 at the entries layer 1 needs) for the loss "sum of
//! layer 2's spikes". Each run writes `bench/results/<device>-<date>.csv` and `.md` (or into
//! `S3GD_BENCH_RESULTS`); `S3GD_BENCH_DEVICES=cpu` or `=cuda` runs one device only.
//! `S3GD_BENCH_PROFILE=1` also prints each CUDA backward's kernel times (`=serial`: each kernel
//! timed alone, the side stream run in series), and
//! `S3GD_BENCH_INPUT_GRAD` forces CUDA's sparse dS_in path (pairs, sampled, gemm, tiled), and
//! `S3GD_BENCH_SAMPLED_BY_STEP` (on, off) the order of the sampled dots' entries below.
//! `S3GD_BENCH_DATASETS` (e.g. `nmnist,shd`) and `S3GD_BENCH_HIDDEN` (e.g. `200,400`) restrict
//! the grid, so that a forced-path comparison measures only the shapes it needs.

mod common;

use anyhow::Result;
use criterion::{criterion_group, criterion_main, Criterion};

use common::{bench_op, BenchDevice};
use s3gd_bench::fixtures::{
    active_fraction, calibrate, forward_checked, init_weights, input_spikes, DatasetShape,
};
use s3gd_bench::report::{write_results, Layer2Row};
use s3gd_core::{DatasetKind, Keep, LayerOutput, LayerSpec, RegGrad, DEFAULT_BAND};

const CPU_BATCH: usize = 32;
const CUDA_BATCH: usize = 256;
const CPU_HIDDEN: [usize; 4] = [200, 400, 1000, 2000];
const ALL_HIDDEN: [usize; 5] = [200, 400, 1000, 2000, 4096];
const SEED: u64 = 2021;

fn layer2(c: &mut Criterion) {
    let cpu_hidden = common::hidden_sizes(if common::full_grid() {
        &ALL_HIDDEN
    } else {
        &CPU_HIDDEN
    });
    let cuda_hidden = common::hidden_sizes(&ALL_HIDDEN);
    if let Some(cpu) = common::open_cpu() {
        if let Err(e) = run_device(c, &cpu, CPU_BATCH, &cpu_hidden) {
            println!("cpu layer-2 benchmarks failed: {e:#}");
        }
    }
    if let Some(cuda) = common::open_cuda() {
        if let Err(e) = run_device(c, &cuda, CUDA_BATCH, &cuda_hidden) {
            println!("cuda layer-2 benchmarks failed: {e:#}");
        }
    }
}

fn run_device<B: BenchDevice>(
    c: &mut Criterion,
    device: &B,
    batch: usize,
    hidden: &[usize],
) -> Result<()> {
    println!(
        "== {}: layer 2, batch {batch}, band h = {DEFAULT_BAND}",
        device.describe()
    );
    let mut notes = vec![format!(
        "Batch {batch}; band h = {DEFAULT_BAND}; loss = sum of layer 2's spikes (dS2 = 1); dS1 computed at layer 1's active entries (sparse) or everywhere (dense)."
    )];
    let forced = common::forced_input_grad();
    if device.name() == "cuda" && forced != "auto" {
        notes.push(format!(
            "The sparse dS_in path is forced to {forced} (`S3GD_BENCH_INPUT_GRAD`), not chosen by the cost model."
        ));
    }
    notes.push(first_calls(device)?);
    let mut rows = Vec::new();
    for shape in DatasetShape::all() {
        if !common::wants_dataset(shape.kind.name()) {
            continue;
        }
        let (input, source) = input_spikes(&shape, batch, SEED)?;
        let line = format!(
            "{}: N_in {}, T {}, {source}; input density {:.3}%",
            shape.kind,
            shape.inputs,
            shape.steps,
            100.0 * input.density()
        );
        println!("{line}");
        notes.push(line);
        let input = device.upload_spikes(&input)?;
        for &n in hidden {
            match run_shape(c, device, &shape, &input, batch, n) {
                Ok((shape_rows, note)) => {
                    rows.extend(shape_rows);
                    notes.push(note);
                }
                Err(e) => println!("{} N={n} skipped: {e:#}", shape.kind),
            }
        }
    }
    if rows.is_empty() {
        println!("nothing measured on {} (filtered out?)", device.name());
        return Ok(());
    }
    let [csv, md] = write_results(&rows, device.name(), &device.describe(), &notes)?;
    println!("wrote {} and {}", csv.display(), md.display());
    Ok(())
}

/// Times the very first forward and backward calls of each method on a small layer (kernel loading
/// and first allocations), which the medians leave out.
fn first_calls<B: BenchDevice>(device: &B) -> Result<String> {
    let shape = DatasetShape::all()[0];
    let (input, _) = input_spikes(&shape, 2, SEED)?;
    let input = device.upload_spikes(&input)?;
    let spec = shape.layer(shape.inputs, 64);
    let w = device.upload(&init_weights(&shape, shape.inputs, 64, 1.0, SEED))?;
    let mut parts = Vec::new();
    for (name, keep) in methods() {
        device.synchronize()?;
        let start = std::time::Instant::now();
        let out = forward_checked(device, &input, &w, &spec, keep)?;
        device.synchronize()?;
        let forward_ms = start.elapsed().as_secs_f64() * 1e3;
        let grad = s3gd_core::testing::spike_count_loss_grad(device, &out.tape, 2, shape.steps, 64);
        let start = std::time::Instant::now();
        let dw = device.lif_backward(&out.tape, &input, &w, &grad, None)?;
        device.synchronize()?;
        let backward_ms = start.elapsed().as_secs_f64() * 1e3;
        drop(dw);
        parts.push(format!(
            "{name} forward {forward_ms:.1} ms, backward {backward_ms:.1} ms"
        ));
    }
    let line = format!(
        "First calls on a small layer (kernel loading, first allocations; not in the medians): {}.",
        parts.join("; ")
    );
    println!("{line}");
    Ok(line)
}

fn methods() -> [(&'static str, Keep); 2] {
    [
        ("dense", Keep::Dense { band: None }),
        ("sparse", Keep::Sparse { band: DEFAULT_BAND }),
    ]
}

/// One method's layers 1 and 2 after a forward pass, and the gradients layer 2's backward reads.
struct Prepared<B: BenchDevice> {
    name: &'static str,
    keep: Keep,
    layer1: LayerOutput<B>,
    layer2: LayerOutput<B>,
    grad_spikes: B::Tensor,
    reg1: RegGrad<B>,
}

fn run_shape<B: BenchDevice>(
    c: &mut Criterion,
    device: &B,
    shape: &DatasetShape,
    input: &B::Spikes,
    batch: usize,
    n: usize,
) -> Result<(Vec<Layer2Row>, String)> {
    let steps = shape.steps;
    let (spec1, spec2) = (shape.layer(shape.inputs, n), shape.layer(n, n));
    // Each layer's weights: the dataset's initialisation (SPEC section 1) scaled so that about 1%
    // of its entries lie in the band, layer 1 on the input, layer 2 on layer 1's spikes.
    let cal1 = calibrate(device, input, shape, &spec1, DEFAULT_BAND, SEED + 1)?;
    let (w1, scale1) = (device.upload(&cal1.weights)?, cal1.scale);
    let sparse = Keep::Sparse { band: DEFAULT_BAND };
    let layer1 = forward_checked(device, input, &w1, &spec1, sparse)?;
    let active1 = active_fraction(device, &layer1)?;
    let spikes1 = spike_fraction(device, &layer1, batch, steps, n)?;
    let cal2 = calibrate(
        device,
        &layer1.spikes,
        shape,
        &spec2,
        DEFAULT_BAND,
        SEED + 2,
    )?;
    drop(layer1);
    let w2 = device.upload(&cal2.weights)?;
    let note = format!(
        "{} N={n}: W1 = init x {scale1:.3} (layer 1 active {:.2}%, spiking {:.2}%), W2 = init x {:.3} (layer 2 active {:.2}%)",
        shape.kind,
        100.0 * active1,
        100.0 * spikes1,
        cal2.scale,
        100.0 * cal2.active
    );
    println!("{note}");

    let mut prepared = Vec::new();
    for (name, keep) in methods() {
        prepared.push(prepare(
            device,
            input,
            &w1,
            &spec1,
            &w2,
            &spec2,
            (batch, steps),
            name,
            keep,
        )?);
    }
    let shape_name = format!("{}_b{batch}_t{steps}_n{n}", shape.kind);
    let cells = (batch * steps * n) as u64;

    let mut forward = Vec::new();
    let mut group = common::group(c, &format!("{}_l2fwd_{shape_name}", device.name()), cells);
    for p in &prepared {
        let timing = bench_op(&mut group, p.name, device, || {
            Ok(device.lif_forward(&p.layer1.spikes, &w2, &spec2, p.keep)?)
        })?;
        forward.push(timing);
    }
    group.finish();

    let mut backward = Vec::new();
    let mut group = common::group(c, &format!("{}_l2bwd_{shape_name}", device.name()), cells);
    for p in &prepared {
        let timing = bench_op(&mut group, p.name, device, || {
            Ok(device.lif_backward(
                &p.layer2.tape,
                &p.layer1.spikes,
                &w2,
                &p.grad_spikes,
                Some((&p.layer1.tape, &p.reg1)),
            )?)
        })?;
        if timing.iterations > 0 && common::profile_kernels() {
            let lines = device.kernel_profile(5, &mut || {
                device.lif_backward(
                    &p.layer2.tape,
                    &p.layer1.spikes,
                    &w2,
                    &p.grad_spikes,
                    Some((&p.layer1.tape, &p.reg1)),
                )?;
                Ok(())
            })?;
            if !lines.is_empty() {
                println!(
                    "{} {shape_name} {} backward, kernel times (mean over 5):",
                    device.name(),
                    p.name
                );
                lines.iter().for_each(|line| println!("{line}"));
            }
        }
        backward.push(timing);
    }
    group.finish();

    let mut rows = Vec::new();
    for ((p, fwd), bwd) in prepared.iter().zip(&forward).zip(&backward) {
        if fwd.iterations == 0 || bwd.iterations == 0 {
            continue;
        }
        let stats = device.tape_stats(&p.layer2.tape)?;
        let peak_bytes = peak_of_pass(device, p, &w2, &spec2)?;
        println!(
            "{} {shape_name} {}: fwd {:.3} ms, bwd {:.3} ms (first {:.1} / {:.1} ms), active {:.3}%, kept {:.3} MiB{}",
            device.name(),
            p.name,
            fwd.median_ms,
            bwd.median_ms,
            fwd.first_ms,
            bwd.first_ms,
            100.0 * stats.active_fraction(),
            stats.kept_bytes as f64 / (1u64 << 20) as f64,
            peak_bytes.map_or(String::new(), |b| format!(", peak {:.0} MiB", b as f64 / (1u64 << 20) as f64)),
        );
        rows.push(Layer2Row {
            device: device.name().into(),
            dataset: shape.kind.to_string(),
            hidden: n,
            batch,
            steps,
            inputs: shape.inputs,
            method: p.name,
            fwd_ms: fwd.median_ms,
            bwd_ms: bwd.median_ms,
            kept_bytes: stats.kept_bytes,
            active: stats.active_fraction(),
            peak_bytes,
            active_l1: active1,
        });
    }
    if let [dense, sparse] = rows.as_slice() {
        println!(
            "{} {shape_name}: backward dense/sparse {:.1}x, forward + backward {:.2}x, kept sparse/dense {:.2}%",
            device.name(),
            dense.bwd_ms / sparse.bwd_ms,
            (dense.fwd_ms + dense.bwd_ms) / (sparse.fwd_ms + sparse.bwd_ms),
            100.0 * sparse.kept_bytes as f64 / dense.kept_bytes as f64
        );
        if device.name() == "cpu" && shape.kind == DatasetKind::Fmnist && n == 200 && batch == 32 {
            let speedup = dense.bwd_ms / sparse.bwd_ms;
            let kept = sparse.kept_bytes as f64 / dense.kept_bytes as f64;
            println!(
                "issue 2 (CPU, Fashion-MNIST, N_in = N = 200, T = 100, B = 32): layer-2 backward dense {:.3} ms, sparse {:.3} ms, {speedup:.1}x (target >= 10x: {}); kept sparse/dense {:.2}% (target <= 15%: {})",
                dense.bwd_ms,
                sparse.bwd_ms,
                if speedup >= 10.0 { "met" } else { "MISSED" },
                100.0 * kept,
                if kept <= 0.15 { "met" } else { "MISSED" },
            );
        }
    }
    Ok((rows, note))
}

/// The fraction of a layer's B x T x N entries that spiked.
fn spike_fraction<B: BenchDevice>(
    device: &B,
    layer: &LayerOutput<B>,
    batch: usize,
    steps: usize,
    neurons: usize,
) -> Result<f64> {
    let cells = (batch * steps * neurons).max(1);
    Ok(device.spike_count(&layer.spikes)? as f64 / cells as f64)
}

/// Layers 1 and 2 forward with `keep`, the spike gradient of the loss "sum of layer 2's spikes",
/// and zero regulariser gradients for layer 1.
#[allow(clippy::too_many_arguments)]
fn prepare<B: BenchDevice>(
    device: &B,
    input: &B::Spikes,
    w1: &B::Tensor,
    spec1: &LayerSpec,
    w2: &B::Tensor,
    spec2: &LayerSpec,
    (batch, steps): (usize, usize),
    name: &'static str,
    keep: Keep,
) -> Result<Prepared<B>> {
    let layer1 = forward_checked(device, input, w1, spec1, keep)?;
    let layer2 = forward_checked(device, &layer1.spikes, w2, spec2, keep)?;
    let grad_spikes = s3gd_core::testing::spike_count_loss_grad(
        device,
        &layer2.tape,
        batch,
        steps,
        spec2.neurons,
    );
    let reg1 = RegGrad {
        per_sample: device.zeros(batch)?,
        per_neuron: device.zeros(batch * spec1.neurons)?,
    };
    Ok(Prepared {
        name,
        keep,
        layer1,
        layer2,
        grad_spikes,
        reg1,
    })
}

/// Peak device memory over one layer-2 forward and backward pass (resident inputs, weights and
/// layer 1's tape included), where the device tracks it.
fn peak_of_pass<B: BenchDevice>(
    device: &B,
    p: &Prepared<B>,
    w2: &B::Tensor,
    spec2: &LayerSpec,
) -> Result<Option<usize>> {
    device.synchronize()?;
    device.reset_peak_memory();
    let out = device.lif_forward(&p.layer1.spikes, w2, spec2, p.keep)?;
    let grads = device.lif_backward(
        &p.layer2.tape,
        &p.layer1.spikes,
        w2,
        &p.grad_spikes,
        Some((&p.layer1.tape, &p.reg1)),
    )?;
    device.synchronize()?;
    let peak = device.peak_memory();
    drop((out, grads));
    Ok(peak)
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = layer2
}
criterion_main!(benches);
