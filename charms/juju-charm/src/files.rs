//! Machine files the charm writes (workload config, unit files): written whole and renamed
//! into place, and only when the content changes, so a hook can tell whether to restart.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `contents` to `path` (creating its directory) unless it already holds exactly
/// that; `true` when the file changed. A reader never sees a half-written file.
pub fn write_if_changed(path: &Path, contents: &[u8]) -> Result<bool> {
    match fs::read(path) {
        Ok(old) if old == contents => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no directory", path.display())))?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    Ok(true)
}

/// Removes a file; `true` when there was one.
pub fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/llmd/a.yaml");
        assert!(write_if_changed(&p, b"a: 1\n").unwrap());
        assert!(!write_if_changed(&p, b"a: 1\n").unwrap());
        assert!(write_if_changed(&p, b"a: 2\n").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a: 2\n");
        assert_eq!(
            fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(remove_if_present(&p).unwrap());
        assert!(!remove_if_present(&p).unwrap());
    }
}
