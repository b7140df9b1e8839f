//! Typed errors for bad shapes, bad settings, empty batches and a non-finite loss; never a panic.

use s3gd_core::testing::Case;
use s3gd_core::{Backend, CoreError, CpuBackend, HostWeights, Keep, Method, SpikeEvents, Trainer};

fn case() -> Case {
    Case::random(5)
}

#[test]
fn wrong_weight_shapes_are_rejected() {
    let cpu = CpuBackend::<f32>::new();
    let c = case();
    let mut w = c.weights.clone();
    w.w2.pop();
    let err = Trainer::new(&cpu, c.config, Method::Dense, &w)
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("w2"), "{err}");

    let x = cpu.upload_spikes(&c.input).unwrap();
    let short = cpu.upload(&c.weights.w1[1..]).unwrap();
    let err = cpu
        .lif_forward(&x, &short, &c.config.layer1(), Keep::Nothing)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            CoreError::Shape {
                op: "lif_forward",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_batches_are_rejected() {
    let cpu = CpuBackend::<f32>::new();
    let c = case();
    let mut trainer = Trainer::new(&cpu, c.config, Method::Dense, &c.weights).unwrap();

    let wrong_units = SpikeEvents::from_dense_counts(
        1,
        c.config.steps,
        c.config.inputs + 1,
        &vec![0u8; c.config.steps * (c.config.inputs + 1)],
    )
    .unwrap();
    let err = trainer.step(&cpu, &wrong_units, &[0]).err().unwrap();
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");

    let err = trainer.step(&cpu, &c.input, &c.labels[1..]).err().unwrap();
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");

    let mut labels = c.labels.clone();
    labels[0] = c.config.classes as u32;
    let err = trainer.step(&cpu, &c.input, &labels).err().unwrap();
    assert!(matches!(err, CoreError::Label { sample: 0, .. }), "{err}");

    let empty =
        SpikeEvents::from_dense_counts::<u8>(0, c.config.steps, c.config.inputs, &[]).unwrap();
    let err = trainer.step(&cpu, &empty, &[]).err().unwrap();
    assert!(matches!(err, CoreError::EmptyBatch { .. }), "{err}");
    assert_eq!(trainer.steps_taken(), 0);
}

#[test]
fn bad_settings_are_rejected() {
    let cpu = CpuBackend::<f32>::new();
    let c = case();
    for band in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = Trainer::new(&cpu, c.config, Method::Sparse { band }, &c.weights)
            .err()
            .unwrap();
        assert!(
            matches!(err, CoreError::Config { name: "band", .. }),
            "{err}"
        );
    }
    let mut cfg = c.config;
    cfg.beta = 1.5;
    let err = Trainer::new(&cpu, cfg, Method::Dense, &c.weights)
        .err()
        .unwrap();
    assert!(
        matches!(err, CoreError::Config { name: "beta", .. }),
        "{err}"
    );
}

#[test]
fn mismatched_tapes_are_rejected() {
    let cpu = CpuBackend::<f64>::new();
    let c = case();
    let x = cpu.upload_spikes(&c.input).unwrap();
    let w1 = cpu.upload(&c.weights.w1).unwrap();
    let w2 = cpu.upload(&c.weights.w2).unwrap();
    let l1 = cpu
        .lif_forward(&x, &w1, &c.config.layer1(), Keep::Sparse { band: 0.2 })
        .unwrap();
    let l2 = cpu
        .lif_forward(
            &l1.spikes,
            &w2,
            &c.config.layer2(),
            Keep::Dense { band: None },
        )
        .unwrap();
    let ds = cpu
        .zeros(c.input.batch() * c.config.steps * c.config.hidden)
        .unwrap();
    let reg = s3gd_core::RegGrad {
        per_sample: cpu.zeros(c.input.batch()).unwrap(),
        per_neuron: cpu.zeros(c.input.batch() * c.config.hidden).unwrap(),
    };
    let err = cpu
        .lif_backward(&l2.tape, &l1.spikes, &w2, &ds, Some((&l1.tape, &reg)))
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Tape { .. }), "{err}");

    let inference = cpu
        .lif_forward(&x, &w1, &c.config.layer1(), Keep::Nothing)
        .unwrap();
    let err = cpu
        .lif_backward(&inference.tape, &x, &w1, &ds, None)
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Tape { .. }), "{err}");
}

#[test]
fn a_nan_loss_names_the_step_and_leaves_the_weights_alone() {
    let cpu = CpuBackend::<f32>::new();
    for readout in [s3gd_core::Readout::Max, s3gd_core::Readout::Sum] {
        let mut c = case();
        c.config.readout.mode = readout;
        let mut trainer =
            Trainer::new(&cpu, c.config, Method::Sparse { band: 0.2 }, &c.weights).unwrap();
        trainer.step(&cpu, &c.input, &c.labels).unwrap();
        let mut poisoned = trainer.state(&cpu).unwrap();
        poisoned.weights.w1[0] = f32::NAN;
        let mut trainer =
            Trainer::from_state(&cpu, c.config, Method::Sparse { band: 0.2 }, &poisoned).unwrap();
        let err = trainer.step(&cpu, &c.input, &c.labels).err().unwrap();
        assert!(
            matches!(err, CoreError::NonFiniteLoss { step: 2, .. }),
            "{readout}: {err}"
        );
        assert!(err.to_string().contains("step 2"), "{err}");
        assert_eq!(trainer.steps_taken(), 1);
        let after: HostWeights = trainer.weights(&cpu).unwrap();
        let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (a, p) in after
            .as_array()
            .into_iter()
            .zip(poisoned.weights.as_array())
        {
            assert_eq!(bits(a), bits(p), "the weights changed after a NaN loss");
        }
    }
}
