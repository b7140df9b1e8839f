//! fetch-data against a server these tests start on 127.0.0.1, with small generated files and a
//! file table of their own: downloads, redirects, fallbacks, corrupt and truncated bodies, re-runs,
//! local sources, unpacking and conversion. Nothing here touches the internet.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use support::{dead_url, entries, gzip, idx_labels, md5_hex, sha256_hex, Route, TestServer};
use xtask::fetch::{
    fetch_dataset, AllSourcesFailed, Conversion, DatasetSpec, FetchOptions, FileReport, FileSpec,
    Outcome, PackedName, PackedUrl, Packing,
};
use xtask::verify::Check;

const SUBDIR: &str = "toy";

/// A gzipped IDX label file and the check that Fashion-MNIST would use for it.
struct GzIdx {
    gz: Vec<u8>,
    check: Check,
}

fn gz_idx(labels: &[u8]) -> GzIdx {
    let raw = idx_labels(labels);
    GzIdx {
        gz: gzip(&raw),
        check: Check::GunzippedSha256 {
            sha256: sha256_hex(&raw),
            len: raw.len() as u64,
        },
    }
}

/// A Fashion-MNIST-like file entry: stored as downloaded, checked after gunzip.
fn gz_file(name: &str, check: &Check, urls: &[String]) -> FileSpec {
    FileSpec {
        name: name.to_owned(),
        check: check.clone(),
        usual_names: vec![PackedName {
            name: name.to_owned(),
            packing: Packing::AsStored,
        }],
        urls: urls
            .iter()
            .map(|url| PackedUrl {
                url: url.clone(),
                packing: Packing::AsStored,
            })
            .collect(),
        convert: None,
    }
}

fn dataset(files: Vec<FileSpec>) -> DatasetSpec {
    DatasetSpec {
        key: "toy".to_owned(),
        title: "Toy".to_owned(),
        subdir: SUBDIR.to_owned(),
        system_dir: None,
        files,
        manual_hint: Some("get it by hand".to_owned()),
    }
}

fn options(dir: &Path) -> FetchOptions {
    FetchOptions {
        dir: dir.to_path_buf(),
        from: None,
        mirror: None,
        show_progress: false,
    }
}

fn fetch_one(spec: &DatasetSpec, opts: &FetchOptions) -> FileReport {
    let mut reports = fetch_dataset(spec, opts).expect("fetch should succeed");
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

fn fetch_error(spec: &DatasetSpec, opts: &FetchOptions) -> AllSourcesFailed {
    let error = fetch_dataset(spec, opts).expect_err("fetch should fail");
    match error.downcast::<AllSourcesFailed>() {
        Ok(error) => error,
        Err(other) => panic!("expected AllSourcesFailed, got {other:#}"),
    }
}

fn target(dir: &Path) -> PathBuf {
    dir.join(SUBDIR)
}

#[test]
fn downloads_and_verifies_a_file() {
    let file = gz_idx(&[1, 2, 3]);
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/a.gz");
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        std::slice::from_ref(&url),
    )]);

    let report = fetch_one(&spec, &options(dir.path()));

    assert_eq!(report.outcome, Outcome::Fetched { source: url });
    assert!(report.failed_sources.is_empty());
    assert_eq!(fs::read(target(dir.path()).join("a.gz")).unwrap(), file.gz);
    assert_eq!(entries(&target(dir.path())), ["a.gz"]);
}

#[test]
fn follows_302_redirects_across_hosts() {
    let file = gz_idx(&[4, 5]);
    // Like Mendeley: a relative hop on the first host, then an absolute one to a storage host.
    let storage = TestServer::start([("/bucket/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let front = TestServer::start([
        (
            "/old/a.gz".to_owned(),
            Route::Redirect("/moved/a.gz".to_owned()),
        ),
        (
            "/moved/a.gz".to_owned(),
            Route::Redirect(storage.url("/bucket/a.gz")),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let url = front.url("/old/a.gz");
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        std::slice::from_ref(&url),
    )]);

    let report = fetch_one(&spec, &options(dir.path()));

    assert_eq!(report.outcome, Outcome::Fetched { source: url });
    assert_eq!(front.hits(), ["/old/a.gz", "/moved/a.gz"]);
    assert_eq!(storage.hits(), ["/bucket/a.gz"]);
    assert_eq!(fs::read(target(dir.path()).join("a.gz")).unwrap(), file.gz);
}

#[test]
fn falls_back_from_a_dead_mirror_to_a_good_one() {
    let file = gz_idx(&[7]);
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_url("/a.gz");
    let good = server.url("/a.gz");
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        &[dead.clone(), good.clone()],
    )]);

    let report = fetch_one(&spec, &options(dir.path()));

    assert_eq!(report.outcome, Outcome::Fetched { source: good });
    assert_eq!(report.failed_sources.len(), 1);
    assert_eq!(report.failed_sources[0].source, dead);
    assert_eq!(entries(&target(dir.path())), ["a.gz"]);
}

#[test]
fn corrupt_body_fails_names_the_mirror_and_leaves_nothing() {
    let file = gz_idx(&[1, 2, 3]);
    let other = gz_idx(&[1, 2, 4]);
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(other.gz))]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/a.gz");
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        std::slice::from_ref(&url),
    )]);

    let error = fetch_error(&spec, &options(dir.path()));

    assert_eq!(error.failures.len(), 1);
    assert_eq!(error.failures[0].source, url);
    assert!(
        error.failures[0].reason.contains("sha256"),
        "{}",
        error.failures[0].reason
    );
    let message = error.to_string();
    assert!(
        message.contains(&url) && message.contains("a.gz"),
        "{message}"
    );
    assert!(message.contains("get it by hand"), "{message}");
    assert!(entries(&target(dir.path())).is_empty());
}

#[test]
fn body_that_is_not_gzip_fails() {
    let file = gz_idx(&[1, 2, 3]);
    let server = TestServer::start([(
        "/a.gz".to_owned(),
        Route::Body(b"<html>not found</html>".to_vec()),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[server.url("/a.gz")])]);

    let error = fetch_error(&spec, &options(dir.path()));

    assert!(
        error.failures[0].reason.contains("gzip"),
        "{}",
        error.failures[0].reason
    );
    assert!(entries(&target(dir.path())).is_empty());
}

#[test]
fn truncated_body_fails_and_leaves_nothing() {
    let file = gz_idx(&(0..200).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let half = file.gz[..file.gz.len() / 2].to_vec();
    let server = TestServer::start([(
        "/a.gz".to_owned(),
        Route::Truncated {
            body: half,
            claimed_len: file.gz.len() as u64,
        },
    )]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/a.gz");
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        std::slice::from_ref(&url),
    )]);

    let error = fetch_error(&spec, &options(dir.path()));

    assert_eq!(error.failures[0].source, url);
    let reason = &error.failures[0].reason;
    assert!(
        reason.contains(&format!("of {} bytes", file.gz.len())),
        "{reason}"
    );
    assert!(entries(&target(dir.path())).is_empty());
}

#[test]
fn every_failure_is_listed_when_all_sources_fail() {
    let file = gz_idx(&[1]);
    let server = TestServer::start([("/bad.gz".to_owned(), Route::Body(gzip(b"other")))]);
    let dir = tempfile::tempdir().unwrap();
    let urls = [
        dead_url("/a.gz"),
        server.url("/missing.gz"),
        server.url("/bad.gz"),
    ];
    let spec = dataset(vec![gz_file("a.gz", &file.check, &urls)]);

    let error = fetch_error(&spec, &options(dir.path()));

    let sources: Vec<&str> = error.failures.iter().map(|f| f.source.as_str()).collect();
    assert_eq!(sources, urls.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        error.failures[1].reason.contains("HTTP 404"),
        "{}",
        error.failures[1].reason
    );
    let message = error.to_string();
    for url in &urls {
        assert!(message.contains(url.as_str()), "{message}");
    }
    assert!(entries(&target(dir.path())).is_empty());
}

#[test]
fn rerun_skips_a_verified_file() {
    let file = gz_idx(&[3, 1]);
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[server.url("/a.gz")])]);
    fetch_one(&spec, &options(dir.path()));
    assert_eq!(server.hits().len(), 1);

    let report = fetch_one(&spec, &options(dir.path()));

    assert_eq!(report.outcome, Outcome::AlreadyVerified);
    assert_eq!(server.hits().len(), 1, "the second run must not download");
}

#[test]
fn rerun_replaces_a_file_that_does_not_verify() {
    let file = gz_idx(&[3, 1]);
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(target(dir.path())).unwrap();
    fs::write(target(dir.path()).join("a.gz"), b"half a download").unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[server.url("/a.gz")])]);

    let report = fetch_one(&spec, &options(dir.path()));

    assert!(matches!(report.outcome, Outcome::Fetched { .. }));
    assert_eq!(fs::read(target(dir.path()).join("a.gz")).unwrap(), file.gz);
}

#[test]
fn mirror_is_tried_before_the_built_in_urls() {
    let file = gz_idx(&[2, 2]);
    let server = TestServer::start([
        ("/mirror/a.gz".to_owned(), Route::Body(file.gz.clone())),
        ("/official/a.gz".to_owned(), Route::Body(file.gz.clone())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file(
        "a.gz",
        &file.check,
        &[server.url("/official/a.gz")],
    )]);
    let opts = FetchOptions {
        // No trailing slash: the file name is joined either way.
        mirror: Some(server.url("/mirror")),
        ..options(dir.path())
    };

    let report = fetch_one(&spec, &opts);

    assert_eq!(
        report.outcome,
        Outcome::Fetched {
            source: server.url("/mirror/a.gz")
        }
    );
    assert_eq!(server.hits(), ["/mirror/a.gz"]);
}

#[test]
fn from_dir_is_verified_and_copied_without_network() {
    let file = gz_idx(&[9, 8, 7]);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("a.gz"), &file.gz).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The only URL is dead: success proves the local copy was used.
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[dead_url("/a.gz")])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    let report = fetch_one(&spec, &opts);

    let source = from.path().join("a.gz").display().to_string();
    assert_eq!(report.outcome, Outcome::Fetched { source });
    assert_eq!(fs::read(target(dir.path()).join("a.gz")).unwrap(), file.gz);
    assert_eq!(
        entries(from.path()),
        ["a.gz"],
        "the source folder is left as it was"
    );
}

#[test]
fn from_dir_accepts_a_recompressed_copy() {
    // Debian re-gzips Fashion-MNIST: different .gz bytes, same contents, so it must pass.
    let file = gz_idx(&[0, 1, 2, 3]);
    let raw = idx_labels(&[0, 1, 2, 3]);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&raw).unwrap();
    let recompressed = encoder.finish().unwrap();
    assert_ne!(recompressed, file.gz);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("a.gz"), &recompressed).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    fetch_one(&spec, &opts);

    assert_eq!(
        fs::read(target(dir.path()).join("a.gz")).unwrap(),
        recompressed
    );
}

#[test]
fn from_dir_with_a_wrong_file_falls_back_and_reports_it() {
    let file = gz_idx(&[1, 1]);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("a.gz"), gzip(b"something else")).unwrap();
    let server = TestServer::start([("/a.gz".to_owned(), Route::Body(file.gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[server.url("/a.gz")])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    let report = fetch_one(&spec, &opts);

    assert_eq!(
        report.failed_sources[0].source,
        from.path().join("a.gz").display().to_string()
    );
    assert_eq!(
        report.outcome,
        Outcome::Fetched {
            source: server.url("/a.gz")
        }
    );
}

#[test]
fn from_dir_without_the_file_is_named_in_the_error() {
    let file = gz_idx(&[1]);
    let from = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![gz_file("a.gz", &file.check, &[])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    let error = fetch_error(&spec, &opts);

    assert_eq!(error.failures[0].source, from.path().display().to_string());
    assert!(
        error.failures[0].reason.contains("a.gz"),
        "{}",
        error.failures[0].reason
    );
}

#[test]
fn system_copy_is_picked_up_before_downloading() {
    let file = gz_idx(&[5, 5, 5]);
    let system = tempfile::tempdir().unwrap();
    fs::write(system.path().join("a.gz"), &file.gz).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = dataset(vec![gz_file("a.gz", &file.check, &[dead_url("/a.gz")])]);
    spec.system_dir = Some(system.path().to_path_buf());

    let report = fetch_one(&spec, &options(dir.path()));

    let source = system.path().join("a.gz").display().to_string();
    assert_eq!(report.outcome, Outcome::Fetched { source });
}

/// An SHD-like entry: `out.h5` checked by md5, published as `.h5.gz` (with an archive md5)
/// or as `.h5.zip`.
fn shd_like(contents: &[u8], gz_md5: &str, urls: Vec<PackedUrl>) -> FileSpec {
    FileSpec {
        name: "out.h5".to_owned(),
        check: Check::Md5(md5_hex(contents)),
        usual_names: vec![
            PackedName {
                name: "pub.h5.gz".to_owned(),
                packing: Packing::Gzip {
                    archive_md5: Some(gz_md5.to_owned()),
                },
            },
            PackedName {
                name: "pub.h5.zip".to_owned(),
                packing: Packing::Zip {
                    member: "pub.h5".to_owned(),
                },
            },
        ],
        urls,
        convert: None,
    }
}

fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        if name.ends_with('/') {
            writer.add_directory(*name, options).unwrap();
        } else {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
    }
    writer.finish().unwrap().into_inner()
}

#[test]
fn gz_archive_is_checked_then_unpacked() {
    let contents: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let gz = gzip(&contents);
    let server = TestServer::start([("/pub.h5.gz".to_owned(), Route::Body(gz.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let gz_packing = Packing::Gzip {
        archive_md5: Some(md5_hex(&gz)),
    };
    let urls = vec![PackedUrl {
        url: server.url("/pub.h5.gz"),
        packing: gz_packing,
    }];
    let spec = dataset(vec![shd_like(&contents, &md5_hex(&gz), urls)]);

    fetch_one(&spec, &options(dir.path()));

    assert_eq!(
        fs::read(target(dir.path()).join("out.h5")).unwrap(),
        contents
    );
    assert_eq!(
        entries(&target(dir.path())),
        ["out.h5"],
        "the archive is not kept"
    );
}

#[test]
fn gz_archive_with_a_wrong_md5_is_rejected() {
    let contents = b"shd-like contents".to_vec();
    let gz = gzip(&contents);
    let server = TestServer::start([("/mirror/pub.h5.gz".to_owned(), Route::Body(gz))]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![shd_like(
        &contents,
        "00000000000000000000000000000000",
        vec![],
    )]);
    let opts = FetchOptions {
        mirror: Some(server.url("/mirror/")),
        ..options(dir.path())
    };

    let error = fetch_error(&spec, &opts);

    // The mirror is asked for every usual name: the .gz (wrong md5), then the .zip (404).
    assert_eq!(error.failures[0].source, server.url("/mirror/pub.h5.gz"));
    assert!(
        error.failures[0].reason.contains(".gz archive"),
        "{}",
        error.failures[0].reason
    );
    assert_eq!(error.failures[1].source, server.url("/mirror/pub.h5.zip"));
    assert!(entries(&target(dir.path())).is_empty());
}

#[test]
fn zip_archive_member_is_found_in_a_folder_and_unpacked() {
    let contents: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    let archive = zip_with(&[
        ("data/", b""),
        ("__MACOSX/data/._pub.h5", b"resource fork"),
        ("data/pub.h5", &contents),
    ]);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("pub.h5.zip"), archive).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![shd_like(&contents, "unused", vec![])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    fetch_one(&spec, &opts);

    assert_eq!(
        fs::read(target(dir.path()).join("out.h5")).unwrap(),
        contents
    );
    assert_eq!(entries(&target(dir.path())), ["out.h5"]);
}

#[test]
fn zip_archive_without_the_member_lists_what_it_holds() {
    let archive = zip_with(&[("other.h5", b"x")]);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("pub.h5.zip"), archive).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![shd_like(b"contents", "unused", vec![])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    let error = fetch_error(&spec, &opts);

    let reason = &error.failures[0].reason;
    assert!(
        reason.contains("pub.h5") && reason.contains("other.h5"),
        "{reason}"
    );
    assert!(entries(&target(dir.path())).is_empty());
}

/// A 5-byte N-MNIST event (SPEC section 7).
fn nmnist_event(x: u8, y: u8, polarity: u8, t_us: u32) -> [u8; 5] {
    [
        x,
        y,
        (polarity << 7) | ((t_us >> 16) & 0x7f) as u8,
        (t_us >> 8) as u8,
        t_us as u8,
    ]
}

/// A tiny N-MNIST-style Train.zip: ten samples, one per digit, in `Train/<digit>/<n>.bin`.
fn nmnist_zip() -> Vec<u8> {
    let samples: Vec<(String, Vec<u8>)> = (0..10u8)
        .map(|digit| {
            let events: Vec<u8> = (0..4u32)
                .flat_map(|k| nmnist_event(digit + k as u8, 33 - digit, (k % 2) as u8, 1000 * k))
                .collect();
            (format!("Train/{digit}/{:05}.bin", digit + 1), events)
        })
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("Train/", b"")];
    for (name, bytes) in &samples {
        entries.push((name.as_str(), bytes.as_slice()));
    }
    zip_with(&entries)
}

fn nmnist_like(zip_bytes: &[u8], urls: &[String]) -> FileSpec {
    FileSpec {
        name: "Train.zip".to_owned(),
        check: Check::Md5(md5_hex(zip_bytes)),
        usual_names: vec![PackedName {
            name: "Train.zip".to_owned(),
            packing: Packing::AsStored,
        }],
        urls: urls
            .iter()
            .map(|url| PackedUrl {
                url: url.clone(),
                packing: Packing::AsStored,
            })
            .collect(),
        convert: Some(Conversion::NmnistZipToH5 {
            output: "train_nmnist.h5".to_owned(),
        }),
    }
}

#[test]
fn nmnist_zip_is_downloaded_then_converted_once() {
    let zip_bytes = nmnist_zip();
    // Mendeley's URLs carry no file name and redirect to storage.
    let server = TestServer::start([
        (
            "/public-files/123/file_downloaded".to_owned(),
            Route::Redirect("/storage/abc".to_owned()),
        ),
        ("/storage/abc".to_owned(), Route::Body(zip_bytes.clone())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![nmnist_like(
        &zip_bytes,
        &[server.url("/public-files/123/file_downloaded")],
    )]);

    let report = fetch_one(&spec, &options(dir.path()));

    let h5 = target(dir.path()).join("train_nmnist.h5");
    assert_eq!(report.converted, Some((h5.clone(), 10)));
    assert_eq!(
        entries(&target(dir.path())),
        ["Train.zip", "train_nmnist.h5"]
    );

    // Once converted, nothing is fetched or converted again, even without the zip.
    fs::remove_file(target(dir.path()).join("Train.zip")).unwrap();
    let hits_before = server.hits().len();
    let again = fetch_one(&spec, &options(dir.path()));
    assert_eq!(again.outcome, Outcome::AlreadyConverted);
    assert_eq!(server.hits().len(), hits_before);
}

#[test]
fn failed_conversion_leaves_no_output() {
    // A verified zip without any sample: the converter must refuse it.
    let zip_bytes = zip_with(&[("Train/", b""), ("Train/readme.txt", b"no samples")]);
    let from = tempfile::tempdir().unwrap();
    fs::write(from.path().join("Train.zip"), &zip_bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(vec![nmnist_like(&zip_bytes, &[])]);
    let opts = FetchOptions {
        from: Some(from.path().to_path_buf()),
        ..options(dir.path())
    };

    let error = fetch_dataset(&spec, &opts).expect_err("conversion should fail");

    let message = format!("{error:#}");
    assert!(message.contains("train_nmnist.h5"), "{message}");
    assert_eq!(
        entries(&target(dir.path())),
        ["Train.zip"],
        "the verified zip stays, no partial .h5"
    );
}
