//! s3gd-core's conformance suite on `CudaBackend`: forward spikes, gradients of both methods and
//! Adam against the CPU f64 path on fresh random inputs, with outputs poisoned (NaN) before every
//! kernel. Skips with a printed notice where no CUDA device is found.

use s3gd_core::testing::{
    conformance_adam, conformance_forward, conformance_gradients, conformance_gradients_on,
    gradients_on, Case, CaseSizes,
};
use s3gd_core::{
    Backend, CoreError, CpuBackend, HostGradients, HostTape, Keep, LayerOutput, Method,
};
use s3gd_kernels::{CudaBackend, CudaError, FloatWeightGradPath, GemmPrecision, InputGradPath};

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(backend) => {
            backend.set_poison(true);
            println!("running on {}", backend.describe());
            Some(backend)
        }
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::NoNvrtc)) => {
            println!("SKIPPED: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("a CUDA device is present but the backend failed to open: {e}"),
    }
}

/// Seeds differ per run so that every run draws fresh inputs; the base is printed for replay.
fn fresh_seeds(count: u64) -> std::ops::Range<u64> {
    let base = std::env::var("S3GD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(0)
        });
    println!(
        "seeds {base}..{} (S3GD_SEED={base} replays them)",
        base + count
    );
    base..base + count
}

fn larger_cases(seeds: std::ops::Range<u64>) -> impl Iterator<Item = (u64, Case)> {
    seeds.map(|seed| {
        let sizes = CaseSizes {
            batch: 3 + (seed % 3) as usize,
            steps: 30 + (seed % 40) as usize,
            inputs: 40 + (seed % 50) as usize,
            hidden: 33 + (seed % 70) as usize,
            classes: 3 + (seed % 5) as usize,
        };
        (seed, Case::with_sizes(seed, sizes))
    })
}

#[test]
fn forward_spikes_equal_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (compared, excluded) = conformance_forward(&gpu, fresh_seeds(100), 1e-6);
    println!(
        "forward: {compared} spike entries equal, {excluded} within 1e-6 of threshold excluded"
    );
    assert!(compared > 1000);
}

/// Both layers' membranes equal the CPU f32 backend's bit for bit, with the currents kernel loading
/// a step's weight rows 16 at a time and 4 at a time, and with the currents held for the whole
/// batch at once (the default on these sizes) or a sample at a time.
#[test]
fn forward_membrane_is_bit_identical_to_cpu_f32() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for (k, seed) in fresh_seeds(20).enumerate() {
        let case = Case::random(seed);
        let keep = Keep::Dense { band: None };
        let ahead = if k % 2 == 0 { 16 } else { 4 };
        gpu.set_current_loads_ahead(Some(ahead));
        gpu.set_current_chunk_bytes((k % 3 == 2).then_some(1));
        let a = gradients_on(&gpu, &case, keep);
        let b = gradients_on(&cpu, &case, keep);
        for layer in [0, 1] {
            assert_eq!(
                membrane(&a, layer),
                membrane(&b, layer),
                "seed {seed}, {ahead} loads ahead: layer-{} membrane differs from the CPU's",
                layer + 1
            );
        }
    }
    gpu.set_current_loads_ahead(None);
    gpu.set_current_chunk_bytes(None);
}

/// V - theta of `layer` (0 or 1) from gradients computed with dense tapes.
fn membrane(gradients: &HostGradients, layer: usize) -> &[f64] {
    match &gradients.tapes[layer] {
        HostTape::Dense { v_minus_theta, .. } => v_minus_theta,
        _ => panic!("dense tapes expected"),
    }
}

#[test]
fn gradients_match_cpu_f64_for_both_methods() {
    let Some(gpu) = gpu() else { return };
    // Every backend integrates the membrane in f64 from the same f32 weights in the same order
    // (see forward_membrane_is_bit_identical_to_cpu_f32), so spikes and band membership agree
    // exactly and no case needs skipping: margin 0.
    for method in [
        Method::Dense,
        Method::Sparse { band: 0.2 },
        Method::Sparse { band: 0.05 },
        Method::Sparse { band: 1e9 },
    ] {
        let small = conformance_gradients(&gpu, method, fresh_seeds(60), 0.0, 1e-5);
        let large =
            conformance_gradients_on(&gpu, method, larger_cases(fresh_seeds(12)), 0.0, 1e-5);
        println!("{method:?}: small {small:?}; larger {large:?}");
        assert!(small.compared == 60 && large.compared == 12);
        assert!(
            small.ill_conditioned + large.ill_conditioned <= 4,
            "too many ill-conditioned cases"
        );
    }
    // The sparse method on 12 larger networks with the backend's path choices forced (the
    // automatic choices take any of them, by the active counts last seen).
    let forced = |what: &str| {
        let seen = conformance_gradients_on(
            &gpu,
            Method::Sparse { band: 0.2 },
            larger_cases(fresh_seeds(12)),
            0.0,
            1e-5,
        );
        println!("Sparse {{ band: 0.2 }} with {what}: {seen:?}");
        assert_eq!(seen.compared, 12, "{what}");
    };
    for path in [
        InputGradPath::Pairs,
        InputGradPath::Sampled,
        InputGradPath::Gemm,
        InputGradPath::Tiled,
    ] {
        gpu.set_input_grad_path(Some(path));
        forced(&format!("dS1 by {path:?}"));
    }
    // dW of layer 2 by the per-entry trace kernel beside the sampled dS_in (by default it comes
    // from the same dense adjoint).
    gpu.set_input_grad_path(Some(InputGradPath::Sampled));
    gpu.set_weight_grad_from_adjoint(false);
    forced("dS1 by Sampled, dW2 by traces");
    gpu.set_weight_grad_from_adjoint(true);
    for by_step in [true, false] {
        gpu.set_sampled_input_grad_by_step(Some(by_step));
        forced(&format!("dS1 by Sampled, entries below by step: {by_step}"));
    }
    gpu.set_sampled_input_grad_by_step(None);
    gpu.set_input_grad_path(Some(InputGradPath::Pairs));
    for staging in [false, true] {
        gpu.set_weight_staging(Some(staging));
        forced(&format!("dS1 by Pairs, weight staging {staging}"));
    }
    gpu.set_weight_staging(None);
    gpu.set_input_grad_path(None);
    // dW of layer 1 (over the uploaded input's events) from the dense later adjoint, and by the
    // trace kernel.
    for from_adjoint in [true, false] {
        gpu.set_input_layer_weight_grad_from_adjoint(Some(from_adjoint));
        forced(&format!("dW1 from the later adjoint: {from_adjoint}"));
    }
    gpu.set_input_layer_weight_grad_from_adjoint(None);
    // fp32 accuracy from three TF32 products, and from the int8 split (spike operands split
    // exactly, the rest to 27 bits): the dense method's GEMMs (dW and dS_in of every layer) and
    // the sparse method's GEMM path for dS_in, held to the same 1e-5.
    for (precision, name) in [
        (GemmPrecision::Tf32x3, "3xTF32"),
        (GemmPrecision::Int8Split, "int8-split"),
    ] {
        gpu.set_gemm_precision(precision).unwrap();
        let dense = conformance_gradients_on(
            &gpu,
            Method::Dense,
            larger_cases(fresh_seeds(12)),
            0.0,
            1e-5,
        );
        println!("Dense with {name} GEMMs: {dense:?}");
        assert_eq!(dense.compared, 12);
        gpu.set_input_grad_path(Some(InputGradPath::Gemm));
        forced(&format!("dS1 by Gemm, {name} GEMMs"));
        gpu.set_input_grad_path(None);
    }
    gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
}

/// Step counts at the edges of the scan's 32-step spike words and 8- or 16-step load batches
/// (T - 1 steps integrate), on layers whose last warp is partly empty: membranes bit-identical to
/// the CPU's f32 backend and gradients of both methods within 1e-5 of its f64 path (the sparse
/// backward reads the spike words by unit).
#[test]
fn step_counts_at_word_edges_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    let steps_seen = [2, 9, 17, 31, 32, 33, 64, 65];
    let cases = |seeds: std::ops::Range<u64>| {
        seeds.zip(steps_seen).map(|(seed, steps)| {
            let sizes = CaseSizes {
                batch: 2 + (seed % 3) as usize,
                steps,
                inputs: 30 + (seed % 40) as usize,
                hidden: 33 + (seed % 60) as usize,
                classes: 3,
            };
            (seed, Case::with_sizes(seed, sizes))
        })
    };
    for (seed, case) in cases(fresh_seeds(steps_seen.len() as u64)) {
        let keep = Keep::Dense { band: None };
        let (a, b) = (
            gradients_on(&gpu, &case, keep),
            gradients_on(&cpu, &case, keep),
        );
        for layer in 0..2 {
            assert_eq!(
                membrane(&a, layer),
                membrane(&b, layer),
                "seed {seed}: layer-{} membrane differs",
                layer + 1
            );
        }
    }
    for method in [
        Method::Dense,
        Method::Sparse { band: 0.2 },
        Method::Sparse { band: 1e9 },
    ] {
        let seen = conformance_gradients_on(
            &gpu,
            method,
            cases(fresh_seeds(steps_seen.len() as u64)),
            0.0,
            1e-5,
        );
        println!("{method:?} at the word edges: {seen:?}");
        assert_eq!(seen.compared, steps_seen.len(), "{method:?}");
    }
}

/// The tiled dS_in path (pair by pair per tile of input units, W's rows of the tile in shared
/// memory) on its own: tiles of 32 units and of 5 and 13 (straddling 32-unit segments, the last
/// tile short), at the default band and with every entry active (more entries below in a tile than
/// a warp lists at once), with the list by step (each pass from its earliest entry below; its
/// blocks dealt by bank into the default 4, 3 or 8 groups, or not dealt) and in tape order.
#[test]
fn tiled_path_matches_cpu_f64() {
    let Some(gpu) = gpu() else { return };
    gpu.set_input_grad_path(Some(InputGradPath::Tiled));
    // Row sharing is forced both ways: the test networks are narrower than where it is on by
    // default.
    for (by_step, heaviest_first, share_rows, deal_groups, flatten_warps) in [
        (true, true, true, None, None),
        (true, true, false, Some(0), Some(1)),
        (true, false, true, Some(8), Some(32)),
        (true, true, false, Some(3), Some(5)),
        (false, true, false, None, Some(3)),
    ] {
        gpu.set_flatten_warps(flatten_warps);
        gpu.set_tiled_by_step(by_step);
        gpu.set_tiled_sample_order(heaviest_first);
        gpu.set_tiled_row_sharing(Some(share_rows));
        gpu.set_tiled_deal_groups(deal_groups);
        for rows in [None, Some(5), Some(13)] {
            gpu.set_tiled_rows_limit(rows);
            for band in [0.2, 1e9] {
                let method = Method::Sparse { band };
                let cases = larger_cases(fresh_seeds(12));
                let seen = conformance_gradients_on(&gpu, method, cases, 0.0, 1e-5);
                println!(
                    "{method:?}, by step {by_step}, heaviest first {heaviest_first}, \
                     rows shared {share_rows}, dealt into {deal_groups:?} groups, \
                     flattened by {flatten_warps:?} warps, tiles of {rows:?} units: {seen:?}"
                );
                assert_eq!(seen.compared, 12);
            }
        }
    }
    gpu.set_tiled_row_sharing(Some(true));
    gpu.set_tiled_by_step(true);
    gpu.set_tiled_deal_groups(None);
    gpu.set_tiled_rows_limit(None);
    gpu.set_flatten_warps(None);
    // Which warp takes a sample changes no sum: the same bits in either order (batches of 33-92
    // samples: more than a block's warps). Nor do the warps that build the list: each step's
    // entries keep their order in the flat list whatever the warps' runs.
    for (seed, case) in column_cases(fresh_seeds(3)) {
        let keep = Keep::Sparse { band: 0.2 };
        gpu.set_tiled_sample_order(false);
        let by_index = gradients_on(&gpu, &case, keep);
        gpu.set_tiled_sample_order(true);
        let heaviest_first = gradients_on(&gpu, &case, keep);
        assert_eq!(
            by_index, heaviest_first,
            "seed {seed}: the sample orders differ"
        );
        for warps in [1, 7, 32] {
            gpu.set_flatten_warps(Some(warps));
            let flattened = gradients_on(&gpu, &case, keep);
            assert_eq!(
                flattened, heaviest_first,
                "seed {seed}: the list built by {warps} warps differs"
            );
        }
        gpu.set_flatten_warps(None);
    }
    gpu.set_tiled_row_sharing(None);
    gpu.set_input_grad_path(None);
}

/// Cases whose batch spans two or three words of the per-neuron sample masks of dW by columns, and
/// cases with up to 260 steps (dW by columns takes up to 254; past that, dW from the dense later
/// adjoint), where hidden units spike more than ten times in a sample.
fn column_cases(seeds: std::ops::Range<u64>) -> impl Iterator<Item = (u64, Case)> {
    seeds.map(|seed| {
        let long = seed % 2 == 0;
        let sizes = CaseSizes {
            batch: if long {
                2 + (seed % 3) as usize
            } else {
                33 + (seed % 60) as usize
            },
            steps: if long {
                200 + (seed % 61) as usize
            } else {
                20 + (seed % 50) as usize
            },
            inputs: 30 + (seed % 40) as usize,
            hidden: 33 + (seed % 70) as usize,
            classes: 3 + (seed % 5) as usize,
        };
        (seed, Case::with_sizes(seed, sizes))
    })
}

/// The most spikes one hidden unit fires in one sample of `case` (the CPU's forward pass).
fn most_hidden_spikes(case: &Case) -> usize {
    let cpu = CpuBackend::<f64>::new();
    let w1 = cpu.upload(&case.weights.w1).unwrap();
    let x = cpu.upload_spikes(&case.input).unwrap();
    let out = cpu
        .lif_forward(&x, &w1, &case.config.layer1(), Keep::Nothing)
        .unwrap();
    let spikes = cpu.download_spikes(&out.spikes).unwrap();
    let mut counts = vec![0usize; spikes.batch() * spikes.units()];
    for b in 0..spikes.batch() {
        for t in 0..spikes.steps() {
            for &u in spikes.events(b, t) {
                counts[b * spikes.units() + u as usize] += 1;
            }
        }
    }
    counts.into_iter().max().unwrap_or(0)
}

/// dW beside the tiled dS_in kernel by columns of dW (a warp per column, the samples where its
/// neuron is active, each sample's first and second spikes listed by bank and step) and from the
/// dense later adjoint,
/// each held to the CPU's f64 gradients: blocks of 1, 2, 3 and 8 columns (the last block short),
/// in 1, 2, 3 and 8 parts by samples (more parts than mask words: clamped; 8 x 8 warps is more
/// than the kernel's registers let one block launch: capped), at
/// the default band and with every entry active, batches of one to three mask words, units
/// spiking once, twice, three to ten times and more often (checked), up to 254 steps and past.
#[test]
fn weight_grad_by_columns_matches_cpu_f64() {
    let Some(gpu) = gpu() else { return };
    let cases: Vec<(u64, Case)> = column_cases(fresh_seeds(12)).collect();
    let most = cases.iter().map(|(_, case)| most_hidden_spikes(case)).max();
    assert!(
        most.is_some_and(|m| m > 10),
        "no case has a hidden unit spiking more than ten times: {most:?}"
    );
    gpu.set_input_grad_path(Some(InputGradPath::Tiled));
    for by_columns in [true, false] {
        gpu.set_weight_grad_by_columns(by_columns);
        for (warps, parts) in [
            (None, None),
            (Some(2), Some(2)),
            (Some(3), Some(3)),
            (Some(8), Some(8)),
        ] {
            gpu.set_column_warps(warps);
            gpu.set_column_parts(parts);
            for band in [0.2, 1e9] {
                let method = Method::Sparse { band };
                let cases = larger_cases(fresh_seeds(6)).chain(cases.iter().cloned());
                let seen = conformance_gradients_on(&gpu, method, cases, 0.0, 1e-5);
                println!(
                    "{method:?}, by columns {by_columns}, {warps:?} warps, {parts:?} parts: \
                     {seen:?}"
                );
                assert_eq!(seen.compared, 18);
            }
            if !by_columns {
                break;
            }
        }
    }
    gpu.set_column_warps(None);
    gpu.set_column_parts(None);
    gpu.set_weight_grad_by_columns(true);
    // Every dW[i, j] is one lane's sum in sample order, whatever row of its bank a unit is listed
    // in (rows within a step follow shared-memory atomics) and whatever the column order (by work,
    // also from atomics): two runs give the same bits.
    for (seed, case) in column_cases(fresh_seeds(3)) {
        let keep = Keep::Sparse { band: 0.2 };
        let a = gradients_on(&gpu, &case, keep);
        let b = gradients_on(&gpu, &case, keep);
        assert_eq!(a, b, "seed {seed}: two runs differ");
    }
    gpu.set_input_grad_path(None);
}

/// dW from the dense later adjoint runs in launches over chunks of samples, each adding to the
/// dW of the launches before it; with one sample per launch the gradients have the same bits as
/// with one launch for the batch (every column's sum is taken in the same order), over hidden
/// spikes (layer 2) and over the input events (layer 1).
#[test]
fn weight_grad_launches_add_up_to_one_launch() {
    let Some(gpu) = gpu() else { return };
    // Beside the tiled kernel dW comes by columns by default, in one launch. Sample groups would
    // change the order of the sums (each group's part, then the parts): one group here.
    gpu.set_weight_grad_by_columns(false);
    gpu.set_weight_grad_groups(Some(1));
    // Layer 1's dW from the adjoint too (its launches over the input events), in both runs.
    gpu.set_input_layer_weight_grad_from_adjoint(Some(true));
    for path in [InputGradPath::Sampled, InputGradPath::Tiled] {
        gpu.set_input_grad_path(Some(path));
        for (seed, case) in larger_cases(fresh_seeds(4)) {
            let keep = Keep::Sparse { band: 0.2 };
            gpu.set_weight_grad_chunk_bytes(None);
            let whole = gradients_on(&gpu, &case, keep);
            gpu.set_weight_grad_chunk_bytes(Some(1));
            let by_sample = gradients_on(&gpu, &case, keep);
            assert_eq!(
                whole, by_sample,
                "seed {seed} {path:?}: the launches differ"
            );
        }
    }
    gpu.set_weight_grad_chunk_bytes(None);
    gpu.set_weight_grad_groups(None);
    gpu.set_input_layer_weight_grad_from_adjoint(None);
    gpu.set_weight_grad_by_columns(true);
    gpu.set_input_grad_path(None);
}

#[test]
fn adam_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    for seed in fresh_seeds(3) {
        let worst = conformance_adam(&gpu, seed, 100_003, 1e-6);
        println!("adam seed {seed}: relative error {worst:e}");
    }
}

/// Adam with a gradient stored transposed (as dW by columns leaves it) updates every element as
/// with the same gradient row-major, to the bit, on shapes with partial 32 x 32 tiles; the
/// download of such a gradient is the matrix; other ops refuse it with a typed error.
#[test]
fn adam_takes_a_gradient_stored_transposed() {
    use rand::{Rng, SeedableRng};
    let Some(gpu) = gpu() else { return };
    let spec = s3gd_core::AdamSpec::paper(1e-3);
    for (seed, (rows, cols)) in fresh_seeds(4).zip([(33, 70), (784, 200), (5, 1), (64, 96)]) {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut draw = |scale: f32| -> Vec<f32> {
            (0..rows * cols)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect()
        };
        let (p, g, m) = (draw(1.0), draw(1e-2), draw(1e-3));
        let v: Vec<f32> = draw(1e-3).iter().map(|x| x * x).collect();
        let turned_grad = gpu.upload_stored_transposed(&g, rows, cols).unwrap();
        assert!(turned_grad.is_stored_transposed());
        assert_eq!(gpu.download_f32(&turned_grad).unwrap(), g, "seed {seed}");
        let plain_grad = gpu.upload(&g).unwrap();
        let mut updated = Vec::new();
        for grad in [&plain_grad, &turned_grad] {
            let [mut pp, mut mm, mut vv] = [&p, &m, &v].map(|x| gpu.upload(x).unwrap());
            gpu.adam(&mut pp, grad, &mut mm, &mut vv, 3, &spec).unwrap();
            updated.push([pp, mm, vv].map(|x| gpu.download_f32(&x).unwrap()));
        }
        for (k, name) in ["parameter", "moment1", "moment2"].iter().enumerate() {
            let (a, b) = (&updated[0][k], &updated[1][k]);
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "seed {seed} {rows} x {cols}: {name} differs with the gradient stored transposed"
            );
        }
        let mut turned_param = gpu.upload_stored_transposed(&p, rows, cols).unwrap();
        let [mut mm, mut vv] = [&m, &v].map(|x| gpu.upload(x).unwrap());
        let err = gpu
            .adam(&mut turned_param, &plain_grad, &mut mm, &mut vv, 3, &spec)
            .err()
            .unwrap();
        assert!(matches!(err, CoreError::Config { .. }), "{err}");
    }
    let case = Case::random(1);
    let x = gpu.upload_spikes(&case.input).unwrap();
    let (ni, n) = (
        case.config.layer1().inputs,
        case.weights.w1.len() / case.config.layer1().inputs,
    );
    let w = gpu
        .upload_stored_transposed(&case.weights.w1, ni, n)
        .unwrap();
    let err = gpu
        .lif_forward(&x, &w, &case.config.layer1(), Keep::Nothing)
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Config { .. }), "{err}");
}

/// The sampled dots taking the entries below in order of step (a permutation of the warps) give
/// the same bits as in tape order, on larger cases whose widths are not multiples of a warp.
#[test]
fn sampled_dots_by_step_give_the_same_bits() {
    let Some(gpu) = gpu() else { return };
    gpu.set_input_grad_path(Some(InputGradPath::Sampled));
    for (seed, case) in larger_cases(fresh_seeds(6)) {
        let keep = Keep::Sparse { band: 0.2 };
        gradients_on(&gpu, &case, keep);
        let mut runs = Vec::new();
        for by_step in [false, true] {
            gpu.set_sampled_input_grad_by_step(Some(by_step));
            runs.push(gradients_on(&gpu, &case, keep));
        }
        assert_eq!(runs[0], runs[1], "seed {seed}: the order changed the bits");
    }
    gpu.set_sampled_input_grad_by_step(None);
    gpu.set_input_grad_path(None);
}

/// Two runs of one case from the same state give the same bits. The automatic path choices read
/// the activity of the shape's last call, so a first call (no history, or another case's) may
/// take another path than the calls after it: one call first, so that both runs see this case's.
#[test]
fn runs_repeat_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    for (seed, case) in larger_cases(fresh_seeds(4)) {
        for keep in [Keep::Sparse { band: 0.2 }, Keep::Dense { band: None }] {
            gradients_on(&gpu, &case, keep);
            let a = gradients_on(&gpu, &case, keep);
            let b = gradients_on(&gpu, &case, keep);
            assert_eq!(a, b, "seed {seed} {keep:?}: two runs differ");
        }
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let case = Case::random(1);
    let x = gpu.upload_spikes(&case.input).unwrap();
    let w = gpu.upload(&case.weights.w1[1..]).unwrap();
    let err = gpu
        .lif_forward(&x, &w, &case.config.layer1(), Keep::Nothing)
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");
    let err = gpu.upload_labels(&[0, 99], 3).err().unwrap();
    assert!(matches!(err, CoreError::Label { sample: 1, .. }), "{err}");
}

#[test]
fn readout_forward_and_backward_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f64>::new();
    for (seed, case) in larger_cases(fresh_seeds(24)) {
        let cfg = case.config;
        let run = |b: &dyn Fn() -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<u16>)| b();
        let on_gpu = run(&|| {
            let x = gpu.upload_spikes(&case.input).unwrap();
            let w1 = gpu.upload(&case.weights.w1).unwrap();
            let w2 = gpu.upload(&case.weights.w2).unwrap();
            let w3 = gpu.upload(&case.weights.w3).unwrap();
            let l1 = gpu
                .lif_forward(&x, &w1, &cfg.layer1(), Keep::Nothing)
                .unwrap();
            let l2 = gpu
                .lif_forward(&l1.spikes, &w2, &cfg.layer2(), Keep::Nothing)
                .unwrap();
            let (logits, tape) = gpu.readout_forward(&l2.spikes, &w3, &cfg.readout).unwrap();
            let dz = gpu.upload(&vec![0.25f32; logits.len()]).unwrap();
            let (dw3, g) = gpu.readout_backward(&tape, &l2.spikes, &w3, &dz).unwrap();
            let s2 = gpu.download_spikes(&l2.spikes).unwrap().to_dense_counts();
            (
                gpu.download(&logits).unwrap(),
                gpu.download(&g).unwrap(),
                gpu.download(&dw3).unwrap(),
                s2,
            )
        });
        let on_cpu = run(&|| {
            let x = cpu.upload_spikes(&case.input).unwrap();
            let w1 = cpu.upload(&case.weights.w1).unwrap();
            let w2 = cpu.upload(&case.weights.w2).unwrap();
            let w3 = cpu.upload(&case.weights.w3).unwrap();
            let l1 = cpu
                .lif_forward(&x, &w1, &cfg.layer1(), Keep::Nothing)
                .unwrap();
            let l2 = cpu
                .lif_forward(&l1.spikes, &w2, &cfg.layer2(), Keep::Nothing)
                .unwrap();
            let (logits, tape) = cpu.readout_forward(&l2.spikes, &w3, &cfg.readout).unwrap();
            let dz = cpu.upload(&vec![0.25f32; logits.len()]).unwrap();
            let (dw3, g) = cpu.readout_backward(&tape, &l2.spikes, &w3, &dz).unwrap();
            let s2 = l2.spikes.to_dense_counts();
            (
                cpu.download(&logits).unwrap(),
                cpu.download(&g).unwrap(),
                cpu.download(&dw3).unwrap(),
                s2,
            )
        });
        assert_eq!(on_gpu.3, on_cpu.3, "seed {seed}: layer-2 spikes differ");
        let close = |a: &[f64], b: &[f64]| s3gd_core::testing::relative_error(a, b) < 1e-5;
        assert!(
            close(&on_gpu.0, &on_cpu.0),
            "seed {seed}: logits {:?} vs {:?}",
            on_gpu.0,
            on_cpu.0
        );
        assert!(
            close(&on_gpu.1, &on_cpu.1),
            "seed {seed}: readout adjoint g differs"
        );
        assert!(
            close(&on_gpu.2, &on_cpu.2),
            "seed {seed} ({:?}): dW3 {:?} vs {:?}",
            cfg.readout.mode,
            &on_gpu.2[..on_gpu.2.len().min(16)],
            &on_cpu.2[..on_cpu.2.len().min(16)]
        );
    }
}

/// dS of a dense tape from the readout's g and the regularisers, for class counts on both sides
/// of the staged kernel's limit (32) and of its 128-neuron blocks and 16-row groups: equal bit for
/// bit to the CPU's f32 backend, which sums the same f64 products in the same order.
#[test]
fn readout_spike_grad_matches_cpu_for_any_class_count() {
    use rand::{Rng, SeedableRng};
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for (k, seed) in fresh_seeds(7).enumerate() {
        let classes = [1, 4, 16, 31, 32, 33, 47][k];
        let (spec, batch, steps, w, x) = random_float_layer(seed, 8..40, 100..300, 20..70);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed);
        let mut noise =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0f32)).collect() };
        let (g, w3) = (
            noise(batch * steps * classes),
            noise(spec.neurons * classes),
        );
        let (per_sample, per_neuron) = (noise(batch), noise(batch * spec.neurons));
        let inputs = SpikeGradInputs {
            x: &x,
            w: &w,
            spec: &spec,
            batch,
            steps,
            g: &g,
            w3: &w3,
            per_sample: &per_sample,
            per_neuron: &per_neuron,
        };
        let (gpu_grad, cpu_grad) = (inputs.grad_on(&gpu), inputs.grad_on(&cpu));
        assert_eq!(
            gpu_grad.len(),
            batch * steps * spec.neurons,
            "seed {seed}, {classes} classes"
        );
        let differing = gpu_grad
            .iter()
            .zip(&cpu_grad)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "seed {seed}, {classes} classes: {differing} entries differ from the CPU's"
        );
    }
}

/// The backward passes given dS in the readout's form (g, W3 and the regularisers' terms) equal,
/// bit for bit, the same passes given it laid out by `readout_spike_grad` first: the dense adjoint
/// scans compute each dS as the layout kernel does (by rows, and transposed as TF32 products take
/// it), and sparse tapes lay it out first. A float-input layer, then a spike-input layer above it
/// whose backward also gives dS of the layer below; 1, 10 and 33 classes (past the layout kernel's
/// staged limit of 32).
#[test]
fn backward_from_readout_equals_laid_out() {
    use rand::{Rng, SeedableRng};
    use s3gd_core::ReadoutSpikeGrad;
    let Some(gpu) = gpu() else { return };
    for (k, seed) in fresh_seeds(3).enumerate() {
        let classes = [1, 10, 33][k];
        let (spec, batch, steps, w, x) = random_float_layer(seed, 20..90, 40..120, 20..60);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xface);
        let upper = s3gd_core::LayerSpec {
            inputs: spec.neurons,
            neurons: rng.random_range(33..100),
            beta: 0.9,
        };
        let mut noise =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0f32)).collect() };
        let w2: Vec<f32> = noise(upper.inputs * upper.neurons)
            .into_iter()
            .map(|v| v * 0.6)
            .collect();
        let grad_of = |neurons: usize, noise: &mut dyn FnMut(usize) -> Vec<f32>| {
            (
                gpu.upload(&noise(batch * steps * classes)).unwrap(),
                gpu.upload(&noise(neurons * classes)).unwrap(),
                s3gd_core::RegGrad {
                    per_sample: gpu.upload(&noise(batch)).unwrap(),
                    per_neuron: gpu.upload(&noise(batch * neurons)).unwrap(),
                },
            )
        };
        let (g1, w31, reg1) = grad_of(spec.neurons, &mut noise);
        let (g2, w32, reg2) = grad_of(upper.neurons, &mut noise);
        let below_reg = s3gd_core::RegGrad {
            per_sample: gpu.upload(&noise(batch)).unwrap(),
            per_neuron: gpu.upload(&noise(batch * spec.neurons)).unwrap(),
        };
        let (xd, wd, w2d) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&w2).unwrap(),
        );
        let bits = |t: &<CudaBackend as Backend>::Tensor| -> Vec<u64> {
            gpu.download(t)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for keep in [
            Keep::Dense { band: None },
            Keep::Dense { band: Some(0.3) },
            Keep::Sparse { band: 0.3 },
        ] {
            for precision in [GemmPrecision::Fp32, GemmPrecision::Tf32] {
                gpu.set_gemm_precision(precision).unwrap();
                let (lower, _) = float_forward_with_ones(&gpu, &xd, &wd, batch, steps, &spec, keep);
                let readout = ReadoutSpikeGrad {
                    g: &g1,
                    weights: &w31,
                    reg: &reg1,
                };
                let laid = gpu
                    .readout_spike_grad(&g1, &w31, &reg1, &lower.tape)
                    .unwrap();
                let by_layout = gpu
                    .lif_backward_float(&lower.tape, &xd, &wd, &laid)
                    .unwrap();
                let fused = gpu
                    .lif_backward_float_from_readout(&lower.tape, &xd, &wd, readout)
                    .unwrap();
                assert_eq!(
                    bits(&fused),
                    bits(&by_layout),
                    "seed {seed}, {classes} classes, {keep:?}, {precision:?}: float-input dW"
                );
                let mut above = gpu.lif_forward(&lower.spikes, &w2d, &upper, keep).unwrap();
                if gpu.tape_stats(&above.tape).unwrap().overflowed {
                    above = gpu.lif_forward(&lower.spikes, &w2d, &upper, keep).unwrap();
                }
                let readout = ReadoutSpikeGrad {
                    g: &g2,
                    weights: &w32,
                    reg: &reg2,
                };
                let below = Some((&lower.tape, &below_reg));
                let laid = gpu
                    .readout_spike_grad(&g2, &w32, &reg2, &above.tape)
                    .unwrap();
                let (dw_laid, ds_laid) = gpu
                    .lif_backward(&above.tape, &lower.spikes, &w2d, &laid, below)
                    .unwrap();
                let (dw_fused, ds_fused) = gpu
                    .lif_backward_from_readout(&above.tape, &lower.spikes, &w2d, readout, below)
                    .unwrap();
                assert_eq!(
                    bits(&dw_fused),
                    bits(&dw_laid),
                    "seed {seed}, {classes} classes, {keep:?}, {precision:?}: spike-input dW"
                );
                assert_eq!(
                    bits(&ds_fused.unwrap()),
                    bits(&ds_laid.unwrap()),
                    "seed {seed}, {classes} classes, {keep:?}, {precision:?}: dS of the layer below"
                );
            }
        }
        gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
    }
}

/// What the readout's spike-gradient test feeds both backends: a float-input layer (for a dense
/// tape of its shape) and the gradient's inputs.
struct SpikeGradInputs<'a> {
    x: &'a [f32],
    w: &'a [f32],
    spec: &'a s3gd_core::LayerSpec,
    batch: usize,
    steps: usize,
    g: &'a [f32],
    w3: &'a [f32],
    per_sample: &'a [f32],
    per_neuron: &'a [f32],
}

impl SpikeGradInputs<'_> {
    /// dS of the layer's dense tape from g, W3 and the regularisers' terms, on `backend`.
    fn grad_on<B: Backend>(&self, backend: &B) -> Vec<f32> {
        let out = backend
            .lif_forward_float(
                &backend.upload(self.x).unwrap(),
                self.batch,
                self.steps,
                &backend.upload(self.w).unwrap(),
                self.spec,
                Keep::Dense { band: None },
            )
            .unwrap();
        let reg = s3gd_core::RegGrad {
            per_sample: backend.upload(self.per_sample).unwrap(),
            per_neuron: backend.upload(self.per_neuron).unwrap(),
        };
        let (g, w3) = (
            backend.upload(self.g).unwrap(),
            backend.upload(self.w3).unwrap(),
        );
        let grad = backend
            .readout_spike_grad(&g, &w3, &reg, &out.tape)
            .unwrap();
        backend.download_f32(&grad).unwrap()
    }
}

/// With S3GD_DEBUG_SEED=s (a larger case's seed) and S3GD_DEBUG_BAND=h, prints the dW2 entries where
/// the GPU and the CPU's f64 path differ most.
#[test]
fn debug_one_case() {
    let Some(seed) = std::env::var("S3GD_DEBUG_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let Some(gpu) = gpu() else { return };
    let band: f64 = std::env::var("S3GD_DEBUG_BAND")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.2);
    let (_, case) = larger_cases(seed..seed + 1).next().unwrap();
    let keep = Keep::Sparse { band };
    let got = gradients_on(&gpu, &case, keep);
    let want = gradients_on(&CpuBackend::<f64>::new(), &case, keep);
    let cpu32 = gradients_on(&CpuBackend::<f32>::new(), &case, keep);
    let n = case.config.hidden;
    let mut worst: Vec<(f64, usize)> = got.weights[1]
        .iter()
        .zip(&want.weights[1])
        .enumerate()
        .map(|(k, (a, b))| ((a - b).abs(), k))
        .collect();
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("config {:?}", case.config);
    for &(d, k) in worst.iter().take(12) {
        println!(
            "dW2[{}, {}]: gpu {:e} cpu64 {:e} cpu32 {:e} diff {d:e}",
            k / n,
            k % n,
            got.weights[1][k],
            want.weights[1][k],
            cpu32.weights[1][k]
        );
    }
}

/// The float-input layer (Linear + LIF): spikes equal to the CPU's, and dW of both methods within
/// 1e-4 of the CPU f64 path. cuBLAS sums x . W in another order than the CPU, so a membrane within
/// rounding of threshold could fire on one side only; such cases are skipped and counted. The same
/// with 3xTF32 GEMMs, held to bounds of their own (their products keep ~22 of f32's 24 bits), and
/// the membranes of both within bounds of the f64 path's; and with the int8-split GEMMs, held to
/// fp32's bounds.
#[test]
fn float_input_layer_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f64>::new();
    let (mut compared, mut skipped) = (0, 0);
    // Worst membrane error (|V - V_f64|) and worst dW relative error per GEMM precision.
    let mut worst = [
        (GemmPrecision::Fp32, 0.0f64, 0.0f64),
        (GemmPrecision::Tf32x3, 0.0, 0.0),
        (GemmPrecision::Int8Split, 0.0, 0.0),
    ];
    for seed in fresh_seeds(30) {
        let (spec, batch, steps, w, x) = random_float_layer(seed, 8..80, 8..100, 5..60);
        let v_minus_theta = float_membrane(&cpu, &x, &w, batch, steps, &spec);
        if v_minus_theta
            .iter()
            .any(|v| v.abs() < 1e-5 || (v.abs() - 0.2).abs() < 1e-5)
        {
            skipped += 1;
            continue;
        }
        for (precision, worst_v, worst_dw) in &mut worst {
            gpu.set_gemm_precision(*precision).unwrap();
            let gpu_v = float_membrane(&gpu, &x, &w, batch, steps, &spec);
            for (g, c) in gpu_v.iter().zip(&v_minus_theta) {
                *worst_v = worst_v.max((g - c).abs());
            }
            for (keep, path) in [
                (Keep::Dense { band: None }, None),
                (Keep::Sparse { band: 0.2 }, None),
                (
                    Keep::Sparse { band: 0.2 },
                    Some(FloatWeightGradPath::PerEntry),
                ),
                (Keep::Sparse { band: 0.2 }, Some(FloatWeightGradPath::Gemm)),
                (Keep::Sparse { band: 0.2 }, Some(FloatWeightGradPath::Tiles)),
            ] {
                gpu.set_float_weight_grad_path(path);
                let (g_spikes, g_dw) = float_layer(&gpu, &x, &w, batch, steps, &spec, keep);
                let (c_spikes, c_dw) = float_layer(&cpu, &x, &w, batch, steps, &spec, keep);
                assert_eq!(
                    g_spikes, c_spikes,
                    "seed {seed} {keep:?} {path:?} {precision:?}: spikes differ"
                );
                let err = s3gd_core::testing::relative_error(&g_dw, &c_dw);
                *worst_dw = worst_dw.max(err);
                // The currents come from an f32 GEMM (the CPU sums them in f64): V differs by
                // ~1e-7, which the surrogate amplifies up to 200x near threshold (its relative
                // slope is 200 / (1 + 100 |V - theta|)), so 1e-4 rather than 1e-5. A bound of
                // 5e-5 failed about one run in 25 (5.25e-5, dense method, S3GD_SEED=44943576).
                // 3xTF32 keeps about 22 of f32's 24 bits per product: its worst dW error over
                // 20 runs of 27-30 cases was 1.8e-4 (fp32: 6.9e-5).
                let bound = match precision {
                    GemmPrecision::Tf32x3 => 5e-4,
                    _ => 1e-4,
                };
                assert!(
                    err < bound,
                    "seed {seed} {keep:?} {path:?} {precision:?}: dW relative error {err:e}"
                );
            }
        }
        compared += 1;
    }
    gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
    gpu.set_float_weight_grad_path(None);
    println!(
        "float input: {compared} cases compared, {skipped} skipped near threshold or band edge"
    );
    for (precision, worst_v, worst_dw) in worst {
        println!(
            "float input, {precision:?} GEMMs: worst |V - V_f64| {worst_v:.2e}, worst dW relative error {worst_dw:.2e}"
        );
        // Over 20 runs of 27-30 cases: fp32 0.87-1.6e-6, 3xTF32 1.9-5.6e-6 (currents of order 1).
        let bound = match precision {
            GemmPrecision::Tf32x3 => 3e-5,
            _ => 1e-5,
        };
        assert!(worst_v < bound, "{precision:?}: membrane error {worst_v:e}");
    }
    assert!(compared >= 20);
}

/// The float-input layer's currents GEMM in calls of a few samples each (as TF32 products run it
/// on long batches), each chunk scanned on the side stream beside the next call or all scanned
/// after the last: spikes equal to the CPU's and dW of both methods within 1e-4 of its f64 path
/// (cases near threshold or the band's edge skipped, as above), membranes within 1e-5, and the
/// two scan arrangements give the same bits.
#[test]
fn float_input_forward_in_chunks_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::<f64>::new();
    let (mut compared, mut chunked) = (0, 0);
    for seed in fresh_seeds(12) {
        let (spec, batch, steps, w, x) = random_float_layer_of(seed, 2..10, 8..80, 8..100, 5..60);
        let v_minus_theta = float_membrane(&cpu, &x, &w, batch, steps, &spec);
        if v_minus_theta
            .iter()
            .any(|v| v.abs() < 1e-5 || (v.abs() - 0.2).abs() < 1e-5)
        {
            continue;
        }
        let cpu_layers: Vec<_> = [Keep::Dense { band: None }, Keep::Sparse { band: 0.2 }]
            .into_iter()
            .map(|keep| float_layer(&cpu, &x, &w, batch, steps, &spec, keep))
            .collect();
        for chunk_samples in [1, 2, 3] {
            chunked += usize::from(chunk_samples < batch);
            let mut runs = Vec::new();
            for beside in [true, false] {
                gpu.set_currents_chunk_samples(Some(chunk_samples));
                gpu.set_currents_scan_beside(Some(beside));
                let gpu_v = float_membrane(&gpu, &x, &w, batch, steps, &spec);
                let worst_v = gpu_v
                    .iter()
                    .zip(&v_minus_theta)
                    .map(|(g, c)| (g - c).abs())
                    .fold(0.0f64, f64::max);
                assert!(
                    worst_v < 1e-5,
                    "seed {seed}, {chunk_samples} samples a call, beside {beside}: membrane error {worst_v:e}"
                );
                let mut layers = Vec::new();
                for (keep, (c_spikes, c_dw)) in
                    [Keep::Dense { band: None }, Keep::Sparse { band: 0.2 }]
                        .into_iter()
                        .zip(&cpu_layers)
                {
                    let (g_spikes, g_dw) = float_layer(&gpu, &x, &w, batch, steps, &spec, keep);
                    assert_eq!(
                        &g_spikes, c_spikes,
                        "seed {seed} {keep:?}, {chunk_samples} samples a call: spikes differ"
                    );
                    let err = s3gd_core::testing::relative_error(&g_dw, c_dw);
                    assert!(
                        err < 1e-4,
                        "seed {seed} {keep:?}, {chunk_samples} samples a call: dW relative error {err:e}"
                    );
                    layers.push(g_dw);
                }
                runs.push((gpu_v, layers));
            }
            assert!(
                runs[0] == runs[1],
                "seed {seed}, {chunk_samples} samples a call: scanned beside and after differ"
            );
        }
        compared += 1;
    }
    gpu.set_currents_chunk_samples(None);
    gpu.set_currents_scan_beside(None);
    println!("currents in chunks: {compared} layers compared, {chunked} of them in several calls");
    assert!(compared >= 8 && chunked >= 8);
}

/// V - theta of a float-input layer's forward pass on `backend`, from its dense tape.
fn float_membrane<B: Backend>(
    backend: &B,
    x: &[f32],
    w: &[f32],
    batch: usize,
    steps: usize,
    spec: &s3gd_core::LayerSpec,
) -> Vec<f64> {
    let out = backend
        .lif_forward_float(
            &backend.upload(x).unwrap(),
            batch,
            steps,
            &backend.upload(w).unwrap(),
            spec,
            Keep::Dense { band: None },
        )
        .unwrap();
    match backend.download_tape(&out.tape).unwrap() {
        HostTape::Dense { v_minus_theta, .. } => v_minus_theta,
        _ => panic!("dense tape expected"),
    }
}

/// A float-input layer drawn from `seed`: its spec (widths from the ranges, leak in [0.6, 0.95)),
/// batch (1-4) and steps, weights within twice the usual 1/sqrt(inputs) and inputs in [-1, 1.6).
fn random_float_layer(
    seed: u64,
    inputs: std::ops::Range<usize>,
    neurons: std::ops::Range<usize>,
    steps: std::ops::Range<usize>,
) -> (s3gd_core::LayerSpec, usize, usize, Vec<f32>, Vec<f32>) {
    random_float_layer_of(seed, 1..5, inputs, neurons, steps)
}

/// `random_float_layer` with the batch drawn from `batches`.
fn random_float_layer_of(
    seed: u64,
    batches: std::ops::Range<usize>,
    inputs: std::ops::Range<usize>,
    neurons: std::ops::Range<usize>,
    steps: std::ops::Range<usize>,
) -> (s3gd_core::LayerSpec, usize, usize, Vec<f32>, Vec<f32>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let spec = s3gd_core::LayerSpec {
        inputs: rng.random_range(inputs),
        neurons: rng.random_range(neurons),
        beta: rng.random_range(0.6..0.95),
    };
    let (batch, steps) = (rng.random_range(batches), rng.random_range(steps));
    let bound = 1.0 / (spec.inputs as f64).sqrt();
    let w: Vec<f32> = (0..spec.inputs * spec.neurons)
        .map(|_| (rng.random_range(-bound..bound) * 2.0) as f32)
        .collect();
    let x: Vec<f32> = (0..batch * steps * spec.inputs)
        .map(|_| rng.random_range(-1.0..1.6) as f32)
        .collect();
    (spec, batch, steps, w, x)
}

/// One float-input layer's forward pass (run again when its sparse tape had too little room and
/// the backend grew it, as the trainer does) and dS = 1 at its tape's entries (loss = sum of
/// spikes).
fn float_forward_with_ones<B: Backend>(
    backend: &B,
    xd: &B::Tensor,
    wd: &B::Tensor,
    batch: usize,
    steps: usize,
    spec: &s3gd_core::LayerSpec,
    keep: Keep,
) -> (LayerOutput<B>, B::Tensor) {
    let mut out = backend
        .lif_forward_float(xd, batch, steps, wd, spec, keep)
        .unwrap();
    if backend.tape_stats(&out.tape).unwrap().overflowed {
        out = backend
            .lif_forward_float(xd, batch, steps, wd, spec, keep)
            .unwrap();
    }
    assert!(!backend.tape_stats(&out.tape).unwrap().overflowed);
    let ones =
        s3gd_core::testing::spike_count_loss_grad(backend, &out.tape, batch, steps, spec.neurons);
    (out, ones)
}

/// Spikes and dW of one float-input layer with dS = 1 everywhere (loss = sum of spikes).
fn float_layer<B: Backend>(
    backend: &B,
    x: &[f32],
    w: &[f32],
    batch: usize,
    steps: usize,
    spec: &s3gd_core::LayerSpec,
    keep: Keep,
) -> (Vec<u16>, Vec<f64>) {
    let xd = backend.upload(x).unwrap();
    let wd = backend.upload(w).unwrap();
    let (out, ones) = float_forward_with_ones(backend, &xd, &wd, batch, steps, spec, keep);
    let dw = backend
        .lif_backward_float(&out.tape, &xd, &wd, &ones)
        .unwrap();
    (
        backend
            .download_spikes(&out.spikes)
            .unwrap()
            .to_dense_counts(),
        backend.download(&dw).unwrap(),
    )
}

/// With TF32 products on (TF32, 3xTF32), the float-input layer's weight gradient takes another
/// GEMM form: the adjoint scan (dense method) or the scatter of d (sparse method, GEMM path) writes
/// its array transposed, neurons by rows, and dW comes out stored transposed. dW of both methods,
/// from one tape made in fp32, against the fp32 GEMM's (which the test above holds to the CPU f64
/// path): TF32 within its rounding (inputs to 10-bit mantissas: ~1e-3 relative), 3xTF32 within
/// 1e-4 (products to ~22 bits), on shapes whose widths are not multiples of a warp and whose steps
/// are not multiples of the scan's 16-step runs; the same for the fp16-scaled GEMMs, which keep as
/// many bits as TF32.
#[test]
fn float_input_weight_grad_with_tf32() {
    let Some(gpu) = gpu() else { return };
    for seed in fresh_seeds(8) {
        let (spec, batch, steps, w, x) = random_float_layer(seed, 33..300, 33..300, 20..90);
        let (xd, wd) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        for keep in [Keep::Dense { band: None }, Keep::Sparse { band: 1e9 }] {
            let (out, ones) = float_forward_with_ones(&gpu, &xd, &wd, batch, steps, &spec, keep);
            if matches!(keep, Keep::Sparse { .. }) {
                gpu.set_float_weight_grad_path(Some(FloatWeightGradPath::Gemm));
            }
            let mut dw = Vec::new();
            for precision in [
                GemmPrecision::Fp32,
                GemmPrecision::Tf32,
                GemmPrecision::Tf32x3,
                GemmPrecision::Fp16Scaled,
                GemmPrecision::Fp64Widened,
            ] {
                gpu.set_gemm_precision(precision).unwrap();
                let grad = gpu.lif_backward_float(&out.tape, &xd, &wd, &ones);
                gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
                dw.push(gpu.download(&grad.unwrap()).unwrap());
            }
            gpu.set_float_weight_grad_path(None);
            for (name, got, bound) in [
                ("TF32", &dw[1], 1e-2),
                ("3xTF32", &dw[2], 1e-4),
                ("fp16-scaled", &dw[3], 1e-2),
                ("fp64-widened", &dw[4], 1e-5),
            ] {
                let err = s3gd_core::testing::relative_error(got, &dw[0]);
                println!("{name} dW {keep:?}: relative error {err:.1e} against fp32");
                assert!(
                    err < bound,
                    "seed {seed} {keep:?}: {name} dW relative error {err:e}"
                );
            }
        }
    }
}

/// The float-input layer's sparse dW by its three paths from one tape, on layers wider than a tile
/// block (128 neurons, 256 inputs) and mostly longer than its staged steps (up to 105 a chunk on
/// the H200, in chunks of equal length), half of them with input widths that are multiples of 4
/// and half not (the two ways the tiles stage trace rows on sm_90): the tiles and
/// the GEMM within 1e-5 of the per-entry kernel (which the test above holds to the CPU f64 path),
/// at the default band and with every entry active (more entries in a warp's chunk than the 64 it
/// stages in shared memory: the rest read from the list).
#[test]
fn float_weight_grad_paths_agree() {
    let Some(gpu) = gpu() else { return };
    // The last two layers take 300-340 samples of few steps: many short chunks, each staged with
    // its entries (runs of up to 8 neurons x 70 steps: more than the 64 a warp stages where every
    // entry is active).
    for (k, seed) in fresh_seeds(8).enumerate() {
        // Even layers take inputs a multiple of 4 (on sm_90 the tiles then stage the trace rows by
        // tensor copies), odd ones not (cp.async); most end in a part-filled block of 256 inputs,
        // whose missing inputs both ways stage as zeros.
        let inputs = |lo: usize, hi: usize| {
            let aligned = lo + (seed as usize % ((hi - lo) / 4)) * 4;
            let ni = if k % 2 == 0 {
                aligned
            } else {
                aligned + 1 + seed as usize % 3
            };
            ni..ni + 1
        };
        let (spec, batch, steps, w, x) = if k < 6 {
            random_float_layer(seed, inputs(252, 328), 250..330, 60..150)
        } else {
            random_float_layer_of(seed, 300..340, inputs(120, 200), 40..90, 70..140)
        };
        let (xd, wd) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        for keep in [Keep::Sparse { band: 0.2 }, Keep::Sparse { band: 1e9 }] {
            let (out, ones) = float_forward_with_ones(&gpu, &xd, &wd, batch, steps, &spec, keep);
            let mut dw = Vec::new();
            for path in [
                FloatWeightGradPath::PerEntry,
                FloatWeightGradPath::Gemm,
                FloatWeightGradPath::Tiles,
            ] {
                gpu.set_float_weight_grad_path(Some(path));
                let grad = gpu.lif_backward_float(&out.tape, &xd, &wd, &ones);
                dw.push((path, gpu.download(&grad.unwrap()).unwrap()));
            }
            gpu.set_float_weight_grad_path(None);
            for (path, got) in &dw[1..] {
                let err = s3gd_core::testing::relative_error(got, &dw[0].1);
                println!(
                    "{keep:?}, {} x {} x {} x {}: {path:?} dW within {err:.1e} of PerEntry",
                    batch, steps, spec.inputs, spec.neurons
                );
                assert!(
                    err < 1e-5,
                    "seed {seed} {keep:?} {path:?}: dW relative error {err:e}"
                );
            }
        }
    }
}

/// The int8-split GEMM on the GPU against its CPU twin (s3gd_kernels::int8_split), bit for bit,
/// in every operand layout, with leading dimensions past the rows, inner sizes that are not
/// multiples of the 16-byte padding, rows of zeros, subnormals and a non-finite element, in one
/// chunk of columns or several; and within the split's error bound of the f64 product.
#[test]
fn int8_split_gemm_equals_its_cpu_twin() {
    use s3gd_kernels::int8_split::{int8_split_error_bound, int8_split_gemm};
    let Some(gpu) = gpu() else { return };
    gpu.set_gemm_precision(GemmPrecision::Int8Split).unwrap();
    let slices = s3gd_kernels::INT8_SPLIT_SLICES;
    for seed in fresh_seeds(12) {
        let mut rng = Lcg(seed);
        let (m, n, k) = (1 + rng.below(90), 1 + rng.below(70), 1 + rng.below(300));
        for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ops = GemmOperands::random(&mut rng, (m, n, k), (transa, transb), seed % 2 == 0);
            // Half the cases hold the products of a few columns at a time.
            gpu.set_int8_split_group_bytes((seed % 4 < 2).then_some(slices * m * 4 * 3));
            let got = ops.gemm_on(&gpu);
            let (a, lda, b, ldb) = (&ops.a, ops.lda, &ops.b, ops.ldb);
            let want = int8_split_gemm(transa, transb, (m, n, k), a, lda, b, ldb, slices);
            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "seed {seed} {m}x{n}x{k} T{transa}{transb}: output {idx} {g:e} against the twin's {w:e}"
                );
            }
            for j in 0..n {
                for i in 0..m {
                    let row_a = (0..k).map(|kk| a[ops.a_at(i, kk)]);
                    let row_b = (0..k).map(|kk| b[ops.b_at(j, kk)]);
                    let exact: f64 = row_a
                        .clone()
                        .zip(row_b.clone())
                        .map(|(x, y)| f64::from(x) * f64::from(y))
                        .sum();
                    let max_a = row_a.map(f32::abs).fold(0.0f32, f32::max);
                    let max_b = row_b.map(f32::abs).fold(0.0f32, f32::max);
                    let bound = int8_split_error_bound(exact, k, max_a, max_b, slices);
                    let g = f64::from(got[i + j * m]);
                    assert!(
                        !exact.is_finite() || bound.is_infinite() || (g - exact).abs() <= bound,
                        "seed {seed} T{transa}{transb}: ({i}, {j}) {g:e} against {exact:e}, bound {bound:e}"
                    );
                }
            }
        }
    }
    gpu.set_int8_split_group_bytes(None);
    // An empty inner dimension gives zeros; one past the int32 sums' reach is a typed error.
    let zeros = gpu
        .gemm_host(false, false, (3, 2, 0), &[1.0; 3], 3, &[1.0; 2], 1)
        .unwrap();
    assert_eq!(zeros, vec![0.0; 6]);
    let k = 140_000;
    let long = vec![1.0f32; k];
    match gpu.gemm_host(true, false, (1, 1, k), &long, k, &long, k) {
        Err(CoreError::Device(e)) => {
            let message = e.to_string();
            assert!(message.contains("inner dimension"), "{message}");
        }
        other => panic!("k = {k}: expected a device error, got {other:?}"),
    }
    gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
}

/// The fp16-scaled GEMM on the GPU against its CPU twin (s3gd_kernels::fp16_scaled): every output
/// within the twin's bound for f32 sums of the same rounded products, in every operand layout, with
/// leading dimensions past the rows, inner sizes that are not multiples of the 8-element padding,
/// rows of zeros, f32 subnormals, a row that reaches fp16's subnormals after scaling, and a
/// non-finite element. cuBLAS's order of sums is its own, so the outputs are held to a bound
/// rather than to bits.
#[test]
fn fp16_scaled_gemm_within_bound_of_its_cpu_twin() {
    use s3gd_kernels::fp16_scaled::fp16_scaled_gemm;
    let Some(gpu) = gpu() else { return };
    gpu.set_gemm_precision(GemmPrecision::Fp16Scaled).unwrap();
    let mut worst = 0.0f64;
    for seed in fresh_seeds(12) {
        let mut rng = Lcg(seed);
        let (m, n, k) = (1 + rng.below(90), 1 + rng.below(70), 1 + rng.below(300));
        for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut ops =
                GemmOperands::random(&mut rng, (m, n, k), (transa, transb), seed % 2 == 0);
            // A row of op(a) falling by halves from its largest, through fp16's subnormals (below
            // 2^-28 of it) to zero after scaling, with signs alternating (it may replace the row
            // of zeros).
            let falling_row = rng.below(m);
            for kk in 0..k {
                let at = ops.a_at(falling_row, kk);
                let sign = if kk % 2 == 0 { 1.0 } else { -1.0 };
                ops.a[at] = sign * 1.37 * (-(kk as f32).min(120.0)).exp2();
            }
            let got = ops.gemm_on(&gpu);
            let (a, lda, b, ldb) = (&ops.a, ops.lda, &ops.b, ops.ldb);
            let want = fp16_scaled_gemm(transa, transb, (m, n, k), a, lda, b, ldb);
            for (idx, &g) in got.iter().enumerate() {
                let (w, bound) = (want.values[idx], want.sum_bounds[idx]);
                if w.is_nan() {
                    assert!(
                        g.is_nan(),
                        "seed {seed} T{transa}{transb}: output {idx} {g:e}, want NaN"
                    );
                    continue;
                }
                let error = (f64::from(g) - w).abs();
                assert!(
                    error <= bound,
                    "seed {seed} {m}x{n}x{k} T{transa}{transb}: output {idx} {g:e} against the twin's {w:e}, bound {bound:e}"
                );
                if w != 0.0 {
                    worst = worst.max(error / w.abs());
                }
            }
        }
    }
    println!("fp16-scaled GEMM: largest error against the twin relative to the output {worst:.2e}");
    let zeros = gpu
        .gemm_host(false, false, (3, 2, 0), &[1.0; 3], 3, &[1.0; 2], 1)
        .unwrap();
    assert_eq!(zeros, vec![0.0; 6]);
    gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
}

/// The f32 GEMM on f64 tensor cores against its CPU twin (s3gd_kernels::fp64_widened): every
/// output within half an f32 ulp plus the two f64 sums' roundings of the twin's f64 sum, in every
/// operand layout, with leading dimensions past the rows, rows of zeros, subnormals and a
/// non-finite element; and over the harness's kind of product (k = 4096) nearer the f64 sum than
/// the fp32 GEMM's outputs.
#[test]
fn fp64_widened_gemm_within_bound_of_its_cpu_twin() {
    use s3gd_kernels::fp64_widened::fp64_widened_gemm;
    let Some(gpu) = gpu() else { return };
    gpu.set_gemm_precision(GemmPrecision::Fp64Widened).unwrap();
    for seed in fresh_seeds(12) {
        let mut rng = Lcg(seed);
        let (m, n, k) = (1 + rng.below(90), 1 + rng.below(70), 1 + rng.below(300));
        for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ops = GemmOperands::random(&mut rng, (m, n, k), (transa, transb), seed % 2 == 0);
            let got = ops.gemm_on(&gpu);
            let (a, lda, b, ldb) = (&ops.a, ops.lda, &ops.b, ops.ldb);
            let want = fp64_widened_gemm(transa, transb, (m, n, k), a, lda, b, ldb);
            for (idx, &g) in got.iter().enumerate() {
                let (w, bound) = (want.values[idx], want.bounds[idx]);
                if !w.is_finite() {
                    assert!(
                        g.is_nan() && w.is_nan() || f64::from(g) == w,
                        "seed {seed} T{transa}{transb}: output {idx} {g:e}, want {w:e}"
                    );
                    continue;
                }
                let error = (f64::from(g) - w).abs();
                assert!(
                    error <= bound,
                    "seed {seed} {m}x{n}x{k} T{transa}{transb}: output {idx} {g:e} against the twin's {w:e}, bound {bound:e}"
                );
            }
        }
    }
    // Long sums of mixed signs: the widened GEMM's largest error over the RMS output against the
    // f64 sums, beside the fp32 GEMM's.
    let mut rng = Lcg(fresh_seeds(1).start);
    let (m, n, k) = (64, 48, 4096);
    let ops = GemmOperands::random(&mut rng, (m, n, k), (false, false), false);
    let want = fp64_widened_gemm(false, false, (m, n, k), &ops.a, ops.lda, &ops.b, ops.ldb);
    let rms = (want.values.iter().map(|v| v * v).sum::<f64>() / want.values.len() as f64).sqrt();
    let mut errors = Vec::new();
    for precision in [GemmPrecision::Fp64Widened, GemmPrecision::Fp32] {
        gpu.set_gemm_precision(precision).unwrap();
        let got = ops.gemm_on(&gpu);
        let worst = got
            .iter()
            .zip(&want.values)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0f64, f64::max);
        errors.push(worst / rms);
    }
    println!(
        "k = {k}: largest error over the RMS output, fp64-widened {:.2e}, fp32 {:.2e}",
        errors[0], errors[1]
    );
    assert!(errors[0] < errors[1], "{errors:?}");
    let zeros = gpu
        .gemm_host(false, false, (3, 2, 0), &[1.0; 3], 3, &[1.0; 2], 1)
        .unwrap();
    assert_eq!(zeros, vec![0.0; 6]);
    gpu.set_gemm_precision(GemmPrecision::Fp32).unwrap();
}

/// Column-major operands of a split GEMM test: op(a) m x k and op(b) k x n in the layout
/// `transa` / `transb` names, leading dimensions up to two past the rows, magnitudes over
/// 2^(+-10), a row of zeros in op(a), a subnormal in op(b) and, where asked, an infinity.
struct GemmOperands {
    transa: bool,
    transb: bool,
    shape: (usize, usize, usize),
    a: Vec<f32>,
    lda: usize,
    b: Vec<f32>,
    ldb: usize,
}

impl GemmOperands {
    fn random(
        rng: &mut Lcg,
        (m, n, k): (usize, usize, usize),
        (transa, transb): (bool, bool),
        with_infinity: bool,
    ) -> Self {
        let (a_rows, a_cols) = if transa { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if transb { (n, k) } else { (k, n) };
        let (lda, ldb) = (a_rows + rng.below(3), b_rows + rng.below(3));
        let a = (0..lda * a_cols).map(|_| rng.wide_value()).collect();
        let b = (0..ldb * b_cols).map(|_| rng.wide_value()).collect();
        let mut ops = Self {
            transa,
            transb,
            shape: (m, n, k),
            a,
            lda,
            b,
            ldb,
        };
        let zero_row = rng.below(m);
        for kk in 0..k {
            let at = ops.a_at(zero_row, kk);
            ops.a[at] = 0.0;
        }
        let at = ops.b_at(rng.below(n), rng.below(k));
        ops.b[at] = f32::from_bits(1 + rng.below(1000) as u32);
        if with_infinity {
            let at = ops.b_at(rng.below(n), rng.below(k));
            ops.b[at] = f32::NEG_INFINITY;
        }
        ops
    }

    /// Index in `a` of element kk of row r of op(a).
    fn a_at(&self, r: usize, kk: usize) -> usize {
        if self.transa {
            kk + r * self.lda
        } else {
            r + kk * self.lda
        }
    }

    /// Index in `b` of element kk of column c of op(b).
    fn b_at(&self, c: usize, kk: usize) -> usize {
        if self.transb {
            c + kk * self.ldb
        } else {
            kk + c * self.ldb
        }
    }

    /// The product as the GPU computes it with the precision set.
    fn gemm_on(&self, gpu: &CudaBackend) -> Vec<f32> {
        gpu.gemm_host(
            self.transa,
            self.transb,
            self.shape,
            &self.a,
            self.lda,
            &self.b,
            self.ldb,
        )
        .unwrap()
    }
}

/// A small deterministic generator for the split GEMM tests' shapes and values.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 53) as f64
    }
    /// Uniform in (-1, 1) times 2^(-10..10): magnitudes spread over six decades within a row.
    fn wide_value(&mut self) -> f32 {
        ((self.unit() * 2.0 - 1.0) * (self.unit() * 20.0 - 10.0).exp2()) as f32
    }
}

/// The device timeline of profiled launches (`s3gd-bench step --timeline`): the last pass's
/// launches of a backward on the tiled path, in launch order, each ending after it starts, the
/// flat list's launch ending before the tiled kernel (after it on the main stream) and dW by
/// columns (on the side stream, after an event) start; reading the timeline clears the records.
/// (Passes may differ in launches: some path choices follow the previous pass's counts.)
#[test]
fn profiled_timeline_keeps_launch_order() {
    let Some(gpu) = gpu() else { return };
    gpu.set_input_grad_path(Some(InputGradPath::Tiled));
    let (seed, case) = larger_cases(fresh_seeds(1))
        .next()
        .expect("one random case");
    let keep = Keep::Sparse { band: 0.2 };
    let device = gpu.device();
    device.set_profiling(true);
    gradients_on(&gpu, &case, keep);
    let first_pass = device.profiled_launches();
    gradients_on(&gpu, &case, keep);
    let last_pass = device.profiled_launches() - first_pass;
    assert!(
        first_pass > 0 && last_pass > 0,
        "seed {seed}: nothing recorded"
    );
    let spans = device
        .profile_timeline(last_pass)
        .expect("the recorded launches");
    assert_eq!(device.profiled_launches(), 0, "seed {seed}: records left");
    device.set_profiling(false);
    gpu.set_input_grad_path(None);
    assert_eq!(spans.len(), last_pass, "seed {seed}");
    assert_eq!(spans[0].start_ms, 0.0, "seed {seed}");
    for span in &spans {
        assert!(span.end_ms >= span.start_ms, "seed {seed}: {span:?}");
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|span| span.name.starts_with(name))
            .unwrap_or_else(|| panic!("seed {seed}: no {name} in {spans:?}"))
    };
    let flat = find("flatten_by_sample");
    for later in ["tiled_input_grad_f32", "weight_grad_by_columns"] {
        let span = find(later);
        assert!(
            span.start_ms >= flat.end_ms,
            "seed {seed}: {span:?} before {flat:?}"
        );
    }
}
