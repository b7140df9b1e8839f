//! The binary end to end on the CPU, on tiny runs: every output file with its exact columns, eval,
//! `grads` tensors and shapes, resume == uninterrupted (bitwise), sweep-band, N-MNIST and SHD on
//! fixture data, and the messages of errors a user can make.
//!
//! Fashion-MNIST runs read the embedded sample (`--data-dir <workspace>/datasets/sample`, which holds
//! `fashion-mnist/`), so they do not depend on what else the machine has.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use s3gd_train::checkpoint;
use s3gd_train::record::{EPOCHS_COLUMNS, STEPS_COLUMNS};
use s3gd_train::tensors::TensorFile;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("datasets")
        .join("sample")
}

fn s3gd_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s3gd-train"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

/// Runs the binary and requires success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = s3gd_train(args);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary and requires failure with `code`; returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = s3gd_train(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The rows of a CSV file, header first.
fn csv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The tiny Fashion-MNIST run of these tests: 64 train samples in batches of 16 (4 steps an epoch).
fn tiny_fmnist<'a>(out: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--hidden",
        "16",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data-dir",
        data,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn tiny_run_writes_every_file_and_eval_and_grads_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = sample_dir();
    let stdout = ok(&tiny_fmnist(
        s(&out),
        s(&data),
        &["--epochs", "2", "--method", "both"],
    ));
    assert!(stdout.contains("summary: fmnist, method both"), "{stdout}");
    assert!(
        stdout.contains("sparse vs dense: layer-2 backward"),
        "{stdout}"
    );
    assert!(stdout.contains("data: "), "{stdout}");

    let steps = csv(&out.join("steps.csv"));
    assert_eq!(steps[0], STEPS_COLUMNS);
    assert_eq!(steps.len(), 1 + 2 * 2 * 4, "2 methods x 2 epochs x 4 steps");
    assert!(steps[1..].iter().all(|r| r.len() == STEPS_COLUMNS.len()));
    assert_eq!(steps[1][..3], ["1", "1", "dense"]);
    assert_eq!(steps[16][..3], ["2", "8", "sparse"]);
    let active_l2: f64 = steps[16][5].parse().unwrap();
    assert!(
        active_l2 > 0.0 && active_l2 < 0.5,
        "sparse layer 2 active fraction {active_l2}"
    );
    assert_eq!(steps[1][5], "1", "dense works on every entry");
    assert_eq!(
        steps[1][3], steps[9][3],
        "same weights and batch: same first loss"
    );

    let epochs = csv(&out.join("epochs.csv"));
    assert_eq!(epochs[0], EPOCHS_COLUMNS);
    let keys: Vec<(&str, &str)> = epochs[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("1", "dense"),
            ("2", "dense"),
            ("1", "sparse"),
            ("2", "sparse")
        ]
    );

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["settings"]["hidden"], 16);
    assert_eq!(config["settings"]["method"], "both");
    assert!(
        config["device"]
            .as_str()
            .unwrap()
            .starts_with("cpu (1 threads"),
        "{}",
        config["device"]
    );
    assert_eq!(config["versions"]["s3gd_train"], env!("CARGO_PKG_VERSION"));
    assert!(config["data"]["source"]
        .as_str()
        .unwrap()
        .contains("fashion-mnist"));

    let sparse_checkpoint = out.join("checkpoint-sparse.safetensors");
    assert!(out.join("checkpoint-dense.safetensors").is_file());
    let saved = checkpoint::load(&sparse_checkpoint).unwrap();
    assert_eq!((saved.epoch, saved.state.step), (2, 8));
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // eval on the same 32 test samples reports the last epoch's test accuracy.
    let eval = ok(&[
        "eval",
        "--checkpoint",
        s(&sparse_checkpoint),
        "--test-limit",
        "32",
        "--device",
        "cpu",
        "--data-dir",
        s(&data),
    ]);
    let last_acc: f64 = epochs[4][4].parse().unwrap();
    assert!(
        eval.contains(&format!("test accuracy: {:.2}%", 100.0 * last_acc)),
        "{eval}\nwant {last_acc}"
    );

    // grads from initial weights: every name and shape exactly.
    let grads = tmp.path().join("grads.safetensors");
    ok(&[
        "grads",
        "--batch-size",
        "4",
        "--hidden",
        "16",
        "--band",
        "0.3",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--data-dir",
        s(&data),
        "--out",
        s(&grads),
    ]);
    let file = TensorFile::read(&grads).unwrap();
    let (b, t, n, n_in, c) = (4, 100, 16, 784, 10);
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("w1".into(), vec![n_in, n]),
        ("w2".into(), vec![n, n]),
        ("w3".into(), vec![n, c]),
        ("input".into(), vec![b, t, n_in]),
        ("labels".into(), vec![b]),
    ];
    for m in ["dense", "sparse"] {
        want.push((format!("{m}.grad_w1"), vec![n_in, n]));
        want.push((format!("{m}.grad_w2"), vec![n, n]));
        want.push((format!("{m}.grad_w3"), vec![n, c]));
        want.push((format!("{m}.grad_s1"), vec![b, t, n]));
        want.push((format!("{m}.loss"), vec![1]));
    }
    for (name, shape) in &want {
        assert_eq!(&file.shape(name).unwrap(), shape, "{name}");
        file.f32(name, shape).unwrap();
    }
    let bytes = std::fs::read(&grads).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .len();
    assert_eq!(names, want.len(), "no other tensors");
    for key in [
        "beta",
        "beta_readout",
        "theta",
        "band",
        "readout",
        "dataset",
    ] {
        assert!(file.metadata().contains_key(key), "metadata {key}");
    }
    assert_eq!(file.meta("band").unwrap(), "0.3");
    assert_eq!(file.meta("dataset").unwrap(), "fmnist");
    assert_eq!(file.meta("theta").unwrap(), "1");
    let input = file.f32("input", &[b, t, n_in]).unwrap();
    assert!(input.contains(&1.0) && input.iter().all(|&x| x == 0.0 || x == 1.0));
    let dense_loss = file.f32("dense.loss", &[1]).unwrap()[0];
    let sparse_loss = file.f32("sparse.loss", &[1]).unwrap()[0];
    assert_eq!(
        dense_loss, sparse_loss,
        "the loss does not depend on the backward method"
    );
    let sparse_s1 = file.f32("sparse.grad_s1", &[b, t, n]).unwrap();
    let dense_s1 = file.f32("dense.grad_s1", &[b, t, n]).unwrap();
    let zeros = |v: &[f32]| v.iter().filter(|&&x| x == 0.0).count();
    assert!(
        zeros(&sparse_s1) > zeros(&dense_s1),
        "sparse dS1 is zero outside the band"
    );

    // grads from the checkpoint: its weights, its network.
    let from_checkpoint = tmp.path().join("grads-ckpt.safetensors");
    ok(&[
        "grads",
        "--checkpoint",
        s(&sparse_checkpoint),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--data-dir",
        s(&data),
        "--out",
        s(&from_checkpoint),
    ]);
    let file = TensorFile::read(&from_checkpoint).unwrap();
    assert_eq!(file.f32("w2", &[n, n]).unwrap(), saved.state.weights.w2);
    let err = fails(
        &[
            "grads",
            "--checkpoint",
            s(&sparse_checkpoint),
            "--hidden",
            "8",
            "--out",
            s(&grads),
        ],
        1,
    );
    assert!(err.contains("--hidden (the checkpoint has 16)"), "{err}");

    // A second run into the same directory is refused rather than mixed in.
    let err = fails(&tiny_fmnist(s(&out), s(&data), &["--epochs", "1"]), 1);
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn resume_ends_bitwise_where_an_uninterrupted_run_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_dir();
    let straight = tmp.path().join("straight");
    let stopped = tmp.path().join("stopped");
    ok(&tiny_fmnist(
        s(&straight),
        s(&data),
        &["--epochs", "3", "--method", "both"],
    ));
    ok(&tiny_fmnist(
        s(&stopped),
        s(&data),
        &["--epochs", "1", "--method", "both"],
    ));
    // A run killed during epoch 2 leaves rows past its checkpoint, the last one torn.
    let steps_path = stopped.join("steps.csv");
    let mut steps = std::fs::read_to_string(&steps_path).unwrap();
    steps.push_str("2,5,sparse,9.9,0.1,0.1,1,1,1,1,1,1,1,1\n2,6,spa");
    std::fs::write(&steps_path, steps).unwrap();

    let err = fails(&["--resume", s(&stopped), "--hidden", "32"], 1);
    assert!(err.contains("--hidden 32 (the run has 16)"), "{err}");
    // --epochs extends the run; device and threads may differ.
    ok(&["--resume", s(&stopped), "--epochs", "3", "--threads", "2"]);

    for method in ["dense", "sparse"] {
        let file = format!("checkpoint-{method}.safetensors");
        let a = checkpoint::load(&straight.join(&file)).unwrap();
        let b = checkpoint::load(&stopped.join(&file)).unwrap();
        assert_eq!((b.epoch, b.state.step), (3, 12));
        assert!(
            a.state == b.state,
            "{method}: resumed weights or moments differ"
        );
        assert_eq!(a.history.len(), 3);
    }
    // Rows compared as sorted sets: with `both`, a resumed run appends dense's remaining epochs
    // after sparse's first, where the uninterrupted run has them before.
    let columns = |path: &Path, keep: &[usize]| -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = csv(path)
            .into_iter()
            .map(|r| keep.iter().map(|&k| r[k].clone()).collect())
            .collect();
        rows[1..].sort();
        rows
    };
    // Everything but the timings agrees row for row.
    let step_cols = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13];
    assert_eq!(
        columns(&straight.join("steps.csv"), &step_cols),
        columns(&stopped.join("steps.csv"), &step_cols)
    );
    let epoch_cols = [0, 1, 2, 3, 4];
    assert_eq!(
        columns(&straight.join("epochs.csv"), &epoch_cols),
        columns(&stopped.join("epochs.csv"), &epoch_cols)
    );
}

/// Writes tiny N-MNIST and SHD files (the real layouts) under `dir/nmnist` and `dir/shd`: each class
/// a fixed set of units firing at class-dependent times.
fn write_event_fixtures(dir: &Path) {
    use s3gd_data::nmnist::{write_nmnist_h5, NmnistH5};
    use s3gd_data::shd::{write_shd_h5, ShdH5};
    std::fs::create_dir_all(dir.join("nmnist")).unwrap();
    std::fs::create_dir_all(dir.join("shd")).unwrap();
    for (split, count) in [("train", 24usize), ("test", 12)] {
        let mut nmnist = NmnistH5::default();
        let mut shd = ShdH5::default();
        for i in 0..count {
            let (label_n, label_s) = (i % 10, i % 20);
            let nmnist_events: Vec<(i32, f32)> = (0..60)
                .map(|k| {
                    let unit = ((label_n * 97 + k * 31 + i) % 2312) as i32;
                    (unit, (2 + 4 * k + label_n) as f32 * 1e-3)
                })
                .collect();
            nmnist
                .units
                .push(nmnist_events.iter().map(|e| e.0).collect());
            nmnist
                .times
                .push(nmnist_events.iter().map(|e| e.1).collect());
            nmnist.labels.push(label_n as i32);
            shd.units.push(
                (0..80)
                    .map(|k| ((label_s * 13 + k * 7 + i) % 700) as u16)
                    .collect(),
            );
            shd.times.push(
                (0..80)
                    .map(|k| (0.004 + 0.011 * k as f64) * (1.0 + 0.01 * label_s as f64))
                    .collect(),
            );
            shd.labels.push(label_s as u8);
        }
        write_nmnist_h5(
            &dir.join("nmnist").join(format!("{split}_nmnist.h5")),
            &nmnist,
        )
        .unwrap();
        write_shd_h5(&dir.join("shd").join(format!("{split}_shd.h5")), &shd).unwrap();
    }
}

#[test]
fn nmnist_shd_and_the_band_sweep_run_end_to_end_on_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_event_fixtures(&data);
    for (dataset, inputs, classes) in [("nmnist", 1156, 10), ("shd", 700, 20)] {
        let out = tmp.path().join(dataset);
        let stdout = ok(&[
            "--dataset",
            dataset,
            "--method",
            "both",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--data-dir",
            s(&data),
            "--out",
            s(&out),
            "--readout",
            "sum",
        ]);
        assert!(stdout.contains(&format!("summary: {dataset}")), "{stdout}");
        assert!(stdout.contains("24 train and 12 test samples"), "{stdout}");
        let steps = csv(&out.join("steps.csv"));
        assert_eq!(steps.len(), 1 + 2 * 3, "{dataset}: 2 methods x 3 steps");
        assert_eq!(csv(&out.join("epochs.csv")).len(), 3);
        let saved = checkpoint::load(&out.join("checkpoint-sparse.safetensors")).unwrap();
        assert_eq!(saved.state.weights.w1.len(), inputs * 8);
        assert_eq!(saved.state.weights.w3.len(), 8 * classes);
        assert_eq!(saved.settings.readout.to_string(), "sum");
    }

    let sweep = tmp.path().join("sweep");
    let stdout = ok(&[
        "sweep-band",
        "--bands",
        "0.3,0.05",
        "--dataset",
        "shd",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data-dir",
        s(&data),
        "--out",
        s(&sweep),
    ]);
    assert!(stdout.contains("band sweep: shd"), "{stdout}");
    let rows = csv(&sweep.join("sweep.csv"));
    assert_eq!(
        rows[0],
        [
            "band",
            "test_acc",
            "final_train_loss",
            "active_l1",
            "active_l2",
            "bwd_ms_l2",
            "kept_bytes_l2",
            "dense_bwd_ms_l2",
            "speedup",
            "memory_saved"
        ]
    );
    let bands: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(bands, ["inf", "0.3", "0.05"]);
    assert_eq!(rows[1][8], "1", "dense against itself");
    for dir in ["dense", "band-0.3", "band-0.05"] {
        assert!(sweep.join(dir).join("epochs.csv").is_file(), "{dir}");
        assert!(
            sweep.join(dir).join("checkpoint.safetensors").is_file(),
            "{dir}"
        );
    }
}

#[test]
fn user_errors_get_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_dir();
    let err = fails(&["--band", "0"], 2);
    assert!(err.contains("the band half-width h must be > 0"), "{err}");
    let err = fails(&["--device", "cuda:one"], 2);
    assert!(err.contains("not a GPU ordinal"), "{err}");
    if s3gd_kernels::probe().devices == 0 {
        // Without a GPU, asking for one is one clear error (never a panic).
        let err = fails(&["--device", "cuda:0", "--epochs", "1"], 1);
        assert!(err.contains("cuda:0") && err.contains("driver"), "{err}");
    }
    let out = tmp.path().join("x");
    let err = fails(
        &[
            "--train-limit",
            "64",
            "--batch-size",
            "65",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--data-dir",
            s(&data),
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(
        err.contains("--batch-size 65 is larger than the 64 training samples"),
        "{err}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = fails(
        &["--dataset", "shd", "--data-dir", s(&empty), "--epochs", "1"],
        1,
    );
    assert!(err.contains("fetch-data"), "{err}");
    let err = fails(&["--resume", s(&empty)], 1);
    assert!(err.contains("config.json"), "{err}");
    let err = fails(
        &["eval", "--checkpoint", s(&empty.join("none.safetensors"))],
        1,
    );
    assert!(err.contains("none.safetensors"), "{err}");
}
