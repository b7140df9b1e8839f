//! IDX files (Fashion-MNIST): a reader for raw and gzipped files and a writer of gzipped ones.
//!
//! Format (SPEC section 7): big-endian u32 header, then a u8 payload. Images: magic 0x00000803, then
//! count, 28, 28, then count * 784 pixels. Labels: magic 0x00000801, then count, then count labels.
//! The reader checks the magic, the dimensions and that the payload is exactly as long as the header
//! says (short is `Truncated`, long is `TrailingBytes`). Gzip is detected by its magic bytes, not by
//! the file name, so `train-images-idx3-ubyte` may hold either form. Writers go through a temporary
//! file in the target directory and a rename, so a failed write never leaves a partial file.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::atomic::write_atomically;
use crate::error::DataError;

/// Magic number of an IDX file of u8 images with three dimensions (count, rows, cols).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels with one dimension (count).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Fashion-MNIST images are 28 x 28.
pub const IMAGE_SIDE: u32 = 28;
/// Largest decompressed size accepted (the full training images are 47 MB): guards against gzip bombs.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 31;

const IMAGES_HEADER_BYTES: usize = 16;
const LABELS_HEADER_BYTES: usize = 8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A set of u8 images, row-major, one image after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count * rows * cols` pixels.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels of one image.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.pixels[index * size..(index + 1) * size]
    }
}

/// Whether `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// The decompressed bytes if `bytes` are gzip (by magic, all members of a multi-member stream),
/// otherwise a copy of `bytes`. Fails on a corrupt stream or one that inflates past
/// [`MAX_DECOMPRESSED_BYTES`]. Used for checksumming the decompressed IDX bytes (SPEC section 7).
pub fn decompress_if_gzip(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    if !is_gzip(bytes) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decompresses past the {MAX_DECOMPRESSED_BYTES}-byte limit"),
        ));
    }
    Ok(out)
}

fn read_decompressed(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if is_gzip(&bytes) {
        decompress_if_gzip(&bytes).map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })
    } else {
        Ok(bytes)
    }
}

/// Reads an IDX image file, raw or gzipped.
pub fn read_idx_images(path: &Path) -> Result<IdxImages, DataError> {
    parse_idx_images(&read_decompressed(path)?, path)
}

/// Reads an IDX label file, raw or gzipped.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    parse_idx_labels(&read_decompressed(path)?, path)
}

fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// Checks the header length and the magic; returns nothing but errors naming `path`.
fn check_header(
    bytes: &[u8],
    path: &Path,
    header_bytes: usize,
    expected_magic: u32,
    what: &'static str,
) -> Result<(), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "the magic number",
            needed: 4,
            len: bytes.len() as u64,
        });
    }
    let magic = be_u32(bytes, 0);
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
            what,
        });
    }
    if bytes.len() < header_bytes {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "the header",
            needed: header_bytes as u64,
            len: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Checks that the payload after `header_bytes` is exactly `payload_len` bytes.
fn check_payload(
    bytes: &[u8],
    path: &Path,
    header_bytes: usize,
    payload_len: u64,
) -> Result<(), DataError> {
    let payload_end = header_bytes as u64 + payload_len;
    let len = bytes.len() as u64;
    if len < payload_end {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "the payload the header announces",
            needed: payload_end,
            len,
        });
    }
    if len > payload_end {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            payload_end,
            extra: len - payload_end,
        });
    }
    Ok(())
}

/// Parses decompressed IDX image bytes; `name_for_errors` is only used in error messages.
pub fn parse_idx_images(bytes: &[u8], name_for_errors: &Path) -> Result<IdxImages, DataError> {
    let path = name_for_errors;
    check_header(
        bytes,
        path,
        IMAGES_HEADER_BYTES,
        IMAGES_MAGIC,
        "IDX images: u8, 3 dimensions",
    )?;
    let count = be_u32(bytes, 4);
    let rows = be_u32(bytes, 8);
    let cols = be_u32(bytes, 12);
    if rows != IMAGE_SIDE || cols != IMAGE_SIDE {
        return Err(DataError::BadDimensions {
            path: path.to_path_buf(),
            what: format!(
                "images are {rows} x {cols}, expected {IMAGE_SIDE} x {IMAGE_SIDE} (Fashion-MNIST)"
            ),
        });
    }
    // u32 * 28 * 28 fits in u64 without overflow.
    let payload_len = u64::from(count) * u64::from(rows) * u64::from(cols);
    check_payload(bytes, path, IMAGES_HEADER_BYTES, payload_len)?;
    Ok(IdxImages {
        count: count as usize,
        rows: rows as usize,
        cols: cols as usize,
        pixels: bytes[IMAGES_HEADER_BYTES..].to_vec(),
    })
}

/// Parses decompressed IDX label bytes; `name_for_errors` is only used in error messages.
pub fn parse_idx_labels(bytes: &[u8], name_for_errors: &Path) -> Result<Vec<u8>, DataError> {
    let path = name_for_errors;
    check_header(
        bytes,
        path,
        LABELS_HEADER_BYTES,
        LABELS_MAGIC,
        "IDX labels: u8, 1 dimension",
    )?;
    let count = be_u32(bytes, 4);
    check_payload(bytes, path, LABELS_HEADER_BYTES, u64::from(count))?;
    Ok(bytes[LABELS_HEADER_BYTES..].to_vec())
}

/// The raw (uncompressed) IDX bytes of `images`, checking that the pixel count matches.
pub fn encode_idx_images(images: &IdxImages, name_for_errors: &Path) -> Result<Vec<u8>, DataError> {
    let size = images
        .count
        .checked_mul(images.rows)
        .and_then(|n| n.checked_mul(images.cols));
    let dims_fit = [images.count, images.rows, images.cols]
        .iter()
        .all(|&d| u32::try_from(d).is_ok());
    if size != Some(images.pixels.len()) || !dims_fit {
        return Err(DataError::BadDimensions {
            path: name_for_errors.to_path_buf(),
            what: format!(
                "{} pixels for {} images of {} x {}",
                images.pixels.len(),
                images.count,
                images.rows,
                images.cols
            ),
        });
    }
    let mut out = Vec::with_capacity(IMAGES_HEADER_BYTES + images.pixels.len());
    for word in [
        IMAGES_MAGIC,
        images.count as u32,
        images.rows as u32,
        images.cols as u32,
    ] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    Ok(out)
}

/// The raw (uncompressed) IDX bytes of `labels`.
pub fn encode_idx_labels(labels: &[u8], name_for_errors: &Path) -> Result<Vec<u8>, DataError> {
    let count = u32::try_from(labels.len()).map_err(|_| DataError::BadDimensions {
        path: name_for_errors.to_path_buf(),
        what: format!("{} labels do not fit an IDX header", labels.len()),
    })?;
    let mut out = Vec::with_capacity(LABELS_HEADER_BYTES + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(labels);
    Ok(out)
}

/// Gzip of `raw`. The header carries no file name and mtime 0, so equal input gives equal bytes.
fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(raw)?;
    encoder.finish()
}

fn write_gz(path: &Path, raw: &[u8]) -> Result<(), DataError> {
    let compressed = gzip(raw).map_err(|e| DataError::io(path, e))?;
    write_atomically(path, |file| file.write_all(&compressed))
}

/// Writes `images` as a gzipped IDX file (temporary file + rename: all or nothing).
pub fn write_idx_images_gz(path: &Path, images: &IdxImages) -> Result<(), DataError> {
    write_gz(path, &encode_idx_images(images, path)?)
}

/// Writes `labels` as a gzipped IDX file (temporary file + rename: all or nothing).
pub fn write_idx_labels_gz(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    write_gz(path, &encode_idx_labels(labels, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> &'static Path {
        Path::new("test.idx")
    }

    #[test]
    fn images_round_trip_through_bytes() {
        let images = IdxImages {
            count: 2,
            rows: 28,
            cols: 28,
            pixels: (0..2 * 784).map(|i| (i % 256) as u8).collect(),
        };
        let raw = encode_idx_images(&images, name()).unwrap();
        assert_eq!(parse_idx_images(&raw, name()).unwrap(), images);
        let gz = gzip(&raw).unwrap();
        assert!(is_gzip(&gz));
        assert_eq!(decompress_if_gzip(&gz).unwrap(), raw);
        assert_eq!(decompress_if_gzip(&raw).unwrap(), raw);
    }

    #[test]
    fn header_errors_are_typed() {
        let labels = encode_idx_labels(&[1, 2, 3], name()).unwrap();
        assert!(matches!(
            parse_idx_labels(&labels[..3], name()),
            Err(DataError::Truncated { needed: 4, .. })
        ));
        assert!(matches!(
            parse_idx_labels(&labels[..6], name()),
            Err(DataError::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            parse_idx_images(&labels, name()),
            Err(DataError::BadMagic {
                found: LABELS_MAGIC,
                expected: IMAGES_MAGIC,
                ..
            })
        ));
        let mut long = labels.clone();
        long.push(0);
        assert!(matches!(
            parse_idx_labels(&long, name()),
            Err(DataError::TrailingBytes {
                payload_end: 11,
                extra: 1,
                ..
            })
        ));
    }

    #[test]
    fn encoder_rejects_inconsistent_images() {
        let images = IdxImages {
            count: 2,
            rows: 28,
            cols: 28,
            pixels: vec![0; 784],
        };
        assert!(matches!(
            encode_idx_images(&images, name()),
            Err(DataError::BadDimensions { .. })
        ));
    }
}
