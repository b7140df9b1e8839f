//! The float-input layer (Linear + LIF): with 0/1 inputs it is the spike-input layer (same spikes,
//! same gradients), and with real-valued inputs its sparse gradient at a band holding every entry
//! equals its dense one.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use s3gd_core::testing::{random_spikes, relative_error};
use s3gd_core::{Backend, CpuBackend, Keep, LayerSpec};

fn layer(seed: u64) -> (LayerSpec, Vec<f32>, usize, usize) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let spec = LayerSpec {
        inputs: rng.random_range(3..20),
        neurons: rng.random_range(2..40),
        beta: rng.random_range(0.5..0.97),
    };
    let scale = 2.0 / (spec.inputs as f64).sqrt();
    let w = (0..spec.inputs * spec.neurons)
        .map(|_| (rng.random_range(-0.5..1.0) * scale) as f32)
        .collect();
    (spec, w, rng.random_range(1..5), rng.random_range(3..30))
}

#[test]
fn binary_float_input_is_the_spike_layer() {
    let cpu = CpuBackend::<f64>::new();
    for seed in 0..40 {
        let (spec, w, batch, steps) = layer(seed);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed + 100);
        let spikes = {
            // binary: no repeated units in one step
            let s = random_spikes(&mut rng, batch, steps, spec.inputs, 0.3);
            let dense: Vec<u8> = s
                .to_dense_counts()
                .iter()
                .map(|&c| c.min(1) as u8)
                .collect();
            s3gd_core::SpikeEvents::from_dense_counts(batch, steps, spec.inputs, &dense).unwrap()
        };
        let x: Vec<f32> = spikes.to_dense_counts().iter().map(|&c| c as f32).collect();
        for keep in [Keep::Dense { band: None }, Keep::Sparse { band: 0.2 }] {
            let wd = cpu.upload(&w).unwrap();
            let from_spikes = cpu.lif_forward(&spikes, &wd, &spec, keep).unwrap();
            let xd = cpu.upload(&x).unwrap();
            let from_float = cpu
                .lif_forward_float(&xd, batch, steps, &wd, &spec, keep)
                .unwrap();
            assert_eq!(from_spikes.spikes, from_float.spikes, "seed {seed}: spikes");
            assert_eq!(
                cpu.download_tape(&from_spikes.tape).unwrap(),
                cpu.download_tape(&from_float.tape).unwrap(),
                "seed {seed}: tapes"
            );
            let len = match keep {
                Keep::Dense { .. } => batch * steps * spec.neurons,
                _ => cpu.tape_stats(&from_spikes.tape).unwrap().active as usize,
            };
            let grad: Vec<f32> = (0..len)
                .map(|k| ((k * 7919) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let grad = cpu.upload(&grad).unwrap();
            let (dw_spikes, _) = cpu
                .lif_backward(&from_spikes.tape, &spikes, &wd, &grad, None)
                .unwrap();
            let dw_float = cpu
                .lif_backward_float(&from_float.tape, &xd, &wd, &grad)
                .unwrap();
            let err = relative_error(
                &cpu.download(&dw_float).unwrap(),
                &cpu.download(&dw_spikes).unwrap(),
            );
            assert!(err < 1e-12, "seed {seed} {keep:?}: dW {err:e}");
        }
    }
}

#[test]
fn real_valued_input_sparse_with_a_wide_band_equals_dense() {
    let cpu = CpuBackend::<f64>::new();
    for seed in 0..40 {
        let (spec, w, batch, steps) = layer(seed);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed + 200);
        let x: Vec<f32> = (0..batch * steps * spec.inputs)
            .map(|_| rng.random_range(-1.0..1.5) as f32)
            .collect();
        let (wd, xd) = (cpu.upload(&w).unwrap(), cpu.upload(&x).unwrap());
        let dense = cpu
            .lif_forward_float(&xd, batch, steps, &wd, &spec, Keep::Dense { band: None })
            .unwrap();
        let sparse = cpu
            .lif_forward_float(&xd, batch, steps, &wd, &spec, Keep::Sparse { band: 1e9 })
            .unwrap();
        // dS = 1 at every entry, in each tape's layout.
        let dense_grad = cpu
            .upload(&vec![1.0; batch * steps * spec.neurons])
            .unwrap();
        let active = cpu.tape_stats(&sparse.tape).unwrap().active as usize;
        let sparse_grad = cpu.upload(&vec![1.0; active]).unwrap();
        let a = cpu
            .lif_backward_float(&dense.tape, &xd, &wd, &dense_grad)
            .unwrap();
        let b = cpu
            .lif_backward_float(&sparse.tape, &xd, &wd, &sparse_grad)
            .unwrap();
        let err = relative_error(&cpu.download(&b).unwrap(), &cpu.download(&a).unwrap());
        assert!(err < 1e-12, "seed {seed}: {err:e}");
    }
}
