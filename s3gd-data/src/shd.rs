//! SHD (Spiking Heidelberg Digits): reading shd_train.h5 / shd_test.h5 and binning to 2 ms steps.
//!
//! Layout: `/spikes/times` vlen float16 seconds, `/spikes/units` vlen uint16 channels (< 700),
//! `/labels` uint8 (< 20); `/extra/...` metadata is ignored. Sample counts differ between dataset
//! versions, so the three arrays are checked against each other and nothing is hard-coded. Binning
//! (see `encode`): bin = round_half_even(t / 2 ms) on the exact stored value, keep bin < 500, repeats
//! add up. Other integer widths and float32/64 times read too (the element type comes from the file).

use std::path::Path;

use half::f16;
use rust_hdf5::{DatatypeMessage, H5Type};
use s3gd_core::Preset;

use crate::dataset::{EventDatasetBuilder, SpikeDataset};
use crate::encode::{shd_bin, SHD_INPUTS};
use crate::error::DataError;
use crate::h5::{check_sample_counts, guard, write_h5, H5Reader};

/// Time steps of the SHD preset (2 ms bins, the first 1.0 s): 500.
pub const SHD_STEPS: usize = Preset::SHD.steps;
/// Spoken digits, 0-9 in English and German: 20.
pub const SHD_CLASSES: usize = Preset::SHD.classes;

/// The three arrays of an SHD file, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShdH5 {
    /// Per sample: spike times in seconds, the stored float16 values widened exactly.
    pub times: Vec<Vec<f64>>,
    /// Per sample: channels, < 700.
    pub units: Vec<Vec<u16>>,
    /// < 20.
    pub labels: Vec<u8>,
}

/// Reads and checks an SHD file, calling `visit(label, units, times)` per sample.
fn visit_shd_h5(
    path: &Path,
    mut visit: impl FnMut(u8, &[u16], &[f64]) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    guard(path, || {
        let file = H5Reader::open(path)?;
        let labels = file.read_ints("labels")?;
        let mut times = file.read_vlen("spikes/times", true)?;
        let mut units = file.read_vlen("spikes/units", false)?;
        check_sample_counts(file.path(), labels.len(), &[&times, &units])?;
        let (mut sample_units, mut sample_times) = (Vec::new(), Vec::new());
        for (sample, &label) in labels.iter().enumerate() {
            let label = u8::try_from(label)
                .ok()
                .filter(|&l| usize::from(l) < SHD_CLASSES)
                .ok_or(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    sample,
                    label,
                    classes: SHD_CLASSES,
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
                match u16::try_from(unit) {
                    Ok(u) if u32::from(u) < SHD_INPUTS => sample_units.push(u),
                    _ => {
                        return Err(DataError::UnitOutOfRange {
                            path: path.to_path_buf(),
                            sample,
                            unit,
                            limit: SHD_INPUTS,
                        })
                    }
                }
            }
            sample_times.clear();
            for time in times.floats(sample) {
                if !(time.is_finite() && time >= 0.0) {
                    return Err(DataError::BadTime {
                        path: path.to_path_buf(),
                        sample,
                        time,
                    });
                }
                sample_times.push(time);
            }
            units.release(sample);
            times.release(sample);
            visit(label, &sample_units, &sample_times)?;
        }
        Ok(labels.len())
    })
}

/// Reads an SHD file's three arrays, checked (lengths agree, units < 700, labels < 20, times finite
/// and non-negative).
pub fn read_shd_h5_columns(path: &Path) -> Result<ShdH5, DataError> {
    let mut data = ShdH5::default();
    visit_shd_h5(path, |label, units, times| {
        data.units.push(units.to_vec());
        data.times.push(times.to_vec());
        data.labels.push(label);
        Ok(())
    })?;
    Ok(data)
}

/// Reads an SHD file binned for training: 2 ms bins, T = 500, 700 inputs, repeats add up.
pub fn read_shd_h5(path: &Path) -> Result<SpikeDataset, DataError> {
    let mut builder = EventDatasetBuilder::new(SHD_STEPS, SHD_INPUTS as usize, SHD_CLASSES)?;
    let mut events = Vec::new();
    visit_shd_h5(path, |label, units, times| {
        events.clear();
        // Times were checked finite and non-negative, so shd_bin is Some; u64::MAX drops the odd None.
        events.extend(
            times
                .iter()
                .zip(units)
                .map(|(&t, &u)| (shd_bin(t).unwrap_or(u64::MAX), u32::from(u))),
        );
        builder.push_sample(label, &events)
    })?;
    Ok(builder.finish())
}

/// A float16 as HDF5 stores it (IEEE binary16, little-endian), for writing SHD-shaped files.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
struct H5F16(u16);

impl H5Type for H5F16 {
    fn hdf5_type() -> DatatypeMessage {
        DatatypeMessage::f16_type()
    }
    fn element_size() -> usize {
        2
    }
}

/// Writes an SHD-shaped file (vlen float16 times, vlen uint16 units, uint8 labels), all or nothing.
/// Times are rounded to the nearest float16, as SHD stores them. Used for fixtures.
pub fn write_shd_h5(path: &Path, data: &ShdH5) -> Result<(), DataError> {
    if data.units.len() != data.labels.len() || data.times.len() != data.labels.len() {
        return Err(DataError::MismatchedLengths {
            path: path.to_path_buf(),
            what: format!(
                "{} time lists, {} unit lists, {} labels",
                data.times.len(),
                data.units.len(),
                data.labels.len()
            ),
        });
    }
    let times: Vec<Vec<H5F16>> = data
        .times
        .iter()
        .map(|sample| {
            sample
                .iter()
                .map(|&t| H5F16(f16::from_f64(t).to_bits()))
                .collect()
        })
        .collect();
    let times: Vec<&[H5F16]> = times.iter().map(Vec::as_slice).collect();
    let units: Vec<&[u16]> = data.units.iter().map(Vec::as_slice).collect();
    write_h5(path, |file| {
        let spikes = file.create_group("spikes")?;
        spikes.write_vlen_numeric("times", &times)?;
        spikes.write_vlen_numeric("units", &units)?;
        file.new_dataset::<u8>()
            .shape([data.labels.len()])
            .create("labels")?
            .write_raw(&data.labels)
    })
}
