//! `fetch-data`: getting every file of a dataset into `<dir>/<dataset>/`, verified, from the first
//! source that works.
//!
//! Sources are tried in this order: `--from DIR` (files downloaded by hand), a system copy (Debian's
//! `dataset-fashion-mnist`), `--mirror URL`, then the built-in URLs. Whatever a source yields goes to
//! a temporary file inside the target directory, is unpacked (gzip or zip) to a second temporary file
//! when needed, and is renamed to its final name only once its checksum holds. A temporary file is
//! deleted when it is dropped, so a failed or corrupt attempt leaves nothing behind. A file already
//! present and verified is not fetched again.
//!
//! The table of files ([`DatasetSpec`]) is a parameter: `catalog` holds the real one, tests give
//! small ones pointing at a server of their own.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;

use crate::http::Downloader;
use crate::verify::{md5_hex, Check};

/// One dataset: where its files go and how each is obtained.
#[derive(Clone, Debug)]
pub struct DatasetSpec {
    /// The `--dataset` value: `fmnist`, `nmnist`, `shd`.
    pub key: String,
    /// Human name for messages.
    pub title: String,
    /// Folder under `--dir` that receives the files.
    pub subdir: String,
    /// A folder where a system package installs the same files, used before any download.
    pub system_dir: Option<PathBuf>,
    pub files: Vec<FileSpec>,
    /// Printed when every source of a file failed: how to get the files by hand.
    pub manual_hint: Option<String>,
}

/// One file of a dataset.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Name of the verified file in the dataset folder.
    pub name: String,
    /// What the verified file must satisfy.
    pub check: Check,
    /// Names under which a mirror or a local folder holds this file, most direct first.
    pub usual_names: Vec<PackedName>,
    /// Built-in download locations, tried in order after the local sources and `--mirror`.
    pub urls: Vec<PackedUrl>,
    /// A conversion run once the file is verified; when its output exists the file counts as done.
    pub convert: Option<Conversion>,
}

/// How a source holds the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Exactly the bytes to be stored.
    AsStored,
    /// Gzip-compressed; when the publisher gives an md5 of the archive itself it is checked too.
    Gzip { archive_md5: Option<String> },
    /// Inside a zip archive, as the entry whose last path component is `member`.
    Zip { member: String },
}

/// A file name (relative to a mirror URL or a local folder) and how that file holds our file.
#[derive(Clone, Debug)]
pub struct PackedName {
    pub name: String,
    pub packing: Packing,
}

/// A full URL and how the file it serves holds our file.
#[derive(Clone, Debug)]
pub struct PackedUrl {
    pub url: String,
    pub packing: Packing,
}

/// A step that turns a verified download into the form the loader reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// N-MNIST `Train.zip`/`Test.zip` to the HDF5 layout of s3gd-data (`output` in the same folder).
    NmnistZipToH5 { output: String },
}

impl Conversion {
    fn output(&self) -> &str {
        match self {
            Conversion::NmnistZipToH5 { output } => output,
        }
    }
}

/// Where to put files and which extra sources to use.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The datasets folder; each dataset gets its `subdir` inside it.
    pub dir: PathBuf,
    /// A folder of hand-downloaded files, tried first.
    pub from: Option<PathBuf>,
    /// A base URL serving the files under their usual names, tried before the built-in URLs.
    pub mirror: Option<String>,
    /// Draw progress bars on stderr.
    pub show_progress: bool,
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Present and verified already: nothing fetched.
    AlreadyVerified,
    /// The conversion output is present already: nothing fetched or converted.
    AlreadyConverted,
    /// Fetched from `source` (a path or URL) and verified.
    Fetched { source: String },
}

/// The result for one file, with the sources that failed before one worked.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub outcome: Outcome,
    pub failed_sources: Vec<SourceFailure>,
    /// Set when a conversion ran: its output file and the number of samples it holds.
    pub converted: Option<(PathBuf, usize)>,
}

/// One source that did not yield a verified file, and why.
#[derive(Clone, Debug)]
pub struct SourceFailure {
    pub source: String,
    pub reason: String,
}

/// The error when no source of a file worked; lists every source and its failure.
#[derive(Debug)]
pub struct AllSourcesFailed {
    pub file: PathBuf,
    pub failures: Vec<SourceFailure>,
    pub hint: Option<String>,
}

impl fmt::Display for AllSourcesFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            write!(f, "no source is known for {}", self.file.display())?;
        } else {
            write!(
                f,
                "could not get {}; every source failed:",
                self.file.display()
            )?;
            for failure in &self.failures {
                write!(f, "\n  - {}: {}", failure.source, failure.reason)?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n{hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AllSourcesFailed {}

/// Where one attempt gets its bytes from.
enum Origin {
    Local(PathBuf),
    Remote(String),
}

struct Source {
    origin: Origin,
    packing: Packing,
}

impl Source {
    fn describe(&self) -> String {
        match &self.origin {
            Origin::Local(path) => path.display().to_string(),
            Origin::Remote(url) => url.clone(),
        }
    }
}

/// Fetches every file of `spec` into `opts.dir/spec.subdir`. Stops at the first file that no
/// source could provide (the dataset is unusable without it); files done before stay.
pub fn fetch_dataset(spec: &DatasetSpec, opts: &FetchOptions) -> Result<Vec<FileReport>> {
    let target_dir = opts.dir.join(&spec.subdir);
    fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating the folder {}", target_dir.display()))?;
    let downloader = Downloader::new(opts.show_progress);
    let mut reports = Vec::with_capacity(spec.files.len());
    for file in &spec.files {
        let report = fetch_file(spec, file, &target_dir, opts, &downloader)?;
        reports.push(report);
    }
    Ok(reports)
}

fn fetch_file(
    spec: &DatasetSpec,
    file: &FileSpec,
    target_dir: &Path,
    opts: &FetchOptions,
    downloader: &Downloader,
) -> Result<FileReport> {
    let final_path = target_dir.join(&file.name);
    if let Some(conversion) = &file.convert {
        let output = target_dir.join(conversion.output());
        if output.is_file() {
            return Ok(FileReport {
                path: output,
                outcome: Outcome::AlreadyConverted,
                failed_sources: Vec::new(),
                converted: None,
            });
        }
    }

    let mut failed_sources = Vec::new();
    let outcome = if final_path.is_file() && file.check.verify(&final_path).is_ok() {
        Outcome::AlreadyVerified
    } else {
        // A present but failing file is replaced below only by a verified one (rename over it).
        let mut fetched = None;
        for source in sources_for(spec, file, opts, &mut failed_sources) {
            match try_source(&source, file, target_dir, &final_path, downloader) {
                Ok(()) => {
                    fetched = Some(source.describe());
                    break;
                }
                Err(error) => failed_sources.push(SourceFailure {
                    source: source.describe(),
                    reason: format!("{error:#}"),
                }),
            }
        }
        match fetched {
            Some(source) => Outcome::Fetched { source },
            None => {
                return Err(AllSourcesFailed {
                    file: final_path,
                    failures: failed_sources,
                    hint: spec.manual_hint.clone(),
                }
                .into())
            }
        }
    };

    let converted = match &file.convert {
        Some(conversion) => Some(run_conversion(conversion, &final_path, target_dir)?),
        None => None,
    };
    Ok(FileReport {
        path: final_path,
        outcome,
        failed_sources,
        converted,
    })
}

/// Every source to try for `file`, in order. A `--from` folder that holds none of the usual
/// names is recorded as a failure so the final error mentions it; a missing system copy is not.
fn sources_for(
    spec: &DatasetSpec,
    file: &FileSpec,
    opts: &FetchOptions,
    failures: &mut Vec<SourceFailure>,
) -> Vec<Source> {
    let mut sources = Vec::new();
    if let Some(from) = &opts.from {
        let found = local_sources(from, file);
        if found.is_empty() {
            let names: Vec<&str> = file.usual_names.iter().map(|n| n.name.as_str()).collect();
            failures.push(SourceFailure {
                source: from.display().to_string(),
                reason: format!("none of {} is there", names.join(", ")),
            });
        }
        sources.extend(found);
    }
    if let Some(system_dir) = &spec.system_dir {
        sources.extend(local_sources(system_dir, file));
    }
    if let Some(mirror) = &opts.mirror {
        for usual in &file.usual_names {
            sources.push(Source {
                origin: Origin::Remote(join_url(mirror, &usual.name)),
                packing: usual.packing.clone(),
            });
        }
    }
    for url in &file.urls {
        sources.push(Source {
            origin: Origin::Remote(url.url.clone()),
            packing: url.packing.clone(),
        });
    }
    sources
}

fn local_sources(dir: &Path, file: &FileSpec) -> Vec<Source> {
    file.usual_names
        .iter()
        .map(|usual| (dir.join(&usual.name), usual))
        .filter(|(path, _)| path.is_file())
        .map(|(path, usual)| Source {
            origin: Origin::Local(path),
            packing: usual.packing.clone(),
        })
        .collect()
}

/// `base` joined with a file name, whether or not `base` ends in a slash.
fn join_url(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// One attempt: bytes into a temporary file, unpacked, verified, renamed to `final_path`.
fn try_source(
    source: &Source,
    file: &FileSpec,
    target_dir: &Path,
    final_path: &Path,
    downloader: &Downloader,
) -> Result<()> {
    let mut raw = PartialFile::create_in(target_dir, &file.name, "part")?;
    match &source.origin {
        Origin::Local(path) => {
            let mut input =
                File::open(path).with_context(|| format!("opening {}", path.display()))?;
            io::copy(&mut input, raw.file_mut())
                .with_context(|| format!("copying {}", path.display()))?;
        }
        Origin::Remote(url) => {
            downloader.download(url, raw.file_mut(), &file.name)?;
        }
    }
    let mut stored = unpack(raw, &source.packing, target_dir, &file.name)?;
    stored
        .file_mut()
        .sync_all()
        .context("syncing the temporary file")?;
    file.check.verify(stored.path())?;
    stored.persist(final_path)
}

/// The file to store, taken out of `raw` as `packing` says; a temporary file in `target_dir`.
fn unpack(
    mut raw: PartialFile,
    packing: &Packing,
    target_dir: &Path,
    name: &str,
) -> Result<PartialFile> {
    match packing {
        Packing::AsStored => Ok(raw),
        Packing::Gzip { archive_md5 } => {
            if let Some(expected) = archive_md5 {
                let found = md5_hex(raw.path())?;
                if !found.eq_ignore_ascii_case(expected) {
                    bail!(
                        "md5 of the .gz archive is {found}, expected {expected} \
                         (corrupt, truncated or a different version)"
                    );
                }
            }
            raw.file_mut().seek(SeekFrom::Start(0))?;
            let mut unpacked = PartialFile::create_in(target_dir, name, "unpacked")?;
            let mut decoder = MultiGzDecoder::new(BufReader::new(raw.file_mut()));
            io::copy(&mut decoder, unpacked.file_mut()).context("decompressing the .gz")?;
            Ok(unpacked)
        }
        Packing::Zip { member } => {
            raw.file_mut().seek(SeekFrom::Start(0))?;
            let mut archive = zip::ZipArchive::new(BufReader::new(raw.file_mut()))
                .context("reading the zip archive")?;
            let index = find_zip_member(&mut archive, member)?;
            let mut entry = archive
                .by_index(index)
                .with_context(|| format!("opening {member} in the zip archive"))?;
            let mut unpacked = PartialFile::create_in(target_dir, name, "unpacked")?;
            io::copy(&mut entry, unpacked.file_mut())
                .with_context(|| format!("extracting {member} from the zip archive"))?;
            Ok(unpacked)
        }
    }
}

/// Index of the file entry whose last path component is `member`, skipping folders and the
/// `__MACOSX/` resource forks that macOS zips carry.
fn find_zip_member<R: io::Read + io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    member: &str,
) -> Result<usize> {
    let mut seen = Vec::new();
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .context("reading the zip directory")?;
        let name = entry.name().to_owned();
        let is_match = !entry.is_dir()
            && !name.starts_with("__MACOSX/")
            && name.rsplit('/').next() == Some(member);
        if is_match {
            return Ok(index);
        }
        seen.push(name);
    }
    bail!(
        "the zip archive has no entry {member} (it holds: {})",
        if seen.is_empty() {
            "nothing".to_owned()
        } else {
            seen.join(", ")
        }
    )
}

/// A file being written next to its final place: renamed to its final name by [`persist`], deleted
/// when dropped otherwise, so an attempt that fails at any point leaves nothing behind. (A killed
/// process can still leave one; the `.fetch-` prefix makes such leftovers easy to spot.)
///
/// [`persist`]: PartialFile::persist
struct PartialFile {
    path: PathBuf,
    file: Option<File>,
}

impl PartialFile {
    /// Creates `dir/.fetch-<pid>-<n>-<name>.<suffix>`, a name no other attempt or process uses.
    fn create_in(dir: &Path, name: &str, suffix: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            ".fetch-{}-{serial}-{name}.{suffix}",
            std::process::id()
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating the temporary file {}", path.display()))?;
        Ok(PartialFile {
            path,
            file: Some(file),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn file_mut(&mut self) -> &mut File {
        // Only `persist` and `into_reserved_name` take the file out; neither leaves it in use.
        self.file
            .as_mut()
            .expect("a PartialFile's file stays open until it is persisted")
    }

    /// Closes the file and renames it to `final_path`, replacing what was there.
    fn persist(mut self, final_path: &Path) -> Result<()> {
        drop(self.file.take());
        fs::rename(&self.path, final_path).with_context(|| {
            format!(
                "renaming {} to {}",
                self.path.display(),
                final_path.display()
            )
        })?;
        // Renamed away: nothing left for `drop` to delete.
        self.path = PathBuf::new();
        Ok(())
    }

    /// The path of a file that a converter will create itself: the name is reserved by deleting
    /// the empty file, and still cleaned up on drop.
    fn into_reserved_name(mut self) -> Self {
        drop(self.file.take());
        let _ = fs::remove_file(&self.path);
        self
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            // Best effort: the file may never have been created by a converter that failed early.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Runs `conversion` on the verified `input`; the output appears under its final name only when
/// the conversion succeeded. Returns the output path and the number of samples converted.
fn run_conversion(
    conversion: &Conversion,
    input: &Path,
    target_dir: &Path,
) -> Result<(PathBuf, usize)> {
    let output = target_dir.join(conversion.output());
    // The converter creates the file itself; the temporary name keeps `.h5` last in case the
    // HDF5 writer looks at the extension.
    let temp = PartialFile::create_in(target_dir, conversion.output(), "h5")?.into_reserved_name();
    let samples = match conversion {
        Conversion::NmnistZipToH5 { .. } => {
            s3gd_data::nmnist::convert_zip_to_h5(input, temp.path()).with_context(|| {
                format!("converting {} to {}", input.display(), output.display())
            })?
        }
    };
    temp.persist(&output)?;
    Ok((output, samples))
}
