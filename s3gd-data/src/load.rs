//! Finding and loading a dataset's train and test splits from a data directory, with fallbacks.
//!
//! Fashion-MNIST, first found wins: `<data_dir>/fashion-mnist/`, then the Debian package's
//! `/usr/share/datasets/fashion-mnist/`, then the embedded sample `<data_dir>/sample/fashion-mnist/`
//! and `<workspace>/datasets/sample/fashion-mnist/`. A directory counts only if it holds all four
//! files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`, each raw or `.gz`); a complete but corrupt set is an error, never a
//! silent fallback. N-MNIST: `<data_dir>/nmnist/{train,test}_nmnist.h5`, or else the original
//! `Train.zip`/`Test.zip` there. SHD: `<data_dir>/shd/{train,test}_shd.h5`. Errors list every path tried.

use std::path::{Path, PathBuf};

use s3gd_core::{DatasetKind, Preset};

use crate::dataset::{DataSource, SpikeDataset, Splits};
use crate::error::DataError;
use crate::idx::{read_idx_images, read_idx_labels};
use crate::nmnist::{read_nmnist_h5, read_nmnist_zip_dataset};
use crate::shd::read_shd_h5;

/// Environment variable that overrides [`default_data_dir`].
pub const DATA_DIR_ENV: &str = "S3GD_DATA_DIR";
/// Where Debian's `dataset-fashion-mnist` package installs the full set.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// File names of the Fashion-MNIST set, without `.gz`: train images, train labels, test images, test labels.
pub const FASHION_MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The data directory: `$S3GD_DATA_DIR` if set and not empty, else the workspace's `datasets/`
/// (found from this crate's source location at compile time, `CARGO_MANIFEST_DIR/../datasets`, so it
/// is right for any binary built from this checkout wherever it runs from).
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_datasets_dir(),
    }
}

/// `<workspace>/datasets`, from this crate's compile-time location.
pub fn workspace_datasets_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(|workspace| workspace.join("datasets"))
        .unwrap_or_else(|| manifest.join("../datasets"))
}

/// The four Fashion-MNIST files in `dir` (each `.gz` preferred, else raw), or None if any is missing.
pub fn find_fashion_mnist_files(dir: &Path) -> Option<[PathBuf; 4]> {
    let find = |stem: &str| {
        [format!("{stem}.gz"), stem.to_string()]
            .into_iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    };
    let [a, b, c, d] = FASHION_MNIST_FILES.map(find);
    Some([a?, b?, c?, d?])
}

fn fmnist_split(images: &Path, labels: &Path) -> Result<SpikeDataset, DataError> {
    let preset = Preset::FMNIST;
    let pixels = read_idx_images(images)?;
    let label_bytes = read_idx_labels(labels)?;
    if pixels.count != label_bytes.len() {
        return Err(DataError::MismatchedLengths {
            path: images.to_path_buf(),
            what: format!(
                "{} images but {} labels in {}",
                pixels.count,
                label_bytes.len(),
                labels.display()
            ),
        });
    }
    if let Some(sample) = label_bytes
        .iter()
        .position(|&l| usize::from(l) >= preset.classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels.to_path_buf(),
            sample,
            label: i64::from(label_bytes[sample]),
            classes: preset.classes,
        });
    }
    SpikeDataset::from_images(&pixels, &label_bytes, preset.steps, preset.classes)
}

/// Loads Fashion-MNIST from the four files in `dir`, encoded by time to first spike (T = 100).
pub fn load_fashion_mnist_dir(dir: &Path, source: DataSource) -> Result<Splits, DataError> {
    let Some([train_images, train_labels, test_images, test_labels]) =
        find_fashion_mnist_files(dir)
    else {
        return Err(DataError::NotFound {
            dataset: "Fashion-MNIST",
            tried: vec![dir.to_path_buf()],
            hint: "the directory needs all four IDX files (raw or .gz).",
        });
    };
    Ok(Splits {
        train: fmnist_split(&train_images, &train_labels)?,
        test: fmnist_split(&test_images, &test_labels)?,
        source,
    })
}

fn load_fashion_mnist(data_dir: &Path) -> Result<Splits, DataError> {
    let full = [
        data_dir.join("fashion-mnist"),
        PathBuf::from(DEBIAN_FASHION_MNIST_DIR),
    ];
    let mut samples = vec![data_dir.join("sample").join("fashion-mnist")];
    let workspace_sample = workspace_datasets_dir()
        .join("sample")
        .join("fashion-mnist");
    if !samples.contains(&workspace_sample) {
        samples.push(workspace_sample);
    }
    let candidates = full
        .into_iter()
        .map(|dir| (dir.clone(), DataSource::FullSet { location: dir }))
        .chain(
            samples
                .into_iter()
                .map(|dir| (dir.clone(), DataSource::EmbeddedSample { location: dir })),
        );
    let mut tried = Vec::new();
    for (dir, source) in candidates {
        if find_fashion_mnist_files(&dir).is_some() {
            return load_fashion_mnist_dir(&dir, source);
        }
        tried.push(dir);
    }
    Err(DataError::NotFound {
        dataset: "Fashion-MNIST",
        tried,
        hint: "Run `cargo xtask fetch-data` or `apt-get install dataset-fashion-mnist`.",
    })
}

fn load_nmnist(data_dir: &Path) -> Result<Splits, DataError> {
    let dir = data_dir.join("nmnist");
    let (train_h5, test_h5) = (dir.join("train_nmnist.h5"), dir.join("test_nmnist.h5"));
    if train_h5.is_file() && test_h5.is_file() {
        return Ok(Splits {
            train: read_nmnist_h5(&train_h5)?,
            test: read_nmnist_h5(&test_h5)?,
            source: DataSource::FullSet { location: dir },
        });
    }
    let (train_zip, test_zip) = (dir.join("Train.zip"), dir.join("Test.zip"));
    if train_zip.is_file() && test_zip.is_file() {
        return Ok(Splits {
            train: read_nmnist_zip_dataset(&train_zip)?,
            test: read_nmnist_zip_dataset(&test_zip)?,
            source: DataSource::FullSet { location: dir },
        });
    }
    Err(DataError::NotFound {
        dataset: "N-MNIST",
        tried: vec![train_h5, test_h5, train_zip, test_zip],
        hint: "Run `cargo xtask fetch-data --dataset nmnist`.",
    })
}

fn load_shd(data_dir: &Path) -> Result<Splits, DataError> {
    let dir = data_dir.join("shd");
    let (train, test) = (dir.join("train_shd.h5"), dir.join("test_shd.h5"));
    if train.is_file() && test.is_file() {
        return Ok(Splits {
            train: read_shd_h5(&train)?,
            test: read_shd_h5(&test)?,
            source: DataSource::FullSet { location: dir },
        });
    }
    Err(DataError::NotFound {
        dataset: "SHD",
        tried: vec![train, test],
        hint: "Run `cargo xtask fetch-data --dataset shd`.",
    })
}

/// Loads the train and test splits of `kind` from `data_dir` (usually [`default_data_dir`]), with the
/// fallbacks in this module's docs; `Splits::source` says which data was used.
pub fn load(kind: DatasetKind, data_dir: &Path) -> Result<Splits, DataError> {
    match kind {
        DatasetKind::Fmnist => load_fashion_mnist(data_dir),
        DatasetKind::Nmnist => load_nmnist(data_dir),
        DatasetKind::Shd => load_shd(data_dir),
    }
}
