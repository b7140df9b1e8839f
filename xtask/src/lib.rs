//! Project tasks behind `cargo xtask` (matklad's cargo-xtask pattern): `fetch-data`, `sample`,
//! `plots` and `kernel-ptx`.
//!
//! This crate is the only one in the workspace that touches the network. It is a library as well
//! as a binary so that its tests can drive the commands against a server they start on 127.0.0.1.

pub mod catalog;
pub mod fetch;
pub mod http;
pub mod plots;
pub mod ptx;
pub mod sample;
pub mod verify;

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level Cargo.toml), found at compile time so
/// the default paths do not depend on where `cargo xtask` is run from.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
