//! Fixture builders shared by the integration tests: N-MNIST event bytes and zips, raw HDF5 files.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use rust_hdf5::{DatatypeMessage, H5File, H5Type, Hdf5Error};
use s3gd_data::nmnist::NmnistEvent;
use zip::write::SimpleFileOptions;

/// The 5-byte encoding of `events` (x, y, polarity, t_us).
pub fn event_bytes(events: &[NmnistEvent]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| {
            [
                e.x,
                e.y,
                (e.polarity << 7) | ((e.t_us >> 16) as u8 & 0x7f),
                (e.t_us >> 8) as u8,
                e.t_us as u8,
            ]
        })
        .collect()
}

/// A zip of `entries`: `(name, Some(bytes))` for files, `(name, None)` for folders.
pub fn write_zip(path: &Path, entries: &[(&str, Option<Vec<u8>>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        match bytes {
            Some(bytes) => {
                zip.start_file(*name, options).unwrap();
                zip.write_all(bytes).unwrap();
            }
            None => zip.add_directory(*name, options).unwrap(),
        }
    }
    zip.finish().unwrap();
}

/// Ten samples, one per digit, each with a few events (sample d has d + 2 events, some repeated,
/// one at 299,500 us: a tie that rounds to bin 300, past T).
pub fn ten_samples() -> Vec<(u8, Vec<NmnistEvent>)> {
    (0..10u8)
        .map(|digit| {
            let mut events: Vec<NmnistEvent> = (0..u32::from(digit) + 1)
                .map(|k| NmnistEvent {
                    x: (digit * 3 + k as u8) % 34,
                    y: (digit * 5) % 34,
                    polarity: (k % 2) as u8,
                    t_us: 1000 * k + 500 * (k % 3),
                })
                .collect();
            // A repeat of the first event with the other polarity: same merged unit, same bin.
            let first = events[0];
            events.push(NmnistEvent {
                polarity: 1 - first.polarity,
                ..first
            });
            events.push(NmnistEvent {
                x: 33,
                y: 33,
                polarity: 0,
                t_us: 299_500,
            });
            (digit, events)
        })
        .collect()
}

/// Writes [`ten_samples`] as an N-MNIST zip with folder entries under `prefix` (e.g. "Train/").
pub fn write_ten_sample_zip(path: &Path, prefix: &str) -> Vec<(u8, Vec<NmnistEvent>)> {
    let samples = ten_samples();
    let mut entries: Vec<(String, Option<Vec<u8>>)> = vec![(prefix.to_string(), None)];
    for (digit, events) in &samples {
        entries.push((format!("{prefix}{digit}/"), None));
        entries.push((
            format!("{prefix}{digit}/{:05}.bin", 10 + digit),
            Some(event_bytes(events)),
        ));
    }
    let borrowed: Vec<(&str, Option<Vec<u8>>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    write_zip(path, &borrowed);
    samples
}

/// A float16 element for raw HDF5 fixtures.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct F16(pub u16);

impl H5Type for F16 {
    fn hdf5_type() -> DatatypeMessage {
        DatatypeMessage::f16_type()
    }
    fn element_size() -> usize {
        2
    }
}

/// An HDF5 file made by `build` directly with rust-hdf5 (for malformed layouts our writers refuse).
pub fn write_raw_h5(path: &Path, build: impl FnOnce(&H5File) -> Result<(), Hdf5Error>) {
    let file = H5File::create(path).unwrap();
    build(&file).unwrap();
    file.close().unwrap();
}

/// The committed fixture `name` under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Files in `dir` (to check that nothing partial was left behind).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
