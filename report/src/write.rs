//! Atomic replacement of the report files: each file is written to a temp file in the same
//! directory and fsync'd; `commit` renames them in order and fsyncs the directory. Dropping an
//! uncommitted `Staged` removes the temp files.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Temp files waiting to replace their targets.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Write every `(name, bytes)` to `dir/.name.tmp-<pid>` and fsync it.
    pub fn new(dir: &Path, files: &[(&str, &[u8])]) -> std::io::Result<Staged> {
        let mut staged = Staged {
            dir: dir.to_owned(),
            files: Vec::new(),
        };
        for (name, bytes) in files {
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let target = dir.join(name);
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| with_path(e, &tmp))?;
            staged.files.push((tmp.clone(), target));
            f.write_all(bytes).map_err(|e| with_path(e, &tmp))?;
            f.sync_all().map_err(|e| with_path(e, &tmp))?;
        }
        Ok(staged)
    }

    /// Rename the temp files over their targets, in the order given, then fsync the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        let files = std::mem::take(&mut self.files);
        for (i, (tmp, target)) in files.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, target) {
                for (t, _) in &files[i..] {
                    let _ = std::fs::remove_file(t);
                }
                return Err(with_path(e, target));
            }
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, &self.dir))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn with_path(e: std::io::Error, p: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_replace_targets_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "old").unwrap();
        let s = Staged::new(dir.path(), &[("a", b"new"), ("b", b"B")]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "old");
        drop(s);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp files removed"
        );
        let s = Staged::new(dir.path(), &[("a", b"new"), ("b", b"B")]).unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dir.path().join("b")).unwrap(), "B");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
