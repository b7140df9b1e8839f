//! N-MNIST: 5-byte events read straight from Train.zip / Test.zip, conversion to the reference's HDF5
//! layout, and reading that layout back as a binned `SpikeDataset`.
//!
//! Event (SPEC section 7): x = b0, y = b1, polarity = b2 >> 7, t_us = ((b2 & 0x7f) << 16) | (b3 << 8) | b4,
//! on a 34 x 34 sensor. A sample is a zip entry `.../<digit>/<name>.bin` (the digit folder is the label;
//! `Train/` or `Test/` and any folders above are accepted); folder entries, non-`.bin` files and macOS
//! `__MACOSX/` and `._*` debris are skipped. Samples keep the zip's entry order.
//!
//! HDF5 layout (interchangeable with the reference): `/spikes/units` vlen int32 = x + 34 y + 1156 p,
//! `/spikes/times` vlen float32 seconds, `/labels` int32. Times round-trip exactly to the microsecond
//! (see `encode`). Binning: 1 ms bins, T = 300, polarities merged to 1156 inputs, repeats add up.
//! Converting the full training set holds all events in memory (about 8 bytes per event, ~2 GB).

use std::io::{Read, Seek};
use std::path::Path;

use s3gd_core::Preset;

use crate::dataset::{EventDatasetBuilder, SpikeDataset};
use crate::encode::{
    f32_seconds_from_microseconds, microseconds_from_seconds, nmnist_bin, nmnist_unit,
    NMNIST_INPUTS, NMNIST_POLARIZED_UNITS, NMNIST_SIDE,
};
use crate::error::DataError;
use crate::h5::{check_sample_counts, guard, write_h5, H5Reader};

/// Time steps of the N-MNIST preset (1 ms bins): 300.
pub const NMNIST_STEPS: usize = Preset::NMNIST.steps;
/// Digit classes: 10.
pub const NMNIST_CLASSES: usize = Preset::NMNIST.classes;
/// Bytes per event in the original files.
pub const EVENT_BYTES: usize = 5;
/// Largest sample entry accepted (real ones are tens of kB): guards against zip bombs.
pub const MAX_SAMPLE_BYTES: u64 = 64 << 20;

/// One sensor event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NmnistEvent {
    pub x: u8,
    pub y: u8,
    /// 0 (off) or 1 (on).
    pub polarity: u8,
    pub t_us: u32,
}

impl NmnistEvent {
    /// The unit of the HDF5 layout, polarity kept: x + 34 y + 1156 p.
    pub fn polarized_unit(&self) -> u32 {
        nmnist_unit(self.x, self.y) + NMNIST_INPUTS * u32::from(self.polarity)
    }
}

/// One sample of a zip: its label (from the folder), entry name and events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NmnistSample {
    pub label: u8,
    pub entry: String,
    pub events: Vec<NmnistEvent>,
}

/// Decodes the events of one sample file; `zip_for_errors` and `entry` only name it in errors.
pub fn parse_nmnist_events(
    bytes: &[u8],
    zip_for_errors: &Path,
    entry: &str,
) -> Result<Vec<NmnistEvent>, DataError> {
    if !bytes.len().is_multiple_of(EVENT_BYTES) {
        return Err(DataError::EventLength {
            path: zip_for_errors.to_path_buf(),
            entry: entry.to_string(),
            len: bytes.len(),
        });
    }
    bytes
        .chunks_exact(EVENT_BYTES)
        .enumerate()
        .map(|(index, b)| {
            let (x, y) = (b[0], b[1]);
            if u32::from(x) >= NMNIST_SIDE || u32::from(y) >= NMNIST_SIDE {
                return Err(DataError::SensorCoordinate {
                    path: zip_for_errors.to_path_buf(),
                    entry: entry.to_string(),
                    event: index,
                    x,
                    y,
                });
            }
            Ok(NmnistEvent {
                x,
                y,
                polarity: b[2] >> 7,
                t_us: (u32::from(b[2] & 0x7f) << 16) | (u32::from(b[3]) << 8) | u32::from(b[4]),
            })
        })
        .collect()
}

/// What a zip entry is.
#[derive(Debug, PartialEq, Eq)]
enum EntryKind {
    Sample { label: u8 },
    Skip,
    Bad(String),
}

fn classify_entry(name: &str) -> EntryKind {
    let parts: Vec<&str> = name.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let Some((&file, folders)) = parts.split_last() else {
        return EntryKind::Skip;
    };
    let is_sample_file = file.to_ascii_lowercase().ends_with(".bin");
    if name.ends_with('/') || !is_sample_file {
        return EntryKind::Skip;
    }
    // macOS zips carry resource-fork twins: __MACOSX/... and ._name.bin.
    if file.starts_with("._") || folders.contains(&"__MACOSX") {
        return EntryKind::Skip;
    }
    match folders.last() {
        None => EntryKind::Bad("a sample outside any <digit>/ folder: its label is unknown".into()),
        Some(folder) => match folder.as_bytes() {
            [digit @ b'0'..=b'9'] => EntryKind::Sample {
                label: digit - b'0',
            },
            _ => EntryKind::Bad(format!(
                "its folder {folder:?} is not a digit 0-9, so it gives no label"
            )),
        },
    }
}

/// Calls `visit(label, entry name, events)` for every sample of an N-MNIST zip read from `reader`,
/// in entry order; returns the number of samples. A zip without samples is `DataError::EmptyZip`.
pub fn visit_nmnist_zip<R: Read + Seek>(
    reader: R,
    zip_for_errors: &Path,
    mut visit: impl FnMut(u8, &str, Vec<NmnistEvent>) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let path = zip_for_errors;
    let zip_error = |source| DataError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_error)?;
    let mut samples = 0;
    let mut bytes = Vec::new();
    for index in 0..archive.len() {
        let mut file = archive.by_index(index).map_err(zip_error)?;
        let name = file.name().to_string();
        if file.is_dir() {
            continue;
        }
        let label = match classify_entry(&name) {
            EntryKind::Skip => continue,
            EntryKind::Bad(why) => {
                return Err(DataError::BadZipEntry {
                    path: path.to_path_buf(),
                    entry: name,
                    why,
                })
            }
            EntryKind::Sample { label } => label,
        };
        bytes.clear();
        (&mut file)
            .take(MAX_SAMPLE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::BadZipEntry {
                path: path.to_path_buf(),
                entry: name.clone(),
                why: format!("cannot be read: {e}"),
            })?;
        if bytes.len() as u64 > MAX_SAMPLE_BYTES {
            return Err(DataError::BadZipEntry {
                path: path.to_path_buf(),
                entry: name,
                why: format!("larger than {MAX_SAMPLE_BYTES} bytes"),
            });
        }
        let events = parse_nmnist_events(&bytes, path, &name)?;
        visit(label, &name, events)?;
        samples += 1;
    }
    if samples == 0 {
        return Err(DataError::EmptyZip {
            path: path.to_path_buf(),
        });
    }
    Ok(samples)
}

fn open_zip(zip: &Path) -> Result<std::io::BufReader<std::fs::File>, DataError> {
    let file = std::fs::File::open(zip).map_err(|e| DataError::io(zip, e))?;
    Ok(std::io::BufReader::new(file))
}

/// Every sample of an N-MNIST zip, with its raw events.
pub fn read_nmnist_zip(zip: &Path) -> Result<Vec<NmnistSample>, DataError> {
    let mut samples = Vec::new();
    visit_nmnist_zip(open_zip(zip)?, zip, |label, entry, events| {
        samples.push(NmnistSample {
            label,
            entry: entry.to_string(),
            events,
        });
        Ok(())
    })?;
    Ok(samples)
}

/// `(bin, merged unit)` of every event.
fn binned(events: &[NmnistEvent]) -> Vec<(u64, u32)> {
    events
        .iter()
        .map(|e| (nmnist_bin(u64::from(e.t_us)), nmnist_unit(e.x, e.y)))
        .collect()
}

/// An N-MNIST zip binned straight into a dataset (1 ms bins, T = 300, 1156 inputs), no HDF5 step.
pub fn read_nmnist_zip_dataset(zip: &Path) -> Result<SpikeDataset, DataError> {
    let mut builder =
        EventDatasetBuilder::new(NMNIST_STEPS, NMNIST_INPUTS as usize, NMNIST_CLASSES)?;
    visit_nmnist_zip(open_zip(zip)?, zip, |label, _, events| {
        builder.push_sample(label, &binned(&events))
    })?;
    Ok(builder.finish())
}

/// The columns of the reference's HDF5 layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NmnistH5 {
    /// Per sample: x + 34 y + 1156 p.
    pub units: Vec<Vec<i32>>,
    /// Per sample: seconds.
    pub times: Vec<Vec<f32>>,
    pub labels: Vec<i32>,
}

impl NmnistH5 {
    /// Appends one sample in the layout's units and times.
    pub fn push(&mut self, label: u8, events: &[NmnistEvent]) {
        // polarized_unit < 2312 always fits i32.
        self.units
            .push(events.iter().map(|e| e.polarized_unit() as i32).collect());
        self.times.push(
            events
                .iter()
                .map(|e| f32_seconds_from_microseconds(e.t_us))
                .collect(),
        );
        self.labels.push(i32::from(label));
    }
}

/// Writes `data` in the reference's layout (temporary file + rename: all or nothing).
pub fn write_nmnist_h5(path: &Path, data: &NmnistH5) -> Result<(), DataError> {
    if data.units.len() != data.labels.len() || data.times.len() != data.labels.len() {
        return Err(DataError::MismatchedLengths {
            path: path.to_path_buf(),
            what: format!(
                "{} unit lists, {} time lists, {} labels",
                data.units.len(),
                data.times.len(),
                data.labels.len()
            ),
        });
    }
    let units: Vec<&[i32]> = data.units.iter().map(Vec::as_slice).collect();
    let times: Vec<&[f32]> = data.times.iter().map(Vec::as_slice).collect();
    write_h5(path, |file| {
        let spikes = file.create_group("spikes")?;
        spikes.write_vlen_numeric("units", &units)?;
        spikes.write_vlen_numeric("times", &times)?;
        file.new_dataset::<i32>()
            .shape([data.labels.len()])
            .create("labels")?
            .write_raw(&data.labels)
    })
}

/// Converts Train.zip or Test.zip to the reference's HDF5 layout at `out_h5` (temporary file + rename:
/// no partial output on any error). Returns the number of samples.
pub fn convert_zip_to_h5(zip: &Path, out_h5: &Path) -> Result<usize, DataError> {
    let mut data = NmnistH5::default();
    let samples = visit_nmnist_zip(open_zip(zip)?, zip, |label, _, events| {
        data.push(label, &events);
        Ok(())
    })?;
    write_nmnist_h5(out_h5, &data)?;
    Ok(samples)
}

/// Reads and checks the reference's HDF5 layout: matching lengths, labels 0-9, units < 2312,
/// finite non-negative times; then calls `visit(label, polarized units, times in whole microseconds)`.
fn visit_nmnist_h5(
    path: &Path,
    mut visit: impl FnMut(u8, &[u32], &[u64]) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    guard(path, || {
        let file = H5Reader::open(path)?;
        let labels = file.read_ints("labels")?;
        let mut units = file.read_vlen("spikes/units", false)?;
        let mut times = file.read_vlen("spikes/times", true)?;
        check_sample_counts(file.path(), labels.len(), &[&units, &times])?;
        let (mut sample_units, mut sample_times) = (Vec::new(), Vec::new());
        for (sample, &label) in labels.iter().enumerate() {
            let label = u8::try_from(label)
                .ok()
                .filter(|&l| usize::from(l) < NMNIST_CLASSES)
                .ok_or(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    sample,
                    label,
                    classes: NMNIST_CLASSES,
                })?;
            if units.count(sample) != times.count(sample) {
                return Err(DataError::MismatchedLengths {
                    path: path.to_path_buf(),
                    what: format!(
                        "sample {sample} has {} units but {} times",
                        units.count(sample),
                        times.count(sample)
                    ),
                });
            }
            sample_units.clear();
            for unit in units.ints(sample) {
                match u32::try_from(unit) {
                    Ok(u) if u < NMNIST_POLARIZED_UNITS => sample_units.push(u),
                    _ => {
                        return Err(DataError::UnitOutOfRange {
                            path: path.to_path_buf(),
                            sample,
                            unit,
                            limit: NMNIST_POLARIZED_UNITS,
                        })
                    }
                }
            }
            sample_times.clear();
            for time in times.floats(sample) {
                sample_times.push(microseconds_from_seconds(time).ok_or(DataError::BadTime {
                    path: path.to_path_buf(),
                    sample,
                    time,
                })?);
            }
            units.release(sample);
            times.release(sample);
            visit(label, &sample_units, &sample_times)?;
        }
        Ok(labels.len())
    })
}

/// Reads an N-MNIST HDF5 file (reference layout) as columns, checked as [`read_nmnist_h5`] does. Times
/// come back rounded to whole microseconds (exactly as written, for files made from the 5-byte events).
pub fn read_nmnist_h5_columns(path: &Path) -> Result<NmnistH5, DataError> {
    let mut data = NmnistH5::default();
    visit_nmnist_h5(path, |label, units, times_us| {
        data.units.push(units.iter().map(|&u| u as i32).collect());
        data.times
            .push(times_us.iter().map(|&t| (t as f64 * 1e-6) as f32).collect());
        data.labels.push(i32::from(label));
        Ok(())
    })?;
    Ok(data)
}

/// Reads an N-MNIST HDF5 file (reference layout) binned for training: 1 ms bins, T = 300,
/// polarities merged (1156 inputs), repeats add up.
pub fn read_nmnist_h5(path: &Path) -> Result<SpikeDataset, DataError> {
    let mut builder =
        EventDatasetBuilder::new(NMNIST_STEPS, NMNIST_INPUTS as usize, NMNIST_CLASSES)?;
    let mut events = Vec::new();
    visit_nmnist_h5(path, |label, units, times_us| {
        events.clear();
        events.extend(
            units
                .iter()
                .zip(times_us)
                .map(|(&u, &t)| (nmnist_bin(t), u % NMNIST_INPUTS)),
        );
        builder.push_sample(label, &events)
    })?;
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_give_labels_or_reasons() {
        assert_eq!(
            classify_entry("Train/3/00012.bin"),
            EntryKind::Sample { label: 3 }
        );
        assert_eq!(
            classify_entry("N-MNIST/Test/9/1.bin"),
            EntryKind::Sample { label: 9 }
        );
        assert_eq!(classify_entry("Train/3/"), EntryKind::Skip);
        assert_eq!(classify_entry("Train/readme.txt"), EntryKind::Skip);
        assert_eq!(classify_entry("__MACOSX/Train/3/._1.bin"), EntryKind::Skip);
        assert!(matches!(classify_entry("Train/x/1.bin"), EntryKind::Bad(_)));
        assert!(matches!(
            classify_entry("Train/12/1.bin"),
            EntryKind::Bad(_)
        ));
        assert!(matches!(classify_entry("1.bin"), EntryKind::Bad(_)));
    }

    #[test]
    fn events_decode_bit_fields() {
        let bytes = [33, 0, 0x80 | 0x12, 0x34, 0x56, 0, 33, 0x7f, 0xff, 0xff];
        let events = parse_nmnist_events(&bytes, Path::new("z"), "e").unwrap();
        assert_eq!(
            events[0],
            NmnistEvent {
                x: 33,
                y: 0,
                polarity: 1,
                t_us: 0x12_3456
            }
        );
        assert_eq!(events[0].polarized_unit(), 33 + 1156);
        assert_eq!(events[1].t_us, (1 << 23) - 1);
        assert_eq!(events[1].polarized_unit(), 34 * 33);
    }
}
