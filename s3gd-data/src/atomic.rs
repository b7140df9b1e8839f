//! All-or-nothing file output: write to a temporary file beside the target, then rename over it.
//!
//! Invariant: the target path either keeps its old content or gets the complete new content; a failed
//! or interrupted write leaves no partial file (the temporary file is removed when it is dropped).
//! The temporary file sits in the target's own directory so the final rename never crosses file systems.

use std::fs::File;
use std::path::Path;

use crate::error::DataError;

fn temp_file_beside(path: &Path) -> Result<tempfile::NamedTempFile, DataError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let prefix = format!(".{stem}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // Temporary files are owner-only by default; the finished file should get the usual 0666 & !umask,
    // as any file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).map_err(|e| DataError::io(dir, e))
}

/// Writes `path` through `write` on a temporary file, synced to disk before the rename.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), DataError> {
    let mut temp = temp_file_beside(path)?;
    write(temp.as_file_mut()).map_err(|e| DataError::io(path, e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| DataError::io(path, e))?;
    temp.persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

/// Writes `path` through `write`, which gets the path of a temporary file to create (for libraries
/// such as the HDF5 writer that open files by name). The temporary file is removed on any error.
pub(crate) fn write_atomically_by_path(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let temp_path = temp_file_beside(path)?.into_temp_path();
    write(&temp_path)?;
    File::open(&temp_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| DataError::io(path, e))?;
    temp_path
        .persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let result = write_atomically(&target, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(matches!(result, Err(DataError::Io { .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let result = write_atomically_by_path(&target, |p| {
            std::fs::write(p, b"half").unwrap();
            Err(DataError::hdf5(p, "writer failed"))
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        write_atomically(&target, |f| f.write_all(b"whole")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
            let plain = dir.path().join("plain.bin");
            std::fs::write(&plain, b"plain").unwrap();
            assert_eq!(
                mode(&target),
                mode(&plain),
                "same permissions as any written file"
            );
        }
    }
}
