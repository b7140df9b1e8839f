//! The real table of dataset files: names, download URLs and checksums (SPEC section 7).
//!
//! Fashion-MNIST is checked by the sha256 of its decompressed IDX bytes, so Debian's re-gzipped
//! copy passes; N-MNIST and SHD by the md5s their publishers give.

use std::path::PathBuf;

use crate::fetch::{Conversion, DatasetSpec, FileSpec, PackedName, PackedUrl, Packing};
use crate::verify::Check;

/// Where Debian's `dataset-fashion-mnist` package installs the four files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const FASHION_MNIST_BASES: [&str; 3] = [
    // The official mirror (plain HTTP only).
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    // The copy Keras downloads.
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    // The repository itself (redirects to raw.githubusercontent.com).
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
];

/// (file name, sha256 of the decompressed IDX bytes, their length).
const FASHION_MNIST_FILES: [(&str, &str, u64); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47_040_016,
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60_008,
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7_840_016,
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10_008,
    ),
];

/// Mendeley Data, dataset 468j46mzdv: the file URLs carry no file name and redirect to storage.
const NMNIST_MENDELEY_FILES: &str =
    "https://data.mendeley.com/public-files/datasets/468j46mzdv/files/";

/// (archive name as published, Mendeley file id, md5 of the archive, HDF5 file written).
const NMNIST_FILES: [(&str, &str, &str, &str); 2] = [
    (
        "Train.zip",
        "39c25547-014b-4137-a934-9d29fa53c7a0",
        "20959b8e626244a1b502305a9e6e2031",
        "train_nmnist.h5",
    ),
    (
        "Test.zip",
        "05a4d654-7e03-4c15-bdfa-9bb2bcbea494",
        "69ca8762b2fe404d9b9bad1103e97832",
        "test_nmnist.h5",
    ),
];

const SHD_BASES: [&str; 2] = [
    "https://zenkelab.org/datasets/",
    "https://compneuro.net/datasets/",
];

/// (published stem, md5 of the .h5.gz, md5 of the .h5, file written).
const SHD_FILES: [(&str, &str, &str, &str); 2] = [
    (
        "shd_train.h5",
        "d47c9825dee33347913e8ce0f2be08b0",
        "8e9877c85f29a28dd353ea6a54402667",
        "train_shd.h5",
    ),
    (
        "shd_test.h5",
        "3062a80ec0c5719404d5b02e166543b1",
        "207ad1295a0ab611e22d1734989c254e",
        "test_shd.h5",
    ),
];

/// The `--dataset` values, in the order `all` fetches them.
pub const DATASET_KEYS: [&str; 3] = ["fmnist", "nmnist", "shd"];

/// The real specification of the dataset named `key` (one of [`DATASET_KEYS`]).
pub fn dataset(key: &str) -> Option<DatasetSpec> {
    match key {
        "fmnist" => Some(fashion_mnist()),
        "nmnist" => Some(nmnist()),
        "shd" => Some(shd()),
        _ => None,
    }
}

pub fn fashion_mnist() -> DatasetSpec {
    let files = FASHION_MNIST_FILES
        .iter()
        .map(|&(name, sha256, len)| FileSpec {
            name: name.to_owned(),
            check: Check::GunzippedSha256 {
                sha256: sha256.to_owned(),
                len,
            },
            usual_names: vec![PackedName {
                name: name.to_owned(),
                packing: Packing::AsStored,
            }],
            urls: FASHION_MNIST_BASES
                .iter()
                .map(|base| PackedUrl {
                    url: format!("{base}{name}"),
                    packing: Packing::AsStored,
                })
                .collect(),
            convert: None,
        })
        .collect();
    DatasetSpec {
        key: "fmnist".to_owned(),
        title: "Fashion-MNIST".to_owned(),
        subdir: "fashion-mnist".to_owned(),
        system_dir: Some(PathBuf::from(DEBIAN_FASHION_MNIST_DIR)),
        files,
        manual_hint: Some(
            "Offline: `apt-get install dataset-fashion-mnist` (picked up automatically), or \
             download the four .gz files by hand and run \
             `cargo xtask fetch-data --dataset fmnist --from FOLDER`."
                .to_owned(),
        ),
    }
}

pub fn nmnist() -> DatasetSpec {
    let files = NMNIST_FILES
        .iter()
        .map(|&(name, file_id, md5, h5)| FileSpec {
            name: name.to_owned(),
            check: Check::Md5(md5.to_owned()),
            // Mendeley's own download names the files Train.zip/Test.zip; some tools save them
            // lowercase.
            usual_names: [name.to_owned(), name.to_lowercase()]
                .into_iter()
                .map(|name| PackedName {
                    name,
                    packing: Packing::AsStored,
                })
                .collect(),
            urls: vec![PackedUrl {
                url: format!("{NMNIST_MENDELEY_FILES}{file_id}/file_downloaded"),
                packing: Packing::AsStored,
            }],
            convert: Some(Conversion::NmnistZipToH5 {
                output: h5.to_owned(),
            }),
        })
        .collect();
    DatasetSpec {
        key: "nmnist".to_owned(),
        title: "N-MNIST".to_owned(),
        subdir: "nmnist".to_owned(),
        system_dir: None,
        files,
        manual_hint: Some(
            "By hand: open https://data.mendeley.com/datasets/468j46mzdv/1 in a browser, download \
             Train.zip and Test.zip into a folder, then run \
             `cargo xtask fetch-data --dataset nmnist --from FOLDER`."
                .to_owned(),
        ),
    }
}

pub fn shd() -> DatasetSpec {
    let files = SHD_FILES
        .iter()
        .map(|&(stem, gz_md5, h5_md5, output)| {
            let gz = Packing::Gzip {
                archive_md5: Some(gz_md5.to_owned()),
            };
            // No md5 is published for the .zip archives: the .h5 inside is checked instead.
            let zip = Packing::Zip {
                member: stem.to_owned(),
            };
            let mut urls = Vec::new();
            for (suffix, packing) in [(".gz", &gz), (".zip", &zip)] {
                for base in SHD_BASES {
                    urls.push(PackedUrl {
                        url: format!("{base}{stem}{suffix}"),
                        packing: packing.clone(),
                    });
                }
            }
            FileSpec {
                name: output.to_owned(),
                check: Check::Md5(h5_md5.to_owned()),
                usual_names: vec![
                    PackedName {
                        name: stem.to_owned(),
                        packing: Packing::AsStored,
                    },
                    PackedName {
                        name: format!("{stem}.gz"),
                        packing: gz,
                    },
                    PackedName {
                        name: format!("{stem}.zip"),
                        packing: zip,
                    },
                ],
                urls,
                convert: None,
            }
        })
        .collect();
    DatasetSpec {
        key: "shd".to_owned(),
        title: "SHD (Spiking Heidelberg Digits)".to_owned(),
        subdir: "shd".to_owned(),
        system_dir: None,
        files,
        manual_hint: Some(
            "By hand: download shd_train.h5.gz and shd_test.h5.gz (or the .zip or unpacked .h5) \
             from https://zenkelab.org/datasets/ into a folder, then run \
             `cargo xtask fetch-data --dataset shd --from FOLDER`."
                .to_owned(),
        ),
    }
}

/// The Fashion-MNIST file names and checks, for commands that read the full set.
pub fn fashion_mnist_checks() -> Vec<(String, Check)> {
    fashion_mnist()
        .files
        .into_iter()
        .map(|file| (file.name, file.check))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_resolves_and_lands_where_s3gd_data_looks() {
        let outputs = |key: &str| -> Vec<String> {
            let spec = dataset(key).expect("known key");
            spec.files
                .iter()
                .map(|f| match &f.convert {
                    Some(Conversion::NmnistZipToH5 { output }) => {
                        format!("{}/{output}", spec.subdir)
                    }
                    None => format!("{}/{}", spec.subdir, f.name),
                })
                .collect()
        };
        assert_eq!(
            outputs("fmnist"),
            [
                "fashion-mnist/train-images-idx3-ubyte.gz",
                "fashion-mnist/train-labels-idx1-ubyte.gz",
                "fashion-mnist/t10k-images-idx3-ubyte.gz",
                "fashion-mnist/t10k-labels-idx1-ubyte.gz",
            ]
        );
        assert_eq!(
            outputs("nmnist"),
            ["nmnist/train_nmnist.h5", "nmnist/test_nmnist.h5"]
        );
        assert_eq!(outputs("shd"), ["shd/train_shd.h5", "shd/test_shd.h5"]);
        assert!(dataset("mnist").is_none());
    }

    #[test]
    fn every_file_has_urls_and_a_well_formed_checksum() {
        for key in DATASET_KEYS {
            let spec = dataset(key).expect("known key");
            for file in &spec.files {
                assert!(!file.urls.is_empty(), "{}: no URL", file.name);
                assert!(!file.usual_names.is_empty(), "{}: no usual name", file.name);
                let hex_len = match &file.check {
                    Check::Md5(md5) => (md5.len() == 32).then_some(md5),
                    Check::GunzippedSha256 { sha256, .. } => (sha256.len() == 64).then_some(sha256),
                };
                let hex = hex_len.unwrap_or_else(|| panic!("{}: checksum length", file.name));
                assert!(hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }

    #[test]
    fn shd_prefers_the_gz_archives_whose_md5_is_published() {
        let spec = shd();
        let first = &spec.files[0].urls[0];
        assert_eq!(first.url, "https://zenkelab.org/datasets/shd_train.h5.gz");
        assert_eq!(
            first.packing,
            Packing::Gzip {
                archive_md5: Some("d47c9825dee33347913e8ce0f2be08b0".to_owned())
            }
        );
    }
}
