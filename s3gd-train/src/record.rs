//! What a run leaves in its output directory: config.json, steps.csv and epochs.csv (column names
//! fixed, for outside tools), and the helpers that write files atomically.
//!
//! Invariants: the CSVs are appended to and flushed row by row, so a killed run keeps every row it
//! finished; a resumed run first drops the rows past its checkpoint, so each (method, epoch) appears
//! once. Whole files (config.json, checkpoints, gradient dumps) go through [`write_atomic`].

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use s3gd_core::StepReport;
use serde::Serialize;

pub const CONFIG_FILE: &str = "config.json";
pub const STEPS_FILE: &str = "steps.csv";
pub const EPOCHS_FILE: &str = "epochs.csv";

/// steps.csv: one row per training step. `step` counts the method's updates from 1 over the whole
/// run; `active_*` is the fraction of the layer's B x T x N entries the backward pass worked on.
pub const STEPS_COLUMNS: [&str; 14] = [
    "epoch",
    "step",
    "method",
    "loss",
    "active_l1",
    "active_l2",
    "fwd_ms_l1",
    "bwd_ms_l1",
    "fwd_ms_l2",
    "bwd_ms_l2",
    "kept_bytes_l1",
    "kept_bytes_l2",
    "spikes_l1",
    "spikes_l2",
];

/// epochs.csv: one row per epoch. `seconds` is the epoch's training time (without the test pass).
pub const EPOCHS_COLUMNS: [&str; 6] = [
    "epoch",
    "method",
    "train_loss",
    "train_acc",
    "test_acc",
    "seconds",
];

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so that
/// `path` holds either its old content or all of the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    // A plain file (not `tempfile`'s, which is private to the user) so the result gets the usual
    // permissions; the process id keeps concurrent writers apart.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Appends rows to one CSV file, writing the header first if the file is new or empty.
pub struct CsvAppender {
    path: PathBuf,
    out: BufWriter<File>,
}

impl CsvAppender {
    pub fn open(path: &Path, columns: &[&str]) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut appender = Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        if empty {
            appender.row(&columns.join(","))?;
        }
        Ok(appender)
    }

    /// Writes one row (fields already joined by commas) and flushes it to the file.
    pub fn row(&mut self, line: &str) -> Result<()> {
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The figures of one epoch, written to epochs.csv and kept in checkpoints for the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub method: String,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    /// Training time of the epoch, seconds (without the test pass).
    pub seconds: f64,
    pub eval_seconds: f64,
    pub steps: usize,
    /// Per hidden layer, means over the epoch's steps.
    pub forward_ms: [f64; 2],
    pub backward_ms: [f64; 2],
    pub active: [f64; 2],
    pub kept_bytes: [f64; 2],
    pub spikes: [f64; 2],
}

/// The run's two CSV files.
pub struct Recorder {
    steps: CsvAppender,
    epochs: CsvAppender,
}

impl Recorder {
    pub fn open(out: &Path) -> Result<Self> {
        Ok(Self {
            steps: CsvAppender::open(&out.join(STEPS_FILE), &STEPS_COLUMNS)?,
            epochs: CsvAppender::open(&out.join(EPOCHS_FILE), &EPOCHS_COLUMNS)?,
        })
    }

    pub fn step(&mut self, epoch: usize, method: &str, report: &StepReport) -> Result<()> {
        let [l1, l2] = &report.layers;
        let line = format!(
            "{epoch},{},{method},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{},{},{}",
            report.step,
            report.loss,
            l1.active_fraction(),
            l2.active_fraction(),
            l1.forward_ms,
            l1.backward_ms,
            l2.forward_ms,
            l2.backward_ms,
            l1.kept_bytes,
            l2.kept_bytes,
            l1.spikes,
            l2.spikes,
        );
        self.steps.row(&line)
    }

    pub fn epoch(&mut self, record: &EpochRecord) -> Result<()> {
        let line = format!(
            "{},{},{},{},{},{:.3}",
            record.epoch,
            record.method,
            record.train_loss,
            record.train_acc,
            record.test_acc,
            record.seconds
        );
        self.epochs.row(&line)
    }
}

/// Drops the rows of `method` past epoch `keep_through` (all of its rows for 0) from a run's CSV
/// files, so that a resumed run does not repeat rows a killed run left after its last checkpoint.
pub fn drop_rows_after(out: &Path, method: &str, keep_through: usize) -> Result<()> {
    // (file, column of the epoch, column of the method)
    for (file, epoch_col, method_col) in [(STEPS_FILE, 0, 2), (EPOCHS_FILE, 0, 1)] {
        let path = out.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut kept = String::with_capacity(text.len());
        let mut dropped = 0usize;
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            continue;
        };
        let width = header.split(',').count();
        kept.push_str(header);
        kept.push('\n');
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            // A torn row (a run killed mid-write) has the wrong number of fields: dropped too.
            let torn = fields.len() != width;
            let past = fields.get(method_col) == Some(&method)
                && fields
                    .get(epoch_col)
                    .and_then(|e| e.parse::<usize>().ok())
                    .is_none_or(|e| e > keep_through);
            if torn || past {
                dropped += 1;
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        if dropped > 0 {
            tracing::info!(
                "{}: dropped {dropped} {method} row(s) past epoch {keep_through} (written after the last checkpoint)",
                path.display()
            );
            write_atomic(&path, kept.as_bytes())?;
        }
    }
    Ok(())
}

/// Versions that produced a run.
#[derive(Clone, Debug, Serialize)]
pub struct Versions {
    pub s3gd_train: &'static str,
    /// `git rev-parse HEAD` of the checkout this binary was built from, if it is still there.
    pub git_commit: Option<String>,
    /// Whether tracked files differed from that commit when the run started.
    pub git_dirty: Option<bool>,
    pub rustc: Option<String>,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

impl Versions {
    pub fn current() -> Self {
        let checkout = env!("CARGO_MANIFEST_DIR");
        Self {
            s3gd_train: env!("CARGO_PKG_VERSION"),
            git_commit: command_output("git", &["-C", checkout, "rev-parse", "HEAD"]),
            git_dirty: command_output(
                "git",
                &[
                    "-C",
                    checkout,
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ],
            )
            .map(|s| !s.is_empty()),
            rustc: command_output("rustc", &["--version"]),
        }
    }
}

/// Seconds since the Unix epoch as (year, month, day, hour, minute, second) in UTC.
fn utc_parts(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (year, month, day) = s3gd_core::calendar::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current UTC time as `2026-11-28T23:20:11Z`.
pub fn utc_iso() -> String {
    let (y, mo, d, h, mi, s) = utc_parts(now_secs());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The current UTC time as `20261128-232011`, for directory names.
pub fn utc_compact() -> String {
    let (y, mo, d, h, mi, s) = utc_parts(now_secs());
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// `runs/<stem>-<UTC time>`, with a numeric suffix if that directory already exists.
pub fn default_out_dir(stem: &str) -> PathBuf {
    let base = PathBuf::from("runs").join(format!("{stem}-{}", utc_compact()));
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|n| PathBuf::from(format!("{}-{n}", base.display())))
        .find(|p| !p.exists())
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(utc_parts(0), (1970, 1, 1, 0, 0, 0));
        // 2000-02-29T12:34:56Z
        assert_eq!(utc_parts(951_827_696), (2000, 2, 29, 12, 34, 56));
        // 2026-11-28T23:20:11Z
        assert_eq!(utc_parts(1_795_908_011), (2026, 11, 28, 23, 20, 11));
    }

    #[test]
    fn resumed_rows_are_dropped_per_method_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        {
            let mut rec = Recorder::open(out).unwrap();
            for (epoch, method) in [(1, "dense"), (2, "dense"), (1, "sparse"), (2, "sparse")] {
                rec.epoch(&EpochRecord {
                    epoch,
                    method: method.into(),
                    ..Default::default()
                })
                .unwrap();
            }
        }
        drop_rows_after(out, "sparse", 1).unwrap();
        let text = std::fs::read_to_string(out.join(EPOCHS_FILE)).unwrap();
        let firsts: Vec<String> = text
            .lines()
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect();
        assert_eq!(
            firsts,
            ["epoch,method", "1,dense", "2,dense", "1,sparse"],
            "{text}"
        );
        drop_rows_after(out, "dense", 0).unwrap();
        let text = std::fs::read_to_string(out.join(EPOCHS_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
