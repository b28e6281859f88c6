//! The run folder: its layout, atomic writes (temp file + rename), refusing to overwrite without
//! `--force`, the run log, and reading a finished run back.

use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Writes bytes to `path` through a temp file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// A run folder being written.
#[derive(Debug, Clone)]
pub struct RunFolder {
    pub path: PathBuf,
}

/// Marker file that says a folder was made by metaclf (so `--force` never clears anything else).
const MARKER: &str = "run.json";

impl RunFolder {
    /// Creates `dir`; an existing non-empty folder is refused unless `force`, and even with
    /// `force` only a folder that holds a metaclf run (its `run.json` or `config.toml`) is reused.
    pub fn create(dir: &Path, force: bool) -> Result<RunFolder> {
        if dir.exists() {
            let empty = std::fs::read_dir(dir).at(dir)?.next().is_none();
            if !empty {
                if !force {
                    return Err(Error::RunExists(dir.to_path_buf()));
                }
                if !dir.join(MARKER).exists() && !dir.join("config.toml").exists() {
                    return Err(Error::Other(format!(
                        "{} is not a metaclf run folder (no run.json); refusing to write into it even with --force",
                        dir.display()
                    )));
                }
            }
        }
        std::fs::create_dir_all(dir).at(dir)?;
        Ok(RunFolder {
            path: dir.to_path_buf(),
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        write_atomic(&self.file(name), bytes.as_ref())
    }
}

static LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends log lines (see [`LogWriter`]) to `path` from now on.
pub fn attach_log(path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).at(path)?;
    *LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    Ok(())
}

/// Stops writing the run log.
pub fn detach_log() {
    *LOG.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// A `tracing_subscriber` writer that appends to the attached run log (or drops the line).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_without_force_and_foreign_with_force() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        RunFolder::create(&run, false).unwrap();
        std::fs::write(run.join("mine.txt"), "keep").unwrap();
        assert!(matches!(
            RunFolder::create(&run, false),
            Err(Error::RunExists(_))
        ));
        // not a metaclf run: even --force leaves it alone
        assert!(RunFolder::create(&run, true).is_err());
        std::fs::write(run.join("run.json"), "{}").unwrap();
        RunFolder::create(&run, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.join("mine.txt")).unwrap(),
            "keep"
        );
    }
}
