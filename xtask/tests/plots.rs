//! `cargo xtask plots` on tiny fixtures written here with the exact file layouts of s3gd-train
//! (config.json, steps.csv, epochs.csv, sweep.csv, a grads safetensors file) and of the
//! benchmark's CSV: every figure renders as a non-empty PNG and SVG, figures without inputs are
//! skipped with a reason, and a CSV with a missing column fails naming the file and the column.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use xtask::plots::{plot, PlotOptions, FIGURES};

const STEPS_HEADER: &str = "epoch,step,method,loss,active_l1,active_l2,fwd_ms_l1,bwd_ms_l1,fwd_ms_l2,bwd_ms_l2,kept_bytes_l1,kept_bytes_l2,spikes_l1,spikes_l2";
const EPOCHS_HEADER: &str = "epoch,method,train_loss,train_acc,test_acc,seconds";
const SWEEP_HEADER: &str = "band,test_acc,final_train_loss,active_l1,active_l2,bwd_ms_l2,kept_bytes_l2,dense_bwd_ms_l2,speedup,memory_saved";
const BENCH_HEADER: &str =
    "device,dataset,hidden,batch,steps,inputs,method,fwd_ms_l2,bwd_ms_l2,kept_bytes_l2,active_l2";

/// config.json as s3gd-train writes it (the parts the plots read, and some around them).
fn config_json(dataset: &str, hidden: u64, method: &str) -> String {
    format!(
        r#"{{
  "command_line": ["s3gd-train"],
  "device": "cpu (1 threads, f32)",
  "methods": [{{"method": "dense"}}, {{"band": 0.2, "method": "sparse"}}],
  "settings": {{"band": 0.2, "batch_size": 8, "dataset": "{dataset}", "epochs": 2,
    "hidden": {hidden}, "learning_rate": 0.0002, "method": "{method}", "readout": "max", "seed": 0}},
  "written": "2026-11-28T23:54:27Z"
}}"#
    )
}

/// A training run of both methods: 2 epochs of 6 steps each.
fn write_run(dir: &Path, dataset: &str, hidden: u64) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("config.json"),
        config_json(dataset, hidden, "both"),
    )
    .unwrap();
    let mut steps = format!("{STEPS_HEADER}\n");
    let mut epochs = format!("{EPOCHS_HEADER}\n");
    for (m, method) in ["dense", "sparse"].iter().enumerate() {
        let mut step = 0;
        for epoch in 1..=2u32 {
            for k in 0..6u32 {
                step += 1;
                let loss = 2.3 / f64::from(step);
                let (active, bwd, kept) = if m == 0 {
                    (1.0, 30.0 + f64::from(k), 2_000_000)
                } else {
                    (0.01 + 0.001 * f64::from(k), 5.0 + f64::from(k), 600_000)
                };
                writeln!(
                    steps,
                    "{epoch},{step},{method},{loss},{active},{},{},{},{},{bwd},{kept},{kept},100,80",
                    active * 0.8,
                    1.0,
                    bwd,
                    2.0
                )
                .unwrap();
            }
            let acc = 0.7 + 0.05 * f64::from(epoch) + 0.01 * m as f64;
            writeln!(
                epochs,
                "{epoch},{method},{},{acc},{acc},1.5",
                1.0 / f64::from(epoch)
            )
            .unwrap();
        }
    }
    fs::write(dir.join("steps.csv"), steps).unwrap();
    fs::write(dir.join("epochs.csv"), epochs).unwrap();
}

fn write_sweep(dir: &Path) {
    fs::create_dir_all(dir.join("dense")).unwrap();
    fs::write(
        dir.join("dense/config.json"),
        config_json("fmnist", 64, "dense"),
    )
    .unwrap();
    let mut text = format!("{SWEEP_HEADER}\n");
    text.push_str("inf,0.80,0.60,1,1,30.0,2000000,30.0,1,0\n");
    for (band, acc) in [(0.5, 0.81), (0.2, 0.82), (0.05, 0.79), (0.01, 0.70)] {
        let active: f64 = band * 0.05;
        let bwd = 30.0 * band;
        writeln!(
            text,
            "{band},{acc},0.6,{active},{},{bwd},{},30.0,{},{}",
            active * 0.8,
            2_000_000.0 * band,
            30.0 / bwd,
            1.0 - band
        )
        .unwrap();
    }
    fs::write(dir.join("sweep.csv"), text).unwrap();
}

fn write_bench(path: &Path) {
    let mut text = format!("{BENCH_HEADER}\n");
    for dataset in ["fmnist", "shd"] {
        for hidden in [200u64, 400, 1000] {
            let n = hidden as f64;
            writeln!(
                text,
                "\"cpu (2 threads, f32)\",{dataset},{hidden},32,100,784,dense,{},{},{},1",
                n / 100.0,
                n / 10.0,
                n * 1000.0
            )
            .unwrap();
            writeln!(
                text,
                "\"cpu (2 threads, f32)\",{dataset},{hidden},32,100,784,sparse,{},{},{},0.01",
                n / 110.0,
                2.0,
                n * 600.0
            )
            .unwrap();
        }
    }
    // A row without its partner: left out with a note.
    writeln!(text, "cpu,nmnist,200,32,300,1156,dense,1,2,3,1").unwrap();
    fs::write(path, text).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A grads file with the names, shapes and metadata of `s3gd-train grads` (B=2, T=5, N=4).
fn write_grads(path: &Path) {
    let (b, t, n, n_in, c) = (2usize, 5usize, 4usize, 6usize, 3usize);
    let ramp = |len: usize, zero_every: usize| -> Vec<f32> {
        (0..len)
            .map(|i| {
                if zero_every > 0 && i % zero_every != 0 {
                    0.0
                } else {
                    (i as f32 - len as f32 / 2.0) * 1e-3
                }
            })
            .collect()
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("w1".into(), vec![n_in, n], f32_bytes(&ramp(n_in * n, 0))),
        ("w2".into(), vec![n, n], f32_bytes(&ramp(n * n, 0))),
        ("w3".into(), vec![n, c], f32_bytes(&ramp(n * c, 0))),
        (
            "input".into(),
            vec![b, t, n_in],
            f32_bytes(&vec![1.0; b * t * n_in]),
        ),
        ("labels".into(), vec![b], f32_bytes(&[0.0, 1.0])),
    ];
    for (method, zero_every) in [("dense", 0), ("sparse", 3)] {
        tensors.push((
            format!("{method}.grad_w1"),
            vec![n_in, n],
            f32_bytes(&ramp(n_in * n, zero_every)),
        ));
        tensors.push((
            format!("{method}.grad_w2"),
            vec![n, n],
            f32_bytes(&ramp(n * n, zero_every)),
        ));
        tensors.push((
            format!("{method}.grad_w3"),
            vec![n, c],
            f32_bytes(&ramp(n * c, zero_every)),
        ));
        tensors.push((
            format!("{method}.grad_s1"),
            vec![b, t, n],
            f32_bytes(&ramp(b * t * n, zero_every)),
        ));
        tensors.push((format!("{method}.loss"), vec![1], f32_bytes(&[2.3])));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let metadata: HashMap<String, String> = [
        ("beta", "0.9048"),
        ("beta_readout", "0.9048"),
        ("theta", "1"),
        ("band", "0.2"),
        ("readout", "max"),
        ("dataset", "fmnist"),
        ("weights", "initial weights drawn from seed 0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    fs::write(path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

struct Fixtures {
    _dir: tempfile::TempDir,
    run: PathBuf,
    second_run: PathBuf,
    sweep: PathBuf,
    grads: PathBuf,
    bench: PathBuf,
    out: PathBuf,
}

fn fixtures() -> Fixtures {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let f = Fixtures {
        run: root.join("fmnist-both"),
        second_run: root.join("shd-both"),
        sweep: root.join("sweep"),
        grads: root.join("grads.safetensors"),
        bench: root.join("bench.csv"),
        out: root.join("figures"),
        _dir: dir,
    };
    write_run(&f.run, "fmnist", 16);
    write_run(&f.second_run, "shd", 16);
    write_sweep(&f.sweep);
    write_grads(&f.grads);
    write_bench(&f.bench);
    f
}

fn assert_png_and_svg(png: &Path, svg: &Path) {
    let png_bytes = fs::read(png).unwrap();
    assert!(
        png_bytes.len() > 1000 && png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG of some size",
        png.display()
    );
    let svg_text = fs::read_to_string(svg).unwrap();
    assert!(
        svg_text.contains("<svg") && svg_text.trim_end().ends_with("</svg>"),
        "{} is not an SVG",
        svg.display()
    );
    assert!(svg_text.contains("<text"), "{} has no text", svg.display());
}

#[test]
fn every_figure_renders_from_its_inputs() {
    let f = fixtures();
    let report = plot(&PlotOptions {
        runs: vec![f.run.clone(), f.second_run.clone(), f.sweep.clone()],
        out: f.out.clone(),
        grads: Some(f.grads.clone()),
        bench_csv: Some(f.bench.clone()),
    })
    .unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let names: Vec<&str> = report.rendered.iter().map(|(name, _)| *name).collect();
    let expected: Vec<&str> = FIGURES.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected);
    for (name, files) in &report.rendered {
        assert_png_and_svg(&files.png, &files.svg);
        let stem = FIGURES.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(files.png, f.out.join(format!("{stem}.png")));
    }
    let heat_maps = fs::read_to_string(f.out.join("fig1b-gradients.svg")).unwrap();
    assert!(heat_maps.contains("data:image/png;base64,"));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("nmnist N=200: only dense")),
        "{:?}",
        report.notes
    );
    // Nothing but the figures (no temporary files) is left in the output folder.
    assert_eq!(fs::read_dir(&f.out).unwrap().count(), 2 * FIGURES.len());
}

#[test]
fn figures_without_inputs_are_skipped_with_a_reason() {
    let f = fixtures();
    let report = plot(&PlotOptions {
        runs: Vec::new(),
        out: f.out.clone(),
        grads: Some(f.grads.clone()),
        bench_csv: None,
    })
    .unwrap();
    let rendered: Vec<&str> = report.rendered.iter().map(|(n, _)| *n).collect();
    assert_eq!(rendered, ["Fig. 1B"]);
    let reasons: HashMap<&str, &str> = report
        .skipped
        .iter()
        .map(|(n, r)| (*n, r.as_str()))
        .collect();
    assert!(reasons["Fig. 1A"].contains("no training run"));
    assert!(reasons["Fig. 2C"].contains("--bench-csv"));
    assert!(reasons["Fig. 3"].contains("sweep.csv"));
}

#[test]
fn a_dense_only_run_skips_the_comparisons() {
    let f = fixtures();
    let steps = fs::read_to_string(f.run.join("steps.csv")).unwrap();
    let dense_only: String = steps
        .lines()
        .filter(|l| !l.contains(",sparse,"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(f.run.join("steps.csv"), dense_only).unwrap();
    let report = plot(&PlotOptions {
        runs: vec![f.run.clone()],
        out: f.out.clone(),
        ..Default::default()
    })
    .unwrap();
    let rendered: Vec<&str> = report.rendered.iter().map(|(n, _)| *n).collect();
    assert_eq!(rendered, ["Fig. 1D"]);
    let reasons: HashMap<&str, &str> = report
        .skipped
        .iter()
        .map(|(n, r)| (*n, r.as_str()))
        .collect();
    assert!(reasons["Fig. 1A"].contains("sparse"));
    assert!(reasons["Fig. 2A"].contains("both dense and sparse"));
}

#[test]
fn a_missing_column_is_an_error_naming_file_and_column() {
    let f = fixtures();
    let steps_path = f.run.join("steps.csv");
    let steps = fs::read_to_string(&steps_path).unwrap();
    let without_bwd: String = steps
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let kept: Vec<&str> = fields
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 9) // bwd_ms_l2
                .map(|(_, f)| *f)
                .collect();
            format!("{}\n", kept.join(","))
        })
        .collect();
    fs::write(&steps_path, without_bwd).unwrap();
    let error = plot(&PlotOptions {
        runs: vec![f.run.clone()],
        out: f.out.clone(),
        ..Default::default()
    })
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&steps_path.display().to_string()) && message.contains("`bwd_ms_l2`"),
        "{message}"
    );
    assert!(!f.out.exists(), "nothing is written when an input is bad");

    let bench = fs::read_to_string(&f.bench).unwrap();
    fs::write(&f.bench, bench.replace("kept_bytes_l2", "kept_l2")).unwrap();
    let error = plot(&PlotOptions {
        bench_csv: Some(f.bench.clone()),
        out: f.out.clone(),
        ..Default::default()
    })
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("bench.csv") && message.contains("`kept_bytes_l2`"),
        "{message}"
    );
}

#[test]
fn the_command_line_runs_plots() {
    let f = fixtures();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["plots", "--runs"])
        .arg(&f.run)
        .arg(&f.sweep)
        .arg("--out")
        .arg(&f.out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Fig. 3: "), "{stdout}");
    assert!(
        stdout.contains("Fig. 1B: skipped (no --grads file given)"),
        "{stdout}"
    );
    assert!(f.out.join("fig1c-loss.png").is_file());

    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["plots", "--out"])
        .arg(&f.out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to plot"));
}

#[test]
fn degenerate_values_draw_without_panicking() {
    let f = fixtures();
    let dir = f.out.with_file_name("tiny");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.json"), config_json("nmnist", 8, "both")).unwrap();
    // One step per method, a NaN loss, zero bytes kept, and a last row cut short.
    let steps = format!(
        "{STEPS_HEADER}\n1,1,dense,NaN,1,1,0,0,0,0,0,0,0,0\n1,1,sparse,2.3,0,0,0,0,0,0,0,0,0,0\n1,2,spa"
    );
    fs::write(dir.join("steps.csv"), steps).unwrap();
    fs::write(
        dir.join("epochs.csv"),
        format!("{EPOCHS_HEADER}\n1,dense,inf,0,0,0\n"),
    )
    .unwrap();
    let report = plot(&PlotOptions {
        runs: vec![dir.clone()],
        out: f.out.clone(),
        ..Default::default()
    })
    .unwrap();
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("incomplete last row")),
        "{:?}",
        report.notes
    );
    for (_, files) in &report.rendered {
        assert_png_and_svg(&files.png, &files.svg);
    }
}
