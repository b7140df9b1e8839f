//! The Rust readers on HDF5 files written by h5py (tests/fixtures, made by make_h5py_fixtures.py):
//! SHD-shaped files with vlen float16 times in three storage forms, and the reference's N-MNIST layout.

mod common;

use common::fixture;
use half::f16;
use s3gd_data::nmnist::{read_nmnist_h5, read_nmnist_h5_columns};
use s3gd_data::shd::{read_shd_h5, read_shd_h5_columns};

fn f16_seconds(times: &[f32]) -> Vec<f64> {
    times.iter().map(|&t| f16::from_f32(t).to_f64()).collect()
}

#[test]
fn shd_files_from_h5py_read_exactly() {
    for name in ["shd_h5py.h5", "shd_h5py_deflate.h5", "shd_h5py_latest.h5"] {
        let path = fixture(name);
        let columns = read_shd_h5_columns(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(columns.labels, vec![0, 19, 7, 12], "{name}");
        assert_eq!(
            columns.times[0],
            f16_seconds(&[0.0, 0.001, 0.125, 0.375, 0.998, 0.999, 1.3])
        );
        assert_eq!(columns.units[0], vec![0, 699, 5, 5, 10, 11, 12]);
        assert!(columns.times[1].is_empty() && columns.units[1].is_empty());
        assert_eq!(columns.units[2], vec![3, 3, 4]);
        assert_eq!(columns.times[3], f16_seconds(&[0.3, 0.1, 0.2]));

        let data = read_shd_h5(&path).unwrap();
        assert_eq!(
            (data.len(), data.steps(), data.inputs(), data.classes()),
            (4, 500, 700, 20)
        );
        let (events, labels) = data.batch(&[0, 1, 2, 3]);
        assert_eq!(labels, vec![0, 19, 7, 12]);
        // 0.001 s is stored just above the 0/1 edge; 0.125 and 0.375 are exact ties (to 62 and 188);
        // 0.998 is the last bin; 0.999 and 1.3 fall past T = 500.
        assert_eq!(events.events(0, 0), &[0]);
        assert_eq!(events.events(0, 1), &[699]);
        assert_eq!(events.events(0, 62), &[5]);
        assert_eq!(events.events(0, 188), &[5]);
        assert_eq!(events.events(0, 499), &[10]);
        assert_eq!(events.total_events(), 11, "5 + 0 + 3 + 3 spikes");
        assert_eq!(events.events(2, 250), &[3, 3, 4], "repeats add up");
        assert_eq!(events.events(3, 50), &[2]);
        assert_eq!(events.events(3, 100), &[3]);
        assert_eq!(events.events(3, 150), &[1]);
    }
}

#[test]
fn nmnist_reference_layout_from_h5py_reads_exactly() {
    let path = fixture("nmnist_h5py.h5");
    let columns = read_nmnist_h5_columns(&path).unwrap();
    assert_eq!(columns.labels, vec![3, 9]);
    assert_eq!(columns.units, vec![vec![0, 1156, 1155, 2311], vec![]]);
    let expected: Vec<f32> = [500u32, 500, 1500, 299_500]
        .iter()
        .map(|&us| (f64::from(us) * 1e-6) as f32)
        .collect();
    assert_eq!(columns.times[0], expected);

    let data = read_nmnist_h5(&path).unwrap();
    assert_eq!(
        (data.steps(), data.inputs(), data.classes()),
        (300, 1156, 10)
    );
    let (events, labels) = data.batch(&[0, 1]);
    assert_eq!(labels, vec![3, 9]);
    // 500 us is a tie to bin 0 and both polarities of pixel 0 merge; 299,500 us ties to bin 300: dropped.
    assert_eq!(events.events(0, 0), &[0, 0]);
    assert_eq!(events.events(0, 2), &[1155]);
    assert_eq!(events.total_events(), 3);
}
