//! Every malformed input gives its typed error (matched by variant), and a failed conversion leaves
//! no file behind.

mod common;

use std::io::Write;
use std::path::Path;

use common::{event_bytes, files_in, fixture, write_raw_h5, write_zip, F16};
use s3gd_data::idx::{encode_idx_images, encode_idx_labels, IMAGES_MAGIC, LABELS_MAGIC};
use s3gd_data::nmnist::{convert_zip_to_h5, read_nmnist_h5, read_nmnist_zip, NmnistEvent};
use s3gd_data::shd::read_shd_h5;
use s3gd_data::{read_idx_images, read_idx_labels, DataError, IdxImages};

fn images(count: usize) -> IdxImages {
    IdxImages {
        count,
        rows: 28,
        cols: 28,
        pixels: vec![7; count * 784],
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn idx_errors_are_typed_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = encode_idx_images(&images(3), dir.path()).unwrap();

    let cut = write(dir.path(), "cut", &raw[..raw.len() - 10]);
    match read_idx_images(&cut) {
        Err(DataError::Truncated {
            path, needed, len, ..
        }) => {
            assert_eq!(path, cut);
            assert_eq!((needed, len), (16 + 3 * 784, 16 + 3 * 784 - 10));
        }
        other => panic!("{other:?}"),
    }
    let short_header = write(dir.path(), "header", &raw[..10]);
    assert!(matches!(
        read_idx_images(&short_header),
        Err(DataError::Truncated {
            needed: 16,
            len: 10,
            ..
        })
    ));

    let labels = write(
        dir.path(),
        "labels",
        &encode_idx_labels(&[1, 2], dir.path()).unwrap(),
    );
    match read_idx_images(&labels) {
        Err(e @ DataError::BadMagic { .. }) => {
            let message = e.to_string();
            assert!(message.contains("0x00000801") && message.contains("0x00000803"));
            assert!(message.contains("labels"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_idx_labels(&write(dir.path(), "img", &raw)),
        Err(DataError::BadMagic {
            found: IMAGES_MAGIC,
            expected: LABELS_MAGIC,
            ..
        })
    ));

    let mut square32 = raw.clone();
    square32[8..12].copy_from_slice(&32u32.to_be_bytes());
    assert!(matches!(
        read_idx_images(&write(dir.path(), "32", &square32)),
        Err(DataError::BadDimensions { .. })
    ));

    let mut long = raw.clone();
    long.extend_from_slice(&[0; 3]);
    assert!(matches!(
        read_idx_images(&write(dir.path(), "long", &long)),
        Err(DataError::TrailingBytes { extra: 3, .. })
    ));

    let mut corrupt = gzip(&raw);
    let middle = corrupt.len() / 2;
    corrupt[middle..].fill(0xa5);
    assert!(matches!(
        read_idx_images(&write(dir.path(), "corrupt.gz", &corrupt)),
        Err(DataError::Gzip { .. })
    ));
    let gz = gzip(&raw);
    assert!(matches!(
        read_idx_images(&write(dir.path(), "cut.gz", &gz[..gz.len() / 2])),
        Err(DataError::Gzip { .. })
    ));

    match read_idx_labels(&dir.path().join("absent")) {
        Err(DataError::Io { path, source }) => {
            assert!(path.ends_with("absent"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

fn one_event(x: u8, y: u8) -> Vec<u8> {
    event_bytes(&[NmnistEvent {
        x,
        y,
        polarity: 1,
        t_us: 1234,
    }])
}

#[test]
fn nmnist_zip_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bad.zip");

    write_zip(&zip, &[("Train/1/1.bin", Some(vec![0; 7]))]);
    match read_nmnist_zip(&zip) {
        Err(DataError::EventLength { entry, len, .. }) => {
            assert_eq!((entry.as_str(), len), ("Train/1/1.bin", 7));
        }
        other => panic!("{other:?}"),
    }

    let mut off_sensor = one_event(0, 0);
    off_sensor.extend(one_event(34, 2));
    write_zip(&zip, &[("Train/1/1.bin", Some(off_sensor))]);
    assert!(matches!(
        read_nmnist_zip(&zip),
        Err(DataError::SensorCoordinate {
            event: 1,
            x: 34,
            y: 2,
            ..
        })
    ));
    write_zip(&zip, &[("Train/1/1.bin", Some(one_event(3, 34)))]);
    assert!(matches!(
        read_nmnist_zip(&zip),
        Err(DataError::SensorCoordinate { y: 34, .. })
    ));

    write_zip(
        &zip,
        &[
            ("Train/", None),
            ("Train/1/", None),
            ("Train/README.txt", Some(b"no samples".to_vec())),
        ],
    );
    assert!(matches!(
        read_nmnist_zip(&zip),
        Err(DataError::EmptyZip { .. })
    ));

    write_zip(&zip, &[("Train/one/1.bin", Some(one_event(1, 1)))]);
    match read_nmnist_zip(&zip) {
        Err(DataError::BadZipEntry { entry, why, .. }) => {
            assert_eq!(entry, "Train/one/1.bin");
            assert!(why.contains("not a digit"), "{why}");
        }
        other => panic!("{other:?}"),
    }

    let not_zip = write(dir.path(), "Test.zip", b"this is not a zip archive");
    assert!(matches!(
        read_nmnist_zip(&not_zip),
        Err(DataError::Zip { .. })
    ));
    assert!(matches!(
        read_nmnist_zip(&dir.path().join("missing.zip")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn failed_conversion_leaves_no_file_and_keeps_an_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("Train.zip");
    // A good sample first, then a bad one: the failure comes after work has started.
    write_zip(
        &zip,
        &[
            ("Train/1/1.bin", Some(one_event(1, 1))),
            ("Train/2/2.bin", Some(vec![1, 2, 3])),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let h5 = out.path().join("train_nmnist.h5");
    assert!(matches!(
        convert_zip_to_h5(&zip, &h5),
        Err(DataError::EventLength { .. })
    ));
    assert!(files_in(out.path()).is_empty());

    std::fs::write(&h5, b"previous").unwrap();
    assert!(convert_zip_to_h5(&zip, &h5).is_err());
    assert_eq!(std::fs::read(&h5).unwrap(), b"previous");
    assert_eq!(files_in(out.path()), vec!["train_nmnist.h5"]);
}

fn f16s(values: &[f32]) -> Vec<F16> {
    values
        .iter()
        .map(|&v| F16(half::f16::from_f32(v).to_bits()))
        .collect()
}

/// An SHD-shaped file from raw parts, so that each can be broken on purpose.
fn shd_file(path: &Path, times: &[Vec<F16>], units: &[Vec<u16>], labels: &[u8]) {
    let times: Vec<&[F16]> = times.iter().map(Vec::as_slice).collect();
    let units: Vec<&[u16]> = units.iter().map(Vec::as_slice).collect();
    write_raw_h5(path, |f| {
        let spikes = f.create_group("spikes")?;
        spikes.write_vlen_numeric("times", &times)?;
        spikes.write_vlen_numeric("units", &units)?;
        f.new_dataset::<u8>()
            .shape([labels.len()])
            .create("labels")?
            .write_raw(labels)
    });
}

#[test]
fn shd_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shd.h5");
    let good_times = vec![f16s(&[0.1, 0.2]), f16s(&[0.3])];
    let good_units = vec![vec![1, 2], vec![3]];

    shd_file(&path, &good_times, &good_units, &[1, 2]);
    assert_eq!(read_shd_h5(&path).unwrap().len(), 2, "the good file reads");

    shd_file(&path, &good_times, &good_units, &[1, 2, 3]);
    match read_shd_h5(&path) {
        Err(DataError::MismatchedLengths { what, .. }) => {
            assert!(
                what.contains("/labels has 3") && what.contains("/spikes/times has 2"),
                "{what}"
            );
        }
        other => panic!("{other:?}"),
    }

    shd_file(&path, &good_times, &[vec![1, 700], vec![3]], &[1, 2]);
    assert!(matches!(
        read_shd_h5(&path),
        Err(DataError::UnitOutOfRange {
            sample: 0,
            unit: 700,
            limit: 700,
            ..
        })
    ));

    shd_file(&path, &good_times, &good_units, &[1, 20]);
    assert!(matches!(
        read_shd_h5(&path),
        Err(DataError::LabelOutOfRange {
            sample: 1,
            label: 20,
            classes: 20,
            ..
        })
    ));

    shd_file(&path, &good_times, &[vec![1], vec![3]], &[1, 2]);
    assert!(matches!(
        read_shd_h5(&path),
        Err(DataError::MismatchedLengths { .. })
    ));

    shd_file(
        &path,
        &[f16s(&[0.1, f32::NAN]), f16s(&[0.3])],
        &good_units,
        &[1, 2],
    );
    assert!(matches!(
        read_shd_h5(&path),
        Err(DataError::BadTime { sample: 0, .. })
    ));
    shd_file(
        &path,
        &[f16s(&[0.1, -0.5]), f16s(&[0.3])],
        &good_units,
        &[1, 2],
    );
    assert!(matches!(read_shd_h5(&path), Err(DataError::BadTime { .. })));

    // Times stored as integers.
    let units: Vec<&[u16]> = good_units.iter().map(Vec::as_slice).collect();
    write_raw_h5(&path, |f| {
        let spikes = f.create_group("spikes")?;
        spikes.write_vlen_numeric("times", &units)?;
        spikes.write_vlen_numeric("units", &units)?;
        f.new_dataset::<u8>()
            .shape([2])
            .create("labels")?
            .write_raw(&[1u8, 2])
    });
    match read_shd_h5(&path) {
        Err(DataError::WrongType { dataset, found, .. }) => {
            assert_eq!(
                (dataset.as_str(), found.as_str()),
                ("/spikes/times", "vlen uint16")
            );
        }
        other => panic!("{other:?}"),
    }

    // No labels at all.
    write_raw_h5(&path, |f| {
        let spikes = f.create_group("spikes")?;
        spikes.write_vlen_numeric("units", &units)?;
        Ok(())
    });
    match read_shd_h5(&path) {
        Err(DataError::MissingDataset { dataset, .. }) => assert_eq!(dataset, "/labels"),
        other => panic!("{other:?}"),
    }

    // Labels of two dimensions.
    write_raw_h5(&path, |f| {
        f.new_dataset::<u8>()
            .shape([2, 1])
            .create("labels")?
            .write_raw(&[1u8, 2])
    });
    assert!(matches!(
        read_shd_h5(&path),
        Err(DataError::BadDimensions { .. })
    ));
}

#[test]
fn nmnist_h5_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nmnist.h5");
    let nmnist_file = |units: &[i32], labels: &[i32]| {
        let times = vec![0.001f32; units.len()];
        write_raw_h5(&path, |f| {
            let spikes = f.create_group("spikes")?;
            spikes.write_vlen_numeric("units", &[units])?;
            spikes.write_vlen_numeric("times", &[times.as_slice()])?;
            f.new_dataset::<i32>()
                .shape([labels.len()])
                .create("labels")?
                .write_raw(labels)
        });
    };
    nmnist_file(&[0, 2311], &[9]);
    assert_eq!(read_nmnist_h5(&path).unwrap().len(), 1);
    nmnist_file(&[0, 2312], &[9]);
    assert!(matches!(
        read_nmnist_h5(&path),
        Err(DataError::UnitOutOfRange {
            unit: 2312,
            limit: 2312,
            ..
        })
    ));
    nmnist_file(&[-1], &[9]);
    assert!(matches!(
        read_nmnist_h5(&path),
        Err(DataError::UnitOutOfRange { unit: -1, .. })
    ));
    nmnist_file(&[0], &[10]);
    assert!(matches!(
        read_nmnist_h5(&path),
        Err(DataError::LabelOutOfRange { label: 10, .. })
    ));
    nmnist_file(&[0], &[1, 2]);
    assert!(matches!(
        read_nmnist_h5(&path),
        Err(DataError::MismatchedLengths { .. })
    ));
}

#[test]
fn broken_hdf5_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let text = write(dir.path(), "text.h5", b"not an HDF5 file at all");
    assert!(matches!(read_shd_h5(&text), Err(DataError::Hdf5 { .. })));
    assert!(matches!(read_nmnist_h5(&text), Err(DataError::Hdf5 { .. })));
    assert!(matches!(
        read_shd_h5(&dir.path().join("absent.h5")),
        Err(DataError::Io { .. })
    ));

    // Found by the shd_h5 fuzz target: a corrupt chunk shape in a deflate-filtered file used to make
    // rust-hdf5 allocate 2^49 bytes infallibly, aborting the process.
    match read_shd_h5(&fixture("fuzz_shd_huge_chunk.h5")) {
        Err(DataError::Hdf5 { message, .. }) => assert!(message.contains("chunks"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Every truncation and many single-byte corruptions of a real h5py file.
    let good = std::fs::read(fixture("shd_h5py.h5")).unwrap();
    let broken = dir.path().join("broken.h5");
    let whole = read_shd_h5(&fixture("shd_h5py.h5")).unwrap();
    for cut in (0..good.len()).step_by(97) {
        std::fs::write(&broken, &good[..cut]).unwrap();
        // The file's tail holds only /extra metadata, which is never read: cutting it changes nothing.
        if let Ok(read) = read_shd_h5(&broken) {
            assert_eq!(read, whole, "cut at {cut} read differently");
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = good.clone();
        let at = (state % bytes.len() as u64) as usize;
        bytes[at] ^= (state >> 32) as u8 | 1;
        std::fs::write(&broken, &bytes).unwrap();
        // Either a typed error or (when the byte was unused) a good read; never a panic.
        let _ = read_shd_h5(&broken);
    }
}
