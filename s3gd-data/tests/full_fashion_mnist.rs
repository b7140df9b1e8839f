//! The full Fashion-MNIST from Debian's `dataset-fashion-mnist` package, when installed (CI installs
//! it): counts, class balance, the sha256 of the decompressed IDX bytes (SPEC section 7), and the
//! spike statistics of the time-to-first-spike encoding. Without the package it prints a notice.

use std::path::Path;

use s3gd_data::dataset::DataSource;
use s3gd_data::load::{find_fashion_mnist_files, load_fashion_mnist_dir, DEBIAN_FASHION_MNIST_DIR};
use s3gd_data::{decompress_if_gzip, parse_idx_images, parse_idx_labels};
use sha2::{Digest, Sha256};

/// SPEC section 7: (sha256 of the decompressed bytes, their length), in FASHION_MNIST_FILES order.
const EXPECTED: [(&str, usize); 4] = [
    (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47_040_016,
    ),
    (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60_008,
    ),
    (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7_840_016,
    ),
    (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10_008,
    ),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn full_fashion_mnist_from_the_debian_package() {
    let dir = Path::new(DEBIAN_FASHION_MNIST_DIR);
    let Some(files) = find_fashion_mnist_files(dir) else {
        println!(
            "NOTICE: {} not found (apt-get install dataset-fashion-mnist); full-set test skipped",
            dir.display()
        );
        return;
    };

    for (path, (sha, len)) in files.iter().zip(EXPECTED) {
        let raw = decompress_if_gzip(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(raw.len(), len, "{}", path.display());
        assert_eq!(hex(&Sha256::digest(&raw)), sha, "{}", path.display());
    }
    let labels_of = |path: &Path| {
        parse_idx_labels(
            &decompress_if_gzip(&std::fs::read(path).unwrap()).unwrap(),
            path,
        )
        .unwrap()
    };
    let first_test_image = {
        let raw = decompress_if_gzip(&std::fs::read(&files[2]).unwrap()).unwrap();
        parse_idx_images(&raw, &files[2]).unwrap().image(0).to_vec()
    };

    let splits = load_fashion_mnist_dir(
        dir,
        DataSource::FullSet {
            location: dir.to_path_buf(),
        },
    )
    .unwrap();
    let (train, test) = (&splits.train, &splits.test);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.class_counts(), vec![6_000; 10]);
    assert_eq!(test.class_counts(), vec![1_000; 10]);
    assert_eq!(train.labels(), labels_of(&files[1]).as_slice());

    // The first test image, encoded: one spike per pixel >= 52, at its TTFS step; none below.
    let (events, _) = test.batch(&[0]);
    for (unit, &p) in first_test_image.iter().enumerate() {
        let spikes = (0..100)
            .filter(|&t| events.events(0, t).contains(&(unit as u32)))
            .count();
        assert_eq!(spikes, usize::from(p >= 52), "pixel {unit} = {p}");
    }

    for (name, split) in [("train", train), ("test", test)] {
        let stats = split.spike_stats();
        println!("Fashion-MNIST {name}: {stats}");
        // About 0.4% of the 784 x 100 input cells hold a spike (SPEC: at most one spike per pixel).
        assert!(
            (0.002..0.006).contains(&stats.density),
            "{name}: density {}",
            stats.density
        );
        assert!(stats.max <= 784);
    }
    let start = std::time::Instant::now();
    for batch in train.train_batches(256, 1, 0).iter().take(50) {
        let (events, labels) = train.batch(batch);
        assert_eq!((events.batch(), labels.len()), (256, 256));
    }
    println!("50 training batches of 256 built in {:?}", start.elapsed());
}
