//! Short training runs on the synthetic spike-timing task: the loss drops and test accuracy climbs
//! with both the dense and the sparse method.

use s3gd_core::synthetic::SpikeTimingTask;
use s3gd_core::{
    AdamSpec, CpuBackend, HostWeights, LossSpec, Method, NetworkConfig, Readout, ReadoutSpec,
    Trainer, WeightInit,
};

fn config() -> NetworkConfig {
    let beta = (-1.0f64 / 10.0).exp();
    NetworkConfig {
        inputs: 40,
        hidden: 48,
        classes: 4,
        steps: 40,
        beta,
        readout: ReadoutSpec {
            inputs: 48,
            classes: 4,
            beta,
            mode: Readout::Max,
        },
        loss: LossSpec::paper(1.0),
        adam: AdamSpec::paper(5e-3),
    }
}

fn train(method: Method) -> (f64, f64, f64) {
    let cfg = config();
    let task = SpikeTimingTask::new(cfg.classes, cfg.inputs, cfg.steps, 11);
    let cpu = CpuBackend::<f32>::new();
    let weights = HostWeights::init(&cfg, WeightInit::NormalLeakScaled { scale: 20.0 }, 3);
    let mut trainer = Trainer::new(&cpu, cfg, method, &weights).unwrap();
    let (test_x, test_y) = task.batch(256, 999);
    let first = trainer.evaluate(&cpu, &test_x, &test_y).unwrap();
    let mut active = 0.0;
    for step in 0..150 {
        let (x, y) = task.batch(32, step);
        let report = trainer.step(&cpu, &x, &y).unwrap();
        active = report.layers[1].active_fraction();
    }
    let last = trainer.evaluate(&cpu, &test_x, &test_y).unwrap();
    println!(
        "{}: loss {:.3} -> {:.3}, accuracy {:.3}, layer-2 active fraction {:.4}",
        method.name(),
        first.loss,
        last.loss,
        last.correct as f64 / 256.0,
        active
    );
    (first.loss, last.loss, last.correct as f64 / 256.0)
}

#[test]
fn both_methods_learn_the_spike_timing_task() {
    for method in [Method::Dense, Method::Sparse { band: 0.2 }] {
        let (first, last, accuracy) = train(method);
        assert!(last < 0.5 * first, "{method:?}: loss {first} -> {last}");
        assert!(accuracy > 0.9, "{method:?}: accuracy {accuracy}");
    }
}
