//! The `sample` command on tiny generated IDX files, and the committed sample under
//! `datasets/sample/` checked against its README and (where Debian's copy is installed) rebuilt.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use s3gd_data::idx::{read_idx_images, read_idx_labels};
use support::{gzip, idx_images, idx_labels};
use xtask::sample::{first_per_class, make_sample, SampleOptions};
use xtask::verify::sha256_hex;

const ROWS: usize = 28; // s3gd-data reads Fashion-MNIST shapes only
const COLS: usize = 28;

/// Writes a tiny Fashion-MNIST-shaped set to `dir`: image `i` has every pixel equal to `i`.
fn write_full_set(dir: &Path, train_labels: &[u8], test_labels: &[u8], compress: bool) {
    let splits = [("train", train_labels), ("t10k", test_labels)];
    for (prefix, labels) in splits {
        let pixels: Vec<u8> = (0..labels.len())
            .flat_map(|i| std::iter::repeat_n(i as u8, ROWS * COLS))
            .collect();
        let images = idx_images(labels.len(), ROWS, COLS, &pixels);
        let labels = idx_labels(labels);
        let (images, labels, suffix) = if compress {
            (gzip(&images), gzip(&labels), ".gz")
        } else {
            (images, labels, "")
        };
        fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")),
            images,
        )
        .unwrap();
        fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")),
            labels,
        )
        .unwrap();
    }
}

const TRAIN_LABELS: [u8; 12] = [2, 0, 1, 0, 2, 2, 1, 0, 0, 1, 2, 1];
const TEST_LABELS: [u8; 6] = [1, 0, 2, 2, 0, 1];

fn options(from: &Path, out: &Path) -> SampleOptions {
    SampleOptions {
        from: from.to_path_buf(),
        out: out.to_path_buf(),
        train_per_class: 2,
        test_per_class: 1,
    }
}

/// (labels, first pixel of each image) of a written split.
fn read_split(dir: &Path, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let images = read_idx_images(&dir.join(format!("{prefix}-images-idx3-ubyte.gz"))).unwrap();
    let labels = read_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz"))).unwrap();
    assert_eq!((images.rows, images.cols), (ROWS, COLS));
    assert_eq!(images.count, labels.len());
    let firsts = images
        .pixels
        .chunks(ROWS * COLS)
        .map(|image| image[0])
        .collect();
    (labels, firsts)
}

#[test]
fn keeps_the_first_k_of_each_class_in_file_order() {
    let from = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_full_set(from.path(), &TRAIN_LABELS, &TEST_LABELS, true);

    let report = make_sample(&options(from.path(), out.path())).unwrap();

    assert_eq!(
        (report.train_images, report.test_images, report.classes),
        (6, 3, 3)
    );
    // Train: indices 0 (2), 1 (0), 2 (1), 3 (0), 4 (2), 6 (1); the pixel value is the index.
    assert_eq!(
        read_split(out.path(), "train"),
        (vec![2, 0, 1, 0, 2, 1], vec![0, 1, 2, 3, 4, 6])
    );
    assert_eq!(
        read_split(out.path(), "t10k"),
        (vec![1, 0, 2], vec![0, 1, 2])
    );
    assert_eq!(report.files.len(), 4);
    for file in &report.files {
        assert_eq!(sha256_hex(&file.path).unwrap(), file.sha256);
    }
}

#[test]
fn output_is_byte_identical_across_runs() {
    let from = tempfile::tempdir().unwrap();
    write_full_set(from.path(), &TRAIN_LABELS, &TEST_LABELS, true);
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();

    let a = make_sample(&options(from.path(), first.path())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a gzip mtime would now differ
    let b = make_sample(&options(from.path(), second.path())).unwrap();

    let hashes = |r: &xtask::sample::SampleReport| -> Vec<String> {
        r.files.iter().map(|f| f.sha256.clone()).collect()
    };
    assert_eq!(hashes(&a), hashes(&b));
}

#[test]
fn reads_uncompressed_input_too() {
    let from = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_full_set(from.path(), &TRAIN_LABELS, &TEST_LABELS, false);

    let report = make_sample(&options(from.path(), out.path())).unwrap();

    assert_eq!(report.train_images, 6);
}

#[test]
fn a_class_with_too_few_images_is_an_error() {
    let from = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_full_set(from.path(), &TRAIN_LABELS, &TEST_LABELS, true);
    let opts = SampleOptions {
        train_per_class: 5,
        ..options(from.path(), out.path())
    };

    let error = make_sample(&opts).expect_err("class 0 has only 4 training images");

    let message = format!("{error:#}");
    assert!(message.contains("class 0 has only 4"), "{message}");
    assert!(message.contains("train-labels-idx1-ubyte.gz"), "{message}");
}

#[test]
fn missing_input_names_the_file() {
    let from = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();

    let error = make_sample(&options(from.path(), out.path())).expect_err("nothing to read");

    assert!(
        format!("{error:#}").contains("train-images-idx3-ubyte.gz"),
        "{error:#}"
    );
}

#[test]
fn first_per_class_checks_every_class_up_to_the_largest_label() {
    assert_eq!(first_per_class(&[1, 0, 1, 0, 1], 2).unwrap(), [0, 1, 2, 3]);
    // Class 1 never appears although class 2 does.
    let error = first_per_class(&[0, 2, 0, 2], 1).unwrap_err();
    assert!(error.to_string().contains("class 1 has only 0"), "{error}");
    assert!(first_per_class(&[], 1).is_err());
}

fn committed_sample_dir() -> PathBuf {
    xtask::workspace_root().join("datasets/sample/fashion-mnist")
}

/// `(sha256, file name)` pairs listed in `datasets/sample/README.md` as `<sha256>  <name>` lines.
fn readme_checksums() -> Vec<(String, String)> {
    let readme = xtask::workspace_root().join("datasets/sample/README.md");
    let text = fs::read_to_string(&readme).unwrap();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let hash = parts.next()?;
            let name = parts.next()?;
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (hash.to_owned(), name.to_owned()))
        })
        .collect()
}

#[test]
fn committed_sample_matches_its_readme() {
    let listed = readme_checksums();
    assert_eq!(listed.len(), 4, "the README lists the four files' sha256s");
    for (hash, name) in listed {
        let path = committed_sample_dir().join(&name);
        assert_eq!(sha256_hex(&path).unwrap(), hash, "{}", path.display());
    }
}

#[test]
fn committed_sample_is_class_balanced() {
    let dir = committed_sample_dir();
    for (prefix, per_class) in [("train", 600), ("t10k", 100)] {
        let images = read_idx_images(&dir.join(format!("{prefix}-images-idx3-ubyte.gz"))).unwrap();
        let labels = read_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz"))).unwrap();
        assert_eq!(
            (images.count, images.rows, images.cols),
            (10 * per_class, 28, 28)
        );
        let mut counts = [0usize; 10];
        for &label in &labels {
            counts[usize::from(label)] += 1;
        }
        assert_eq!(counts, [per_class; 10], "{prefix}");
    }
}

#[test]
fn committed_sample_is_reproduced_from_the_full_set() {
    let debian = Path::new(xtask::catalog::DEBIAN_FASHION_MNIST_DIR);
    if !debian.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "skipped: {} is absent (apt-get install dataset-fashion-mnist)",
            debian.display()
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        from: debian.to_path_buf(),
        out: out.path().to_path_buf(),
        train_per_class: 600,
        test_per_class: 100,
    };

    let report = make_sample(&opts).unwrap();

    for file in report.files {
        let name = file.path.file_name().unwrap();
        let committed = committed_sample_dir().join(name);
        assert_eq!(
            sha256_hex(&committed).unwrap(),
            file.sha256,
            "{} differs from a fresh `cargo xtask sample`: regenerate and commit it (and its README)",
            committed.display()
        );
    }
}
