//! Gradient checks on many small random networks: reverse-mode BPTT against forward-mode tangents,
//! sparse (S3GD) against dense-with-truncated-surrogate, and f32 against f64.

use s3gd_core::testing::{
    active_positions, conformance_gradients, conformance_gradients_on, gradient_errors,
    gradients_on, reference, relative_error, Case, CaseSizes,
};
use s3gd_core::{CpuBackend, Keep, Method};

const SEEDS: u64 = 60;

fn flat(g: &[Vec<f64>; 3]) -> Vec<f64> {
    g.iter().flatten().copied().collect()
}

#[test]
fn reverse_mode_equals_forward_mode_tangents_in_f64() {
    let cpu = CpuBackend::<f64>::new();
    let mut nonzero = 0;
    for seed in 0..SEEDS {
        let case = Case::random(seed);
        for band in [None, Some(0.2)] {
            let tangent = reference::tangent_gradient(&case, band);
            let (plain_reverse, _) = reference::reverse(&case, band);
            let err = relative_error(&flat(&plain_reverse), &flat(&tangent));
            assert!(
                err < 1e-9,
                "seed {seed} band {band:?}: reference reverse vs tangent {err:e}"
            );

            let ours = gradients_on(&cpu, &case, Keep::Dense { band });
            for m in 0..3 {
                let err = relative_error(&ours.weights[m], &tangent[m]);
                assert!(err < 1e-9, "seed {seed} band {band:?} dW{}: {err:e}", m + 1);
            }
            if tangent.iter().flatten().any(|&g| g != 0.0) {
                nonzero += 1;
            }
            let loss = reference::loss(&case);
            assert!((ours.terms[0] - loss).abs() <= 1e-12 * loss.abs().max(1.0));
        }
    }
    assert!(
        nonzero > SEEDS,
        "too few cases had a non-zero gradient: {nonzero}"
    );
}

#[test]
fn dense_spike_gradient_matches_the_plain_reference() {
    let cpu = CpuBackend::<f64>::new();
    for seed in 0..SEEDS {
        let case = Case::random(seed);
        let (_, ds1) = reference::reverse(&case, None);
        let ours = gradients_on(&cpu, &case, Keep::Dense { band: None });
        let err = relative_error(&ours.spikes1, &ds1);
        assert!(err < 1e-12, "seed {seed}: dS1 {err:e}");
    }
}

/// Sparse at `band` against dense with the surrogate zeroed outside `band`: weights everywhere,
/// dS1 at every entry where layer 1 is active.
fn sparse_vs_truncated_dense<F: s3gd_core::Real>(band: f64, tolerance: f64) -> usize {
    let cpu = CpuBackend::<F>::new();
    let mut active_total = 0;
    for seed in 0..SEEDS {
        let case = Case::random(seed);
        let sparse = gradients_on(&cpu, &case, Keep::Sparse { band });
        let dense = gradients_on(&cpu, &case, Keep::Dense { band: Some(band) });
        let errors = gradient_errors(&sparse, &dense);
        for m in 0..3 {
            assert!(
                errors[m] <= tolerance,
                "{} seed {seed} band {band}: dW{} {:e}",
                F::NAME,
                m + 1,
                errors[m]
            );
        }
        let active = active_positions(&sparse.tapes[0]);
        active_total += active.len();
        let at = |g: &[f64]| active.iter().map(|&p| g[p]).collect::<Vec<_>>();
        let err = relative_error(&at(&sparse.spikes1), &at(&dense.spikes1));
        assert!(
            err <= tolerance,
            "{} seed {seed}: dS1 at active entries {err:e}",
            F::NAME
        );
        assert_eq!(
            sparse.terms, dense.terms,
            "the forward pass does not depend on the method"
        );
    }
    active_total
}

#[test]
fn sparse_with_a_band_holding_every_entry_equals_dense() {
    sparse_vs_truncated_dense::<f64>(1e9, 1e-12);
    sparse_vs_truncated_dense::<f32>(1e9, 1e-5);
    // and the truncated surrogate with such a band is the plain one
    let cpu = CpuBackend::<f64>::new();
    for seed in 0..10 {
        let case = Case::random(seed);
        let sparse = gradients_on(&cpu, &case, Keep::Sparse { band: 1e9 });
        let plain = gradients_on(&cpu, &case, Keep::Dense { band: None });
        assert!(gradient_errors(&sparse, &plain)[..3]
            .iter()
            .all(|&e| e < 1e-12));
    }
}

#[test]
fn sparse_at_the_paper_band_equals_dense_with_the_masked_surrogate() {
    let active = sparse_vs_truncated_dense::<f64>(0.2, 1e-12);
    assert!(
        active > 100,
        "the random cases put too few entries in the band: {active}"
    );
    sparse_vs_truncated_dense::<f32>(0.2, 1e-5);
    sparse_vs_truncated_dense::<f64>(0.05, 1e-12);
}

#[test]
fn f32_agrees_with_f64_for_both_methods() {
    let cpu32 = CpuBackend::<f32>::new();
    for method in [Method::Dense, Method::Sparse { band: 0.2 }] {
        let report = conformance_gradients(&cpu32, method, 0..SEEDS, 1e-4, 1e-5);
        assert!(
            report.compared >= SEEDS as usize * 3 / 4,
            "{method:?}: only {} of {SEEDS} cases compared",
            report.compared
        );
        assert!(
            report.ill_conditioned * 20 <= report.compared,
            "{method:?}: {} of {} cases too ill-conditioned for f32",
            report.ill_conditioned,
            report.compared
        );
        println!("f32 vs f64 {method:?}: {report:?}");
    }
}

#[test]
fn threads_do_not_change_results() {
    let one = CpuBackend::<f32>::with_threads(1).unwrap();
    let two = CpuBackend::<f32>::with_threads(2).unwrap();
    for seed in 0..10 {
        let case = Case::random(seed);
        for keep in [Keep::Sparse { band: 0.2 }, Keep::Dense { band: None }] {
            assert_eq!(
                gradients_on(&one, &case, keep),
                gradients_on(&two, &case, keep)
            );
        }
    }
}

#[test]
fn f32_agrees_with_f64_on_larger_networks() {
    // Sizes past one 32-neuron tile and a few hundred steps of softmax saturation: the loss's
    // p - 1 must not cancel away in f32.
    let cpu32 = CpuBackend::<f32>::new();
    let cases = (0..16u64).map(|seed| {
        let sizes = CaseSizes {
            batch: 3 + (seed % 3) as usize,
            steps: 30 + (seed * 7 % 40) as usize,
            inputs: 40 + (seed * 11 % 50) as usize,
            hidden: 33 + (seed * 13 % 70) as usize,
            classes: 3 + (seed % 5) as usize,
        };
        (seed, Case::with_sizes(seed + 1000, sizes))
    });
    let cases: Vec<_> = cases.collect();
    for method in [Method::Dense, Method::Sparse { band: 0.2 }] {
        let report = conformance_gradients_on(&cpu32, method, cases.clone(), 0.0, 1e-5);
        assert_eq!(report.compared, cases.len());
        println!("f32 vs f64 larger {method:?}: {report:?}");
    }
}
