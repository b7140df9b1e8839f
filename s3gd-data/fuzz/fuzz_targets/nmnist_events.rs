//! Fuzzes the N-MNIST 5-byte event parser and the binning: no panic, events on the sensor, 23-bit times.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use s3gd_data::dataset::EventDatasetBuilder;
use s3gd_data::encode::{nmnist_bin, nmnist_unit};
use s3gd_data::nmnist::parse_nmnist_events;

fuzz_target!(|data: &[u8]| {
    let Ok(events) = parse_nmnist_events(data, Path::new("fuzz.zip"), "Train/0/fuzz.bin") else {
        return;
    };
    assert_eq!(events.len() * 5, data.len());
    let mut binned = Vec::with_capacity(events.len());
    for e in &events {
        assert!(e.x < 34 && e.y < 34 && e.polarity < 2 && e.t_us < 1 << 23);
        binned.push((nmnist_bin(u64::from(e.t_us)), nmnist_unit(e.x, e.y)));
    }
    let mut builder = EventDatasetBuilder::new(300, 1156, 10).unwrap();
    builder.push_sample(0, &binned).unwrap();
    let dataset = builder.finish();
    let (batch, _) = dataset.batch(&[0]);
    let kept = binned.iter().filter(|&&(bin, _)| bin < 300).count();
    assert_eq!(batch.total_events(), kept);
});
