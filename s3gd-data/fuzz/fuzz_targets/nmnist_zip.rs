//! Fuzzes reading N-MNIST samples out of a zip (entry names, folders, event bytes): no panic.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use s3gd_data::nmnist::visit_nmnist_zip;

fuzz_target!(|data: &[u8]| {
    let _ = visit_nmnist_zip(
        Cursor::new(data),
        Path::new("fuzz.zip"),
        |label, _, events| {
            assert!(label < 10);
            assert!(events.iter().all(|e| e.x < 34 && e.y < 34));
            Ok(())
        },
    );
});
