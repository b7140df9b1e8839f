//! Fuzzes the IDX parsers on raw and gzipped bytes: no panic, and what parses re-encodes to the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use s3gd_data::idx::{encode_idx_images, encode_idx_labels};
use s3gd_data::{decompress_if_gzip, parse_idx_images, parse_idx_labels};

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.idx");
    // Gzip input is inflated first, as the file readers do.
    let Ok(bytes) = decompress_if_gzip(data) else {
        return;
    };
    if let Ok(images) = parse_idx_images(&bytes, name) {
        assert_eq!(
            images.pixels.len(),
            images.count * images.rows * images.cols
        );
        assert_eq!(encode_idx_images(&images, name).unwrap(), bytes);
    }
    if let Ok(labels) = parse_idx_labels(&bytes, name) {
        assert_eq!(encode_idx_labels(&labels, name).unwrap(), bytes);
    }
});
