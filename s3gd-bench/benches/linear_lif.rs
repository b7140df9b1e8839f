//! The harness SNN libraries publish (issue 6): Linear(N -> N) + LIF, B = 16, T = 500, x ~ randn,
//! loss = sum of the output spikes, fp32, N in {4096, 8192, 16384}; forward and backward, dense and
//! sparse, through the float-input ops `lif_forward_float` / `lif_backward_float`.
//!
//! CUDA only: the CPU twin of these ops exists for checks, and at N = 4096 one forward pass alone is
//! some 1.3e11 multiply-adds in f64, minutes per iteration on two cores. Peak device memory over a
//! forward and backward pass is printed per method.

mod common;

use anyhow::Result;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use rand_xoshiro::Xoshiro256PlusPlus;

use common::{bench_op, BenchDevice};
use s3gd_core::{Keep, LayerSpec, DEFAULT_BAND};

const BATCH: usize = 16;
const STEPS: usize = 500;
const HIDDEN: [usize; 3] = [4096, 8192, 16384];

fn linear_lif(c: &mut Criterion) {
    println!(
        "notice: the cpu_linearlif_* benchmarks are not run (one CPU forward pass at N = 4096 takes minutes); CUDA only"
    );
    if let Some(cuda) = common::open_cuda() {
        for n in HIDDEN {
            if let Err(e) = run_size(c, &cuda, n) {
                println!("cuda Linear + LIF N={n} failed: {e:#}");
            }
        }
    }
}

fn run_size<B: BenchDevice>(c: &mut Criterion, device: &B, n: usize) -> Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(n as u64);
    let x: Vec<f32> = (0..BATCH * STEPS * n)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let bound = 1.0 / (n as f32).sqrt();
    let uniform = Uniform::new_inclusive(-bound, bound)?;
    let w: Vec<f32> = (0..n * n).map(|_| uniform.sample(&mut rng)).collect();
    let spec = LayerSpec {
        inputs: n,
        neurons: n,
        beta: (-0.1f64).exp(),
    };
    let (x, w) = (device.upload(&x)?, device.upload(&w)?);
    let shape = format!("b{BATCH}_t{STEPS}_n{n}");
    let cells = (BATCH * STEPS * n) as u64;
    let methods = [
        ("dense", Keep::Dense { band: None }),
        ("sparse", Keep::Sparse { band: DEFAULT_BAND }),
    ];

    // Forward passes kept for the backward benchmarks (a grown sparse tape is run again).
    let mut outputs = Vec::new();
    for (_, keep) in methods {
        let mut out = device.lif_forward_float(&x, BATCH, STEPS, &w, &spec, keep)?;
        if device.tape_stats(&out.tape)?.overflowed {
            out = device.lif_forward_float(&x, BATCH, STEPS, &w, &spec, keep)?;
        }
        let ones = s3gd_core::testing::spike_count_loss_grad(device, &out.tape, BATCH, STEPS, n);
        outputs.push((out, ones));
    }

    let mut forward = Vec::new();
    let mut group = common::group(
        c,
        &format!("{}_linearlif_fwd_{shape}", device.name()),
        cells,
    );
    for (name, keep) in methods {
        forward.push(bench_op(&mut group, name, device, || {
            Ok(device.lif_forward_float(&x, BATCH, STEPS, &w, &spec, keep)?)
        })?);
    }
    group.finish();
    let mut backward = Vec::new();
    let mut group = common::group(
        c,
        &format!("{}_linearlif_bwd_{shape}", device.name()),
        cells,
    );
    for ((name, _), (out, ones)) in methods.iter().zip(&outputs) {
        backward.push(bench_op(&mut group, name, device, || {
            Ok(device.lif_backward_float(&out.tape, &x, &w, ones)?)
        })?);
    }
    group.finish();

    for (((name, keep), (out, ones)), (fwd, bwd)) in methods
        .iter()
        .zip(&outputs)
        .zip(forward.iter().zip(&backward))
    {
        if fwd.iterations == 0 || bwd.iterations == 0 {
            continue;
        }
        device.synchronize()?;
        device.reset_peak_memory();
        let again = device.lif_forward_float(&x, BATCH, STEPS, &w, &spec, *keep)?;
        let dw = device.lif_backward_float(&out.tape, &x, &w, ones)?;
        device.synchronize()?;
        let peak = device.peak_memory();
        drop((again, dw));
        let stats = device.tape_stats(&out.tape)?;
        println!(
            "{}_linearlif_{shape} {name}: forward + backward {:.2} ms (forward {:.2}, backward {:.2}; first {:.1} / {:.1} ms), active {:.2}%, kept {:.1} MiB{}",
            device.name(),
            fwd.median_ms + bwd.median_ms,
            fwd.median_ms,
            bwd.median_ms,
            fwd.first_ms,
            bwd.first_ms,
            100.0 * stats.active_fraction(),
            stats.kept_bytes as f64 / (1u64 << 20) as f64,
            peak.map_or(String::new(), |p| format!(", peak {:.0} MiB", p as f64 / (1u64 << 20) as f64)),
        );
    }
    Ok(())
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = linear_lif
}
criterion_main!(benches);
