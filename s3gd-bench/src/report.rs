//! Result files of the layer-2 benchmark: `bench/results/<device>-<date>.csv` (the columns
//! `cargo xtask plots` reads, one row per method per shape) and a markdown table of the same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// The CSV's columns, in order (xtask's `BENCH_COLUMNS`).
pub const CSV_HEADER: &str =
    "device,dataset,hidden,batch,steps,inputs,method,fwd_ms_l2,bwd_ms_l2,kept_bytes_l2,active_l2";

/// One method's layer-2 figures on one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer2Row {
    pub device: String,
    pub dataset: String,
    pub hidden: usize,
    pub batch: usize,
    pub steps: usize,
    /// The dataset's input units N_in (layer 2 itself reads N units).
    pub inputs: usize,
    pub method: &'static str,
    /// Medians, milliseconds.
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    /// Bytes layer 2 keeps for its backward pass (`TapeStats::kept_bytes`).
    pub kept_bytes: u64,
    /// Fraction of layer 2's B x T x N entries in the band (1 for dense).
    pub active: f64,
    /// Peak device memory over layer 2's forward and backward, where the device reports it.
    pub peak_bytes: Option<usize>,
    /// Layer 1's active fraction on the same input.
    pub active_l1: f64,
}

/// Today's date in UTC as YYYY-MM-DD.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    date_of_day(days)
}

/// The date `days` after 1970-01-01 as YYYY-MM-DD.
fn date_of_day(days: i64) -> String {
    let (year, month, day) = s3gd_core::calendar::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Where the result files go: `S3GD_BENCH_RESULTS` when set, else `bench/results` at the
/// workspace root.
pub fn results_dir() -> PathBuf {
    match std::env::var_os("S3GD_BENCH_RESULTS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("bench")
            .join("results"),
    }
}

/// The CSV text of `rows`.
pub fn csv(rows: &[Layer2Row]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.4},{:.4},{},{:.6}",
            r.device,
            r.dataset,
            r.hidden,
            r.batch,
            r.steps,
            r.inputs,
            r.method,
            r.fwd_ms,
            r.bwd_ms,
            r.kept_bytes,
            r.active
        );
    }
    out
}

/// The markdown table of `rows`: per dataset and N, both methods' times, the backward and overall
/// (forward + backward) speedups, and the memory saved.
pub fn markdown(
    rows: &[Layer2Row],
    device: &str,
    describe: &str,
    date: &str,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Layer-2 benchmark, {device}, {date}\n");
    let _ = writeln!(out, "Device: {describe}. Medians over the timed iterations (the device synchronised inside each timed region); `cargo bench -p s3gd-bench --bench layer2`.\n");
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    if !notes.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "| dataset | N | batch | T | active L1 / L2 (sparse) | fwd dense / sparse ms | bwd dense / sparse ms | bwd speedup | fwd+bwd speedup | kept dense / sparse MiB | memory saved | peak dense / sparse MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mib = |b: f64| b / (1u64 << 20) as f64;
    for dense in rows.iter().filter(|r| r.method == "dense") {
        let Some(sparse) = rows.iter().find(|r| {
            r.method == "sparse"
                && r.dataset == dense.dataset
                && r.hidden == dense.hidden
                && r.device == dense.device
        }) else {
            continue;
        };
        let peak = match (dense.peak_bytes, sparse.peak_bytes) {
            (Some(d), Some(s)) => format!("{:.0} / {:.0}", mib(d as f64), mib(s as f64)),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}% / {:.2}% | {:.3} / {:.3} | {:.3} / {:.3} | {:.1}x | {:.2}x | {:.2} / {:.3} | {:.1}% | {} |",
            dense.dataset,
            dense.hidden,
            dense.batch,
            dense.steps,
            100.0 * sparse.active_l1,
            100.0 * sparse.active,
            dense.fwd_ms,
            sparse.fwd_ms,
            dense.bwd_ms,
            sparse.bwd_ms,
            dense.bwd_ms / sparse.bwd_ms,
            (dense.fwd_ms + dense.bwd_ms) / (sparse.fwd_ms + sparse.bwd_ms),
            mib(dense.kept_bytes as f64),
            mib(sparse.kept_bytes as f64),
            100.0 * (1.0 - sparse.kept_bytes as f64 / dense.kept_bytes as f64),
            peak,
        );
    }
    out
}

/// Writes `<device>-<date>.csv` and `.md` under `bench/results`; returns their paths.
pub fn write_results(
    rows: &[Layer2Row],
    device: &str,
    describe: &str,
    notes: &[String],
) -> Result<[PathBuf; 2]> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let date = today();
    let csv_path = dir.join(format!("{device}-{date}.csv"));
    let md_path = dir.join(format!("{device}-{date}.md"));
    std::fs::write(&csv_path, csv(rows))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    std::fs::write(&md_path, markdown(rows, device, describe, &date, notes))
        .with_context(|| format!("writing {}", md_path.display()))?;
    Ok([csv_path, md_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_known_days() {
        for (days, date) in [
            (0, "1970-01-01"),
            (11_016, "2000-02-29"),
            (11_017, "2000-03-01"),
            (20_088, "2024-12-31"),
            (20_786, "2026-11-29"),
        ] {
            assert_eq!(date_of_day(days), date);
        }
        assert!(today().as_str() >= "2024-01-01");
    }

    #[test]
    fn csv_has_the_plot_columns_and_one_line_per_row() {
        let row = Layer2Row {
            device: "cpu".into(),
            dataset: "fmnist".into(),
            hidden: 200,
            batch: 32,
            steps: 100,
            inputs: 784,
            method: "dense",
            fwd_ms: 1.0,
            bwd_ms: 2.0,
            kept_bytes: 10,
            active: 1.0,
            peak_bytes: None,
            active_l1: 0.01,
        };
        let sparse = Layer2Row {
            method: "sparse",
            bwd_ms: 0.1,
            kept_bytes: 1,
            active: 0.01,
            ..row.clone()
        };
        let text = csv(&[row.clone(), sparse.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), 11);
        assert_eq!(lines[1].split(',').count(), 11);
        let md = markdown(
            &[row, sparse],
            "cpu",
            "cpu (2 threads, f32)",
            "2026-01-01",
            &[],
        );
        assert!(md.contains("| fmnist | 200 | 32 | 100 |"), "{md}");
        assert!(md.contains("20.0x"), "{md}");
    }
}
