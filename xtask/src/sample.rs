//! `sample`: a small class-balanced Fashion-MNIST subset, written as IDX .gz under the original
//! file names, so that training works offline on a fresh clone.
//!
//! The selection is deterministic: for each split, the first K images of each class in file order,
//! kept in their original order. The writers of s3gd-data gzip with a fixed header (no mtime, no
//! file name), so re-running on the same input gives byte-identical files and no git diff.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use s3gd_data::idx::{
    read_idx_images, read_idx_labels, write_idx_images_gz, write_idx_labels_gz, IdxImages,
};

use crate::verify::sha256_hex;

/// One split of Fashion-MNIST: its image and label file names (as .gz).
struct Split {
    name: &'static str,
    images: &'static str,
    labels: &'static str,
}

const SPLITS: [Split; 2] = [
    Split {
        name: "train",
        images: "train-images-idx3-ubyte.gz",
        labels: "train-labels-idx1-ubyte.gz",
    },
    Split {
        name: "test",
        images: "t10k-images-idx3-ubyte.gz",
        labels: "t10k-labels-idx1-ubyte.gz",
    },
];

/// The Fashion-MNIST file names a full copy holds, as .gz.
pub const FASHION_MNIST_FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Folder with the full set (the four IDX files, .gz or uncompressed).
    pub from: PathBuf,
    /// Folder that receives the four sample files.
    pub out: PathBuf,
    pub train_per_class: usize,
    pub test_per_class: usize,
}

/// A file written by [`make_sample`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct SampleReport {
    pub train_images: usize,
    pub test_images: usize,
    pub classes: usize,
    pub files: Vec<SampledFile>,
}

/// Writes the sample described by `opts` and reports what it wrote.
pub fn make_sample(opts: &SampleOptions) -> Result<SampleReport> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating the folder {}", opts.out.display()))?;
    let mut files = Vec::new();
    let mut counts = Vec::new();
    let mut classes = 0;
    for split in &SPLITS {
        let per_class = match split.name {
            "train" => opts.train_per_class,
            _ => opts.test_per_class,
        };
        ensure!(
            per_class > 0,
            "the {} images per class must be at least 1",
            split.name
        );
        let images_in = input_path(&opts.from, split.images)?;
        let labels_in = input_path(&opts.from, split.labels)?;
        let images = read_idx_images(&images_in)
            .with_context(|| format!("reading {}", images_in.display()))?;
        let labels = read_idx_labels(&labels_in)
            .with_context(|| format!("reading {}", labels_in.display()))?;
        ensure!(
            images.count == labels.len(),
            "{} holds {} images but {} holds {} labels",
            images_in.display(),
            images.count,
            labels_in.display(),
            labels.len()
        );
        let keep = first_per_class(&labels, per_class)
            .with_context(|| format!("sampling {}", labels_in.display()))?;
        classes = classes.max(
            labels
                .iter()
                .map(|&l| usize::from(l) + 1)
                .max()
                .unwrap_or(0),
        );

        let image_len = images.rows * images.cols;
        ensure!(
            images.pixels.len() == images.count * image_len,
            "{} holds {} pixel bytes, not {} images of {}x{}",
            images_in.display(),
            images.pixels.len(),
            images.count,
            images.rows,
            images.cols
        );
        let mut pixels = Vec::with_capacity(keep.len() * image_len);
        for &index in &keep {
            pixels.extend_from_slice(&images.pixels[index * image_len..(index + 1) * image_len]);
        }
        let sampled_images = IdxImages {
            count: keep.len(),
            rows: images.rows,
            cols: images.cols,
            pixels,
        };
        let sampled_labels: Vec<u8> = keep.iter().map(|&index| labels[index]).collect();

        let images_out = opts.out.join(split.images);
        let labels_out = opts.out.join(split.labels);
        write_idx_images_gz(&images_out, &sampled_images)
            .with_context(|| format!("writing {}", images_out.display()))?;
        write_idx_labels_gz(&labels_out, &sampled_labels)
            .with_context(|| format!("writing {}", labels_out.display()))?;
        for path in [images_out, labels_out] {
            files.push(describe_output(path)?);
        }
        counts.push(keep.len());
    }
    Ok(SampleReport {
        train_images: counts[0],
        test_images: counts[1],
        classes,
        files,
    })
}

/// Indices of the first `per_class` samples of each class (0 ..= the largest label), in file
/// order. Fails when any class has fewer.
pub fn first_per_class(labels: &[u8], per_class: usize) -> Result<Vec<usize>> {
    let Some(&largest) = labels.iter().max() else {
        bail!("there are no labels");
    };
    let classes = usize::from(largest) + 1;
    let mut taken = vec![0usize; classes];
    let mut keep = Vec::with_capacity(classes * per_class);
    for (index, &label) in labels.iter().enumerate() {
        let class = usize::from(label);
        if taken[class] < per_class {
            taken[class] += 1;
            keep.push(index);
        }
    }
    if let Some((class, &count)) = taken.iter().enumerate().find(|&(_, &c)| c < per_class) {
        bail!("class {class} has only {count} samples, fewer than the {per_class} asked for");
    }
    Ok(keep)
}

/// `dir/name` when present, else the uncompressed `dir/name` without `.gz`.
fn input_path(dir: &Path, gz_name: &str) -> Result<PathBuf> {
    let gz = dir.join(gz_name);
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(gz_name.trim_end_matches(".gz"));
    if raw.is_file() {
        return Ok(raw);
    }
    bail!(
        "{} not found (nor its uncompressed form {})",
        gz.display(),
        raw.display()
    )
}

fn describe_output(path: PathBuf) -> Result<SampledFile> {
    let bytes = std::fs::metadata(&path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let sha256 = sha256_hex(&path)?;
    Ok(SampledFile {
        path,
        bytes,
        sha256,
    })
}
