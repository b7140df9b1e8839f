//! Fuzzes the SHD HDF5 reader (and through it rust-hdf5) on arbitrary file bytes: no panic, no abort.
//! The HDF5 crate opens files by path only, so each input goes through a file in a RAM-backed folder.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use s3gd_data::shd::read_shd_h5;

fn scratch_file() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("s3gd-fuzz-shd-{}.h5", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(dataset) = read_shd_h5(&path) {
        let all: Vec<usize> = (0..dataset.len()).collect();
        let (events, labels) = dataset.batch(&all);
        assert_eq!(labels.len(), dataset.len());
        assert!(events.unit_ids().iter().all(|&u| u < 700));
    }
});
