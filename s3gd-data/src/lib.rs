//! Dataset readers and spike encodings for s3gd: Fashion-MNIST, N-MNIST and SHD. Parsing only; no network.
//!
//! - [`idx`]: IDX files (raw or gzip), reader and all-or-nothing gzip writer.
//! - [`encode`]: time-to-first-spike (Fashion-MNIST) and time binning (N-MNIST, SHD) exactly as SPEC
//!   section 2, with the rounding rules and float details documented there.
//! - [`nmnist`]: events straight from Train.zip / Test.zip, conversion to the reference's HDF5 layout,
//!   and reading it back. [`shd`]: shd_train.h5 / shd_test.h5.
//! - [`dataset`]: [`SpikeDataset`], one compact split with batches of [`s3gd_core::SpikeEvents`],
//!   deterministic epoch shuffles from (seed, epoch), evaluation batches and class-balanced limits.
//! - [`load()`](load::load): finds a dataset under a data directory (see [`default_data_dir`]) with
//!   fallbacks, and says in [`DataSource`] which data it used.
//!
//! Invariants: no function here panics on any file content; every failure is a [`DataError`] naming
//! the file and what is wrong; every output file is written to a temporary file and renamed, so a
//! failure never leaves a partial file.
//!
//! # HDF5 without a system library: `rust-hdf5`
//! SHD ships as HDF5 with vlen float16 times, and the N-MNIST conversion must write vlen int32/float32.
//! Measured on this project's 2-core machine (release build of the crate alone, cold, idle machine):
//! - `rust-hdf5` 0.7.9, default features off: **27 s**, no dependencies at all (88 s inside a cold
//!   workspace build on a loaded machine; the `deflate` feature we enable adds zlib-rs, 10 s).
//!   Reads h5py files with vlen float16 / uint16 and writes vlen int32 / float32 / float16 that
//!   h5py 3.16 (HDF5 2.0) reads back with the right dtypes. Returned errors, never panicked, on 3,000
//!   corrupted SHD-shaped files; fuzzing found one abort (an infallible allocation sized by a corrupt
//!   chunk shape), which `h5.rs` now prevents by bounding chunk sizes before any read. Chosen.
//! - `hdf5-pure` 0.47: 35 s, reads and writes, but its vlen-sequence read and write are crate-private
//!   (only vlen strings are public), so it cannot read SHD's times without patching it.
//! - `hdf5-reader` 0.12: read-only; we would still need a writer for N-MNIST.
//! - `hdf5-metno` (bindings) with a bundled build compiles the HDF5 C library with cmake and a C
//!   compiler: a system toolchain dependency and minutes of CI on 2 cores; not needed.
//!
//! The `deflate` feature is on: we cannot check here whether every published SHD / N-MNIST file keeps
//! its arrays unfiltered, and h5py-written gzip-chunked fixtures read with it. See `docs/data.md`.

pub mod dataset;
pub mod encode;
pub mod error;
pub mod idx;
pub mod load;
pub mod nmnist;
pub mod shd;

mod atomic;
mod h5;

pub use dataset::{DataSource, EventDatasetBuilder, SpikeDataset, SpikeStats, Splits};
pub use error::DataError;
pub use idx::{
    decompress_if_gzip, parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels,
    write_idx_images_gz, write_idx_labels_gz, IdxImages,
};
pub use load::{default_data_dir, load, DATA_DIR_ENV};
pub use nmnist::{convert_zip_to_h5, read_nmnist_h5, read_nmnist_zip};
pub use shd::read_shd_h5;
