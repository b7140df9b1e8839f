//! Fixtures made here (tiny IDX raw and gzipped, a 10-sample N-MNIST zip, SHD-shaped HDF5 with float16
//! times) round-trip through the writers, readers, encoders and the loader.

mod common;

use std::path::Path;

use common::{files_in, write_ten_sample_zip};
use s3gd_core::DatasetKind;
use s3gd_data::dataset::DataSource;
use s3gd_data::encode::{nmnist_bin, nmnist_unit, NEVER};
use s3gd_data::idx::{encode_idx_images, encode_idx_labels};
use s3gd_data::load::{load_fashion_mnist_dir, FASHION_MNIST_FILES};
use s3gd_data::nmnist::{
    convert_zip_to_h5, read_nmnist_h5, read_nmnist_h5_columns, read_nmnist_zip,
    read_nmnist_zip_dataset, NmnistH5,
};
use s3gd_data::shd::{read_shd_h5, read_shd_h5_columns, write_shd_h5, ShdH5};
use s3gd_data::{
    load, read_idx_images, read_idx_labels, write_idx_images_gz, write_idx_labels_gz, IdxImages,
};

/// `count` images whose pixel (i, j) is a function of the image index, labels cycling 0..10.
fn tiny_images(count: usize) -> (IdxImages, Vec<u8>) {
    let pixels = (0..count * 784)
        .map(|k| ((k / 784) * 37 + (k % 784) * 11) as u8)
        .collect();
    let images = IdxImages {
        count,
        rows: 28,
        cols: 28,
        pixels,
    };
    let labels = (0..count).map(|i| (i % 10) as u8).collect();
    (images, labels)
}

#[test]
fn idx_round_trips_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = tiny_images(12);
    let gz_images = dir.path().join("images.gz");
    let gz_labels = dir.path().join("labels.gz");
    write_idx_images_gz(&gz_images, &images).unwrap();
    write_idx_labels_gz(&gz_labels, &labels).unwrap();
    assert_eq!(read_idx_images(&gz_images).unwrap(), images);
    assert_eq!(read_idx_labels(&gz_labels).unwrap(), labels);
    // Equal input, equal bytes: the sample xtask writes gives no git diff when re-made.
    let again = dir.path().join("again.gz");
    write_idx_images_gz(&again, &images).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&gz_images).unwrap()
    );

    let raw_images = dir.path().join("images-idx3-ubyte");
    let raw_labels = dir.path().join("labels-idx1-ubyte");
    std::fs::write(
        &raw_images,
        encode_idx_images(&images, &raw_images).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &raw_labels,
        encode_idx_labels(&labels, &raw_labels).unwrap(),
    )
    .unwrap();
    assert_eq!(read_idx_images(&raw_images).unwrap(), images);
    assert_eq!(read_idx_labels(&raw_labels).unwrap(), labels);
    assert_eq!(files_in(dir.path()).len(), 5, "no temporary files left");
}

fn write_fashion_mnist_dir(dir: &Path, train: usize, test: usize) {
    let (train_images, train_labels) = tiny_images(train);
    let (test_images, test_labels) = tiny_images(test);
    let [a, b, c, d] = FASHION_MNIST_FILES;
    write_idx_images_gz(&dir.join(format!("{a}.gz")), &train_images).unwrap();
    write_idx_labels_gz(&dir.join(format!("{b}.gz")), &train_labels).unwrap();
    // The test files raw: either form is accepted under the original names.
    std::fs::write(dir.join(c), encode_idx_images(&test_images, dir).unwrap()).unwrap();
    std::fs::write(dir.join(d), encode_idx_labels(&test_labels, dir).unwrap()).unwrap();
}

#[test]
fn fashion_mnist_loads_and_encodes_by_first_spike() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().join("fashion-mnist");
    write_fashion_mnist_dir(&dir, 20, 7);
    // `load` finds <data_dir>/fashion-mnist before any other place.
    let splits = load(DatasetKind::Fmnist, data_dir.path()).unwrap();
    assert_eq!(
        splits.source,
        DataSource::FullSet {
            location: dir.clone()
        }
    );
    assert!(splits.source.to_string().contains("full set from"));
    let (train, test) = (&splits.train, &splits.test);
    assert_eq!((train.len(), test.len()), (20, 7));
    assert_eq!(
        (train.steps(), train.inputs(), train.classes()),
        (100, 784, 10)
    );

    let (images, labels) = tiny_images(20);
    let (events, batch_labels) = train.batch(&[3, 0]);
    assert_eq!(
        batch_labels,
        vec![u32::from(labels[3]), u32::from(labels[0])]
    );
    assert_eq!(events, train.batch_reference(&[3, 0]).unwrap());
    for (slot, image) in [3usize, 0].into_iter().enumerate() {
        let pixels = images.image(image);
        for (unit, &p) in pixels.iter().enumerate() {
            let spikes: Vec<usize> = (0..100)
                .filter(|&t| events.events(slot, t).contains(&(unit as u32)))
                .collect();
            match p {
                0..=51 => assert!(spikes.is_empty(), "pixel {p} must never spike"),
                255 => assert_eq!(spikes, vec![4], "pixel 255 spikes at step 4"),
                52 => assert_eq!(spikes, vec![79]),
                _ => assert_eq!(spikes.len(), 1, "one spike per bright pixel"),
            }
        }
    }
    let stats = train.spike_stats();
    assert_eq!(stats.samples, 20);
    assert!(stats.min <= stats.max && stats.density > 0.0);
}

#[test]
fn fashion_mnist_dir_with_mismatched_counts_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_fashion_mnist_dir(dir.path(), 5, 3);
    let [_, b, ..] = FASHION_MNIST_FILES;
    write_idx_labels_gz(&dir.path().join(format!("{b}.gz")), &[0, 1]).unwrap();
    let err = load_fashion_mnist_dir(
        dir.path(),
        DataSource::Fixture {
            description: "mismatch".into(),
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, s3gd_data::DataError::MismatchedLengths { .. }),
        "{err}"
    );
}

#[test]
fn nmnist_zip_reads_converts_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("Train.zip");
    let expected = write_ten_sample_zip(&zip, "N-MNIST/Train/");

    let samples = read_nmnist_zip(&zip).unwrap();
    assert_eq!(samples.len(), 10);
    for (sample, (label, events)) in samples.iter().zip(&expected) {
        assert_eq!(sample.label, *label);
        assert_eq!(&sample.events, events);
    }

    let h5 = dir.path().join("out").join("train_nmnist.h5");
    assert_eq!(convert_zip_to_h5(&zip, &h5).unwrap(), 10);
    assert_eq!(files_in(&dir.path().join("out")), vec!["train_nmnist.h5"]);
    let columns = read_nmnist_h5_columns(&h5).unwrap();
    let mut want = NmnistH5::default();
    for (label, events) in &expected {
        want.push(*label, events);
    }
    assert_eq!(columns, want);

    // Binned from the zip and from the HDF5 file: the same dataset, event for event.
    let from_zip = read_nmnist_zip_dataset(&zip).unwrap();
    let from_h5 = read_nmnist_h5(&h5).unwrap();
    assert_eq!(from_zip, from_h5);
    let all: Vec<usize> = (0..10).collect();
    let (events, labels) = from_h5.batch(&all);
    assert_eq!(labels, (0..10).collect::<Vec<u32>>());
    for (slot, (_, sample)) in expected.iter().enumerate() {
        let mut want = vec![0u16; 300 * 1156];
        for e in sample {
            let bin = nmnist_bin(u64::from(e.t_us)) as usize;
            if bin < 300 {
                want[bin * 1156 + nmnist_unit(e.x, e.y) as usize] += 1;
            }
        }
        let dense = events.select(&[slot]).unwrap().to_dense_counts();
        assert_eq!(dense, want, "sample {slot}");
        // The repeated event with the other polarity lands in the same cell: a count of 2.
        assert!(dense.contains(&2));
        // The 299,500 us event ties to bin 300 and is dropped.
        assert_eq!(events.events(slot, 299), &[] as &[u32]);
    }
}

#[test]
fn shd_written_here_reads_back_with_float16_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_shd.h5");
    let data = ShdH5 {
        times: vec![vec![0.0, 0.001, 0.125, 0.5, 0.5, 2.0], vec![], vec![0.9981]],
        units: vec![vec![699, 0, 1, 2, 2, 3], vec![], vec![42]],
        labels: vec![19, 0, 5],
    };
    write_shd_h5(&path, &data).unwrap();
    let columns = read_shd_h5_columns(&path).unwrap();
    assert_eq!(columns.units, data.units);
    assert_eq!(columns.labels, data.labels);
    let rounded: Vec<Vec<f64>> = data
        .times
        .iter()
        .map(|s| s.iter().map(|&t| half::f16::from_f64(t).to_f64()).collect())
        .collect();
    assert_eq!(columns.times, rounded, "times are stored as float16");

    let binned = read_shd_h5(&path).unwrap();
    let (events, labels) = binned.batch(&[0, 1, 2]);
    assert_eq!(labels, vec![19, 0, 5]);
    assert_eq!(events.events(0, 0), &[699]);
    assert_eq!(
        events.events(0, 1),
        &[0],
        "0.001 s as float16 is just above the edge"
    );
    assert_eq!(
        events.events(0, 62),
        &[1],
        "0.125 s is an exact tie, to even 62"
    );
    assert_eq!(events.events(0, 250), &[2, 2], "repeats add up");
    assert_eq!(events.events(2, 499), &[42]);
    assert_eq!(
        events.total_events(),
        6,
        "2.0 s is past T = 500 and dropped"
    );
}

#[test]
fn loader_names_every_path_it_tried() {
    let data_dir = tempfile::tempdir().unwrap();
    for (kind, file) in [
        (DatasetKind::Nmnist, "train_nmnist.h5"),
        (DatasetKind::Shd, "train_shd.h5"),
    ] {
        let err = load(kind, data_dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, s3gd_data::DataError::NotFound { .. }));
        assert!(message.contains(file), "{message}");
        assert!(message.contains("cargo xtask fetch-data"), "{message}");
    }
    // SHD files in place load.
    let shd = data_dir.path().join("shd");
    let one = ShdH5 {
        times: vec![vec![0.1]],
        units: vec![vec![7]],
        labels: vec![3],
    };
    write_shd_h5(&shd.join("train_shd.h5"), &one).unwrap();
    write_shd_h5(&shd.join("test_shd.h5"), &one).unwrap();
    let splits = load(DatasetKind::Shd, data_dir.path()).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (1, 1));
    assert_eq!(splits.source, DataSource::FullSet { location: shd });
}

#[test]
fn embedded_sample_is_found_and_labelled_as_such() {
    let data_dir = tempfile::tempdir().unwrap();
    let sample = data_dir.path().join("sample").join("fashion-mnist");
    write_fashion_mnist_dir(&sample, 10, 4);
    let splits = load(DatasetKind::Fmnist, data_dir.path()).unwrap();
    if Path::new(s3gd_data::load::DEBIAN_FASHION_MNIST_DIR).is_dir() {
        // The Debian copy comes first when installed.
        assert!(matches!(splits.source, DataSource::FullSet { .. }));
    } else {
        assert_eq!(
            splits.source,
            DataSource::EmbeddedSample { location: sample }
        );
        assert_eq!(splits.train.len(), 10);
        assert!(splits.source.to_string().contains("embedded sample"));
    }
}

#[test]
fn committed_embedded_sample_loads_and_is_class_balanced() {
    let dir = s3gd_data::load::workspace_datasets_dir()
        .join("sample")
        .join("fashion-mnist");
    if s3gd_data::load::find_fashion_mnist_files(&dir).is_none() {
        println!("no embedded sample at {}: skipped", dir.display());
        return;
    }
    let splits = load_fashion_mnist_dir(
        &dir,
        DataSource::EmbeddedSample {
            location: dir.clone(),
        },
    )
    .unwrap();
    let counts = splits.train.class_counts();
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    println!(
        "embedded sample: {} train, {} test; train {}",
        splits.train.len(),
        splits.test.len(),
        splits.train.spike_stats()
    );
}

#[test]
fn first_spike_steps_use_never_for_silent_pixels() {
    let (images, labels) = tiny_images(1);
    let data = s3gd_data::SpikeDataset::from_images(&images, &labels, 100, 10).unwrap();
    let silent = images.pixels.iter().filter(|&&p| p < 52).count();
    assert_eq!(data.spike_count(0), 784 - silent);
    assert_eq!(NEVER, 255);
}
