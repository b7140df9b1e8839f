//! `DataError`: every way reading, converting or loading a dataset can fail; each variant names the file.
//!
//! Invariant: no parser in this crate panics on any input bytes; it returns one of these instead.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What went wrong, and in which file.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: not a valid gzip stream: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: truncated: {what} needs bytes up to offset {needed}, but the data ends at offset {len}", path.display())]
    Truncated {
        path: PathBuf,
        what: &'static str,
        needed: u64,
        len: u64,
    },

    #[error("{}: {extra} unexpected bytes after the payload, which ends at offset {payload_end}", path.display())]
    TrailingBytes {
        path: PathBuf,
        payload_end: u64,
        extra: u64,
    },

    #[error("{}: bad magic number 0x{found:08x}, expected 0x{expected:08x} ({what})", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },

    #[error("{}: wrong dimensions: {what}", path.display())]
    BadDimensions { path: PathBuf, what: String },

    #[error("{}: event file {entry} is {len} bytes long, not a multiple of 5", path.display())]
    EventLength {
        path: PathBuf,
        entry: String,
        len: usize,
    },

    #[error("{}: {entry}: event {event} lies at x = {x}, y = {y}, off the 34 x 34 sensor", path.display())]
    SensorCoordinate {
        path: PathBuf,
        entry: String,
        event: usize,
        x: u8,
        y: u8,
    },

    #[error("{}: sample {sample}: unit id {unit} out of range (must be < {limit})", path.display())]
    UnitOutOfRange {
        path: PathBuf,
        sample: usize,
        unit: i64,
        limit: u32,
    },

    #[error("{}: sample {sample}: spike time {time} s is not a finite, non-negative number", path.display())]
    BadTime {
        path: PathBuf,
        sample: usize,
        time: f64,
    },

    #[error("{}: label {label} of sample {sample} is out of range for {classes} classes", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        sample: usize,
        label: i64,
        classes: usize,
    },

    #[error("{}: HDF5 dataset {dataset} is missing", path.display())]
    MissingDataset { path: PathBuf, dataset: String },

    #[error("{}: HDF5 dataset {dataset} has type {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        dataset: String,
        found: String,
        expected: &'static str,
    },

    #[error("{}: mismatched lengths: {what}", path.display())]
    MismatchedLengths { path: PathBuf, what: String },

    #[error("{}: {message}", path.display())]
    Hdf5 { path: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("{}: the zip holds no sample (no <digit>/<name>.bin entry)", path.display())]
    EmptyZip { path: PathBuf },

    #[error("{}: entry {entry}: {why}", path.display())]
    BadZipEntry {
        path: PathBuf,
        entry: String,
        why: String,
    },

    #[error("{dataset} not found; looked in: {}. {hint}", list_paths(tried))]
    NotFound {
        dataset: &'static str,
        tried: Vec<PathBuf>,
        hint: &'static str,
    },

    #[error("{what}")]
    InvalidArgument { what: String },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A failure inside the HDF5 library, with its message.
    pub(crate) fn hdf5(path: &Path, message: impl std::fmt::Display) -> Self {
        DataError::Hdf5 {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}
