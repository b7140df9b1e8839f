//! Thin layer over the pure-Rust `rust-hdf5` crate: typed reads of 1-D integer and vlen numeric
//! datasets, all-or-nothing writes, and errors that name the file and the dataset.
//!
//! Element types are decoded from the file's own datatype message (integers of 1 to 8 bytes, IEEE
//! float16/32/64, either byte order), so a file written by h5py with a slightly different integer
//! width still reads. Vlen data stays as the raw heap bytes of each sample until a caller decodes one
//! sample at a time, which keeps the peak memory of a full N-MNIST read near the file size.
//! `rust-hdf5` returned errors (never panicked) on 3,000 randomly corrupted SHD-shaped files when this
//! crate chose it; as a second line of defence, [`guard`] turns a panic inside it into `DataError::Hdf5`.
//! An allocation failure is not a panic but an abort, so sizes that reach an infallible allocation in
//! the crate (decoded chunk images) are bounded here before any read.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use half::f16;
use rust_hdf5::{ByteOrder, DatatypeMessage, H5Dataset, H5File, Hdf5Error};

use crate::atomic::write_atomically_by_path;
use crate::error::DataError;

/// Largest decoded chunk accepted: 1 GiB (HDF5 allows < 4 GiB; real files use kilobytes).
const MAX_CHUNK_BYTES: u64 = 1 << 30;

/// A numeric element type this crate can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Number {
    Int {
        size: usize,
        signed: bool,
        big_endian: bool,
    },
    Float {
        size: usize,
        big_endian: bool,
    },
}

impl Number {
    fn from_datatype(datatype: &DatatypeMessage) -> Option<Number> {
        match *datatype {
            DatatypeMessage::FixedPoint {
                size,
                byte_order,
                signed,
                bit_offset: 0,
                bit_precision,
            } if matches!(size, 1 | 2 | 4 | 8) && u32::from(bit_precision) == 8 * size => {
                Some(Number::Int {
                    size: size as usize,
                    signed,
                    big_endian: byte_order == ByteOrder::BigEndian,
                })
            }
            DatatypeMessage::FloatingPoint {
                size,
                byte_order,
                exponent_size,
                mantissa_size,
                ..
            } if matches!(
                (size, exponent_size, mantissa_size),
                (2, 5, 10) | (4, 8, 23) | (8, 11, 52)
            ) =>
            {
                Some(Number::Float {
                    size: size as usize,
                    big_endian: byte_order == ByteOrder::BigEndian,
                })
            }
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Number::Int { size, .. } | Number::Float { size, .. } => size,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Number::Float { .. })
    }

    /// `bytes` (exactly `size` of them) as little-endian u64 bits.
    fn bits(bytes: &[u8], big_endian: bool) -> u64 {
        let mut bits = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            let shift = if big_endian { bytes.len() - 1 - i } else { i };
            bits |= u64::from(b) << (8 * shift);
        }
        bits
    }

    /// An integer element, saturated to i64 (values past i64::MAX are out of any range we accept).
    pub(crate) fn decode_int(self, bytes: &[u8]) -> i64 {
        match self {
            Number::Int {
                size,
                signed,
                big_endian,
            } => {
                let bits = Self::bits(bytes, big_endian);
                if signed && size < 8 {
                    let shift = 64 - 8 * size as u32;
                    ((bits << shift) as i64) >> shift
                } else if signed {
                    bits as i64
                } else {
                    i64::try_from(bits).unwrap_or(i64::MAX)
                }
            }
            Number::Float { .. } => 0,
        }
    }

    /// A float element, widened exactly to f64.
    pub(crate) fn decode_float(self, bytes: &[u8]) -> f64 {
        match self {
            Number::Float { size, big_endian } => {
                let bits = Self::bits(bytes, big_endian);
                match size {
                    2 => f16::from_bits(bits as u16).to_f64(),
                    4 => f64::from(f32::from_bits(bits as u32)),
                    _ => f64::from_bits(bits),
                }
            }
            Number::Int { .. } => f64::NAN,
        }
    }
}

/// A short name of a datatype for error messages: int32, uint16, float16, vlen float16, ...
fn describe(datatype: &DatatypeMessage) -> String {
    match (datatype, Number::from_datatype(datatype)) {
        (_, Some(Number::Int { size, signed, .. })) => {
            format!("{}int{}", if signed { "" } else { "u" }, 8 * size)
        }
        (_, Some(Number::Float { size, .. })) => format!("float{}", 8 * size),
        (DatatypeMessage::VarLenSequence { base }, None) => format!("vlen {}", describe(base)),
        (other, None) => format!("{other:?}"),
    }
}

/// Runs an HDF5 read, turning a panic inside the HDF5 crate into an error naming `path`.
pub(crate) fn guard<T>(
    path: &Path,
    read: impl FnOnce() -> Result<T, DataError>,
) -> Result<T, DataError> {
    catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(DataError::hdf5(
            path,
            "the HDF5 reader panicked on this file (corrupt or unsupported file)",
        ))
    })
}

/// The vlen datasets of one file column: the raw heap bytes of each sample and their element type.
pub(crate) struct VlenColumn {
    pub(crate) name: String,
    pub(crate) number: Number,
    objects: Vec<Vec<u8>>,
}

impl VlenColumn {
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Elements in sample `i`.
    pub(crate) fn count(&self, i: usize) -> usize {
        self.objects[i].len() / self.number.size()
    }

    /// Sample `i` decoded as integers.
    pub(crate) fn ints(&self, i: usize) -> impl Iterator<Item = i64> + '_ {
        let number = self.number;
        self.objects[i]
            .chunks_exact(number.size())
            .map(move |c| number.decode_int(c))
    }

    /// Sample `i` decoded as floats.
    pub(crate) fn floats(&self, i: usize) -> impl Iterator<Item = f64> + '_ {
        let number = self.number;
        self.objects[i]
            .chunks_exact(number.size())
            .map(move |c| number.decode_float(c))
    }

    /// Frees the bytes of sample `i` once it has been decoded.
    pub(crate) fn release(&mut self, i: usize) {
        self.objects[i] = Vec::new();
    }
}

/// An HDF5 file open for reading.
pub(crate) struct H5Reader {
    file: H5File,
    path: PathBuf,
}

impl H5Reader {
    pub(crate) fn open(path: &Path) -> Result<Self, DataError> {
        // A missing file is an I/O error with the OS's own words, not an HDF5 format error.
        std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let file = H5File::options()
            .best_effort_locking()
            .open(path)
            .map_err(|e| DataError::hdf5(path, format!("not a readable HDF5 file: {e}")))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn dataset(&self, name: &str) -> Result<H5Dataset, DataError> {
        let dataset = match self.file.dataset(name) {
            Ok(dataset) => dataset,
            Err(Hdf5Error::NotFound(_)) => {
                return Err(DataError::MissingDataset {
                    path: self.path.clone(),
                    dataset: format!("/{name}"),
                })
            }
            Err(e) => return Err(DataError::hdf5(&self.path, format!("dataset /{name}: {e}"))),
        };
        // rust-hdf5 allocates each filtered chunk's decoded image with an infallible `vec!` of the size
        // the file claims, so a corrupt chunk shape would abort the process (found by fuzzing). HDF5
        // itself caps chunks below 4 GiB and real files use kilobytes: refuse anything past the cap.
        if let Some(chunk) = dataset.chunk_dims() {
            let bytes = chunk
                .iter()
                .try_fold(dataset.element_size() as u64, |acc, &d| {
                    acc.checked_mul(d as u64)
                });
            if bytes.is_none_or(|b| b > MAX_CHUNK_BYTES) {
                return Err(DataError::hdf5(
                    &self.path,
                    format!(
                        "dataset /{name}: chunks of {chunk:?} elements of {} bytes exceed the {MAX_CHUNK_BYTES}-byte limit (corrupt file?)",
                        dataset.element_size()
                    ),
                ));
            }
        }
        Ok(dataset)
    }

    fn one_dimensional(&self, name: &str, dataset: &H5Dataset) -> Result<(), DataError> {
        let shape = dataset.shape();
        if shape.len() != 1 {
            return Err(DataError::BadDimensions {
                path: self.path.clone(),
                what: format!("dataset /{name} has shape {shape:?}, expected one dimension"),
            });
        }
        Ok(())
    }

    fn datatype(&self, name: &str, dataset: &H5Dataset) -> Result<DatatypeMessage, DataError> {
        dataset
            .datatype()
            .map_err(|e| DataError::hdf5(&self.path, format!("datatype of /{name}: {e}")))
    }

    fn wrong_type(&self, name: &str, found: &DatatypeMessage, expected: &'static str) -> DataError {
        DataError::WrongType {
            path: self.path.clone(),
            dataset: format!("/{name}"),
            found: describe(found),
            expected,
        }
    }

    /// A 1-D integer dataset, any width and signedness, as i64.
    pub(crate) fn read_ints(&self, name: &str) -> Result<Vec<i64>, DataError> {
        let dataset = self.dataset(name)?;
        self.one_dimensional(name, &dataset)?;
        let datatype = self.datatype(name, &dataset)?;
        let Some(Number::Int { size, signed, .. }) = Number::from_datatype(&datatype) else {
            return Err(self.wrong_type(name, &datatype, "an integer type"));
        };
        let fail = |e: Hdf5Error| DataError::hdf5(&self.path, format!("reading /{name}: {e}"));
        // read_raw converts to host byte order; the Rust type only has to match the width.
        let values: Vec<i64> = match (size, signed) {
            (1, false) => widen(dataset.read_raw::<u8>().map_err(fail)?),
            (1, true) => widen(dataset.read_raw::<i8>().map_err(fail)?),
            (2, false) => widen(dataset.read_raw::<u16>().map_err(fail)?),
            (2, true) => widen(dataset.read_raw::<i16>().map_err(fail)?),
            (4, false) => widen(dataset.read_raw::<u32>().map_err(fail)?),
            (4, true) => widen(dataset.read_raw::<i32>().map_err(fail)?),
            (8, true) => widen(dataset.read_raw::<i64>().map_err(fail)?),
            _ => dataset
                .read_raw::<u64>()
                .map_err(fail)?
                .into_iter()
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
        };
        Ok(values)
    }

    /// A 1-D vlen dataset of numbers; `want_float` picks floats (times) or integers (units).
    pub(crate) fn read_vlen(&self, name: &str, want_float: bool) -> Result<VlenColumn, DataError> {
        let dataset = self.dataset(name)?;
        self.one_dimensional(name, &dataset)?;
        let datatype = self.datatype(name, &dataset)?;
        let expected = if want_float {
            "a vlen sequence of floats"
        } else {
            "a vlen sequence of integers"
        };
        let DatatypeMessage::VarLenSequence { base } = &datatype else {
            return Err(self.wrong_type(name, &datatype, expected));
        };
        let number = match Number::from_datatype(base) {
            Some(number) if number.is_float() == want_float => number,
            _ => return Err(self.wrong_type(name, &datatype, expected)),
        };
        let objects = dataset
            .read_vlen_bytes()
            .map_err(|e| DataError::hdf5(&self.path, format!("reading /{name}: {e}")))?;
        if let Some(bad) = objects.iter().position(|o| o.len() % number.size() != 0) {
            return Err(DataError::hdf5(
                &self.path,
                format!(
                    "/{name}: sample {bad} holds {} bytes, not a whole number of {}-byte elements",
                    objects[bad].len(),
                    number.size()
                ),
            ));
        }
        Ok(VlenColumn {
            name: format!("/{name}"),
            number,
            objects,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn widen<T: Into<i64>>(values: Vec<T>) -> Vec<i64> {
    values.into_iter().map(Into::into).collect()
}

/// Checks that every column has as many samples as the labels; names all lengths if not.
pub(crate) fn check_sample_counts(
    path: &Path,
    labels: usize,
    columns: &[&VlenColumn],
) -> Result<(), DataError> {
    if columns.iter().all(|c| c.len() == labels) {
        return Ok(());
    }
    let lengths: Vec<String> = columns
        .iter()
        .map(|c| format!("{} has {}", c.name, c.len()))
        .collect();
    Err(DataError::MismatchedLengths {
        path: path.to_path_buf(),
        what: format!("/labels has {labels} samples, {}", lengths.join(", ")),
    })
}

/// Creates `path` through `build` on a temporary file (all or nothing), without timestamps so that
/// equal content gives equal bytes.
pub(crate) fn write_h5(
    path: &Path,
    build: impl FnOnce(&H5File) -> Result<(), Hdf5Error>,
) -> Result<(), DataError> {
    write_atomically_by_path(path, |temp| {
        let file = H5File::options()
            .track_times(false)
            .best_effort_locking()
            .create(temp)
            .map_err(|e| DataError::hdf5(path, format!("creating HDF5 file: {e}")))?;
        build(&file).map_err(|e| DataError::hdf5(path, format!("writing HDF5: {e}")))?;
        file.close()
            .map_err(|e| DataError::hdf5(path, format!("closing HDF5 file: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_integers_of_every_width_and_order() {
        let int = |size, signed, big_endian| Number::Int {
            size,
            signed,
            big_endian,
        };
        assert_eq!(int(2, false, false).decode_int(&[0xbc, 0x02]), 700);
        assert_eq!(int(2, false, true).decode_int(&[0x02, 0xbc]), 700);
        assert_eq!(int(4, true, false).decode_int(&[0xff; 4]), -1);
        assert_eq!(int(1, true, false).decode_int(&[0x80]), -128);
        assert_eq!(int(8, false, false).decode_int(&[0xff; 8]), i64::MAX);
        let half = Number::Float {
            size: 2,
            big_endian: false,
        };
        assert_eq!(half.decode_float(&0x3c00u16.to_le_bytes()), 1.0);
        assert_eq!(
            half.decode_float(&0x1419u16.to_le_bytes()),
            1049.0 / 1048576.0
        );
    }
}
