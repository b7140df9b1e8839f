//! File checks: the checksum that proves a file is the published one, and the hashing behind it.
//!
//! Every check streams the file (1 MiB at a time), so checking a 1 GB archive needs no more memory
//! than checking a 10 kB one.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;
use md5::Md5;
use sha2::{Digest, Sha256};

const READ_CHUNK: usize = 1 << 20;

/// How a finished file is recognised as the right one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// sha256 (lowercase hex) and length of the gunzipped contents of a `.gz` file. Used for
    /// Fashion-MNIST: Debian re-gzips the files, so the compressed bytes differ from the official
    /// ones while the IDX bytes inside are identical.
    GunzippedSha256 { sha256: String, len: u64 },
    /// md5 (lowercase hex) of the file's bytes as stored: the only checksum that the N-MNIST and SHD
    /// publishers give.
    Md5(String),
}

impl Check {
    /// Ok when the file at `path` passes; otherwise an error saying what was found instead.
    pub fn verify(&self, path: &Path) -> Result<()> {
        match self {
            Check::Md5(expected) => {
                let found = md5_hex(path)?;
                if !found.eq_ignore_ascii_case(expected) {
                    bail!("md5 is {found}, expected {expected} (corrupt, truncated or a different version)");
                }
            }
            Check::GunzippedSha256 { sha256, len } => {
                let (found, found_len) = gunzipped_sha256_hex(path)?;
                if found_len != *len {
                    bail!("decompresses to {found_len} bytes, expected {len}");
                }
                if !found.eq_ignore_ascii_case(sha256) {
                    bail!(
                        "sha256 of the decompressed contents is {found}, expected {sha256} \
                         (corrupt or a different version)"
                    );
                }
            }
        }
        Ok(())
    }
}

/// md5 of a file's bytes, lowercase hex.
pub fn md5_hex(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    hash_stream(file, |chunk| hasher.update(chunk))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(to_hex(&hasher.finalize()))
}

/// sha256 of a file's bytes, lowercase hex.
pub fn sha256_hex(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    hash_stream(file, |chunk| hasher.update(chunk))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(to_hex(&hasher.finalize()))
}

/// sha256 (lowercase hex) and length of the gunzipped contents of a `.gz` file. Multi-member gzip
/// files are read to the end, as `gunzip` does.
pub fn gunzipped_sha256_hex(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let len = hash_stream(MultiGzDecoder::new(BufReader::new(file)), |chunk| {
        hasher.update(chunk)
    })
    .with_context(|| format!("decompressing {} as gzip", path.display()))?;
    Ok((to_hex(&hasher.finalize()), len))
}

/// Feeds everything `reader` yields to `consume`; returns the number of bytes read.
fn hash_stream(mut reader: impl Read, mut consume: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        consume(&buffer[..n]);
        total += n as u64;
    }
}

/// Lowercase hex of a digest.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
