//! The run folder: its layout, atomic writes (temp file + rename), refusing to overwrite without
//! `--force`, the run log, and reading a finished run back.

use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `create_dir_all`, with an error that names the regular file in the way when there is one.
pub fn create_dirs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match dir.ancestors().find(|a| a.is_file()) {
        Some(f) => Error::Other(format!(
            "{} is a file, so the folder {} cannot be made",
            f.display(),
            dir.display()
        )),
        None => Error::Io {
            path: dir.to_path_buf(),
            source: e,
        },
    })
}

/// The temporary file `path` is written through (`<name>.tmp<pid>` beside it).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes bytes to `path` through a temp file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dirs(dir)?;
    }
    let tmp = tmp_sibling(path);
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Writes a CSV file of a header and rows straight to disk (through a temporary sibling,
/// renamed in at the end): for files too large to build in memory first (meta_scores.csv).
pub fn write_csv_atomic<H, R, F>(path: &Path, header: &[H], rows: R) -> Result<()>
where
    H: AsRef<[u8]>,
    R: IntoIterator<Item = Vec<F>>,
    F: AsRef<[u8]>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dirs(dir)?;
    }
    let tmp = tmp_sibling(path);
    let f = std::fs::File::create(&tmp).at(&tmp)?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 20, f));
    let io = |e: csv::Error| Error::Other(format!("writing {}: {e}", tmp.display()));
    w.write_record(header).map_err(io)?;
    for r in rows {
        w.write_record(&r).map_err(io)?;
    }
    w.flush().at(&tmp)?;
    drop(w);
    std::fs::rename(&tmp, path).at(path)
}

/// CSV text of a header and rows, written with the csv crate (fields that hold a comma, quote
/// or line break are quoted; everything else is written as it is).
pub fn csv_text<H, R, F>(header: &[H], rows: R) -> String
where
    H: AsRef<[u8]>,
    R: IntoIterator<Item = Vec<F>>,
    F: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    // writing into memory cannot fail
    let _ = w.write_record(header);
    for r in rows {
        let _ = w.write_record(&r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// A run folder being written.
#[derive(Debug, Clone)]
pub struct RunFolder {
    pub path: PathBuf,
}

/// Marker file that says a folder was made by metaclf (so `--force` never clears anything else).
const MARKER: &str = "run.json";

impl RunFolder {
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        write_atomic(&self.file(name), bytes.as_ref())
    }
}

/// Refuses an existing non-empty `dir` without `force`, and even with it any non-empty folder
/// that holds none of `markers` (`what` names such a folder).
fn check_replaceable(dir: &Path, force: bool, markers: &[&str], what: &str) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(Error::Other(format!(
                "{} exists and is not a folder; refusing to replace it",
                dir.display()
            )));
        }
        let empty = std::fs::read_dir(dir).at(dir)?.next().is_none();
        if !empty {
            if !force {
                return Err(if markers.contains(&MARKER) {
                    Error::RunExists(dir.to_path_buf())
                } else {
                    Error::OutputExists(dir.to_path_buf())
                });
            }
            if !markers.iter().any(|m| dir.join(m).exists()) {
                return Err(Error::Other(format!(
                    "{} is not {what} (no {}); refusing to replace it even with --force",
                    dir.display(),
                    markers[0]
                )));
            }
        }
    }
    Ok(())
}

/// A run being written into a temporary sibling folder (`.<name>.metaclf-tmp-<pid>` beside the
/// run folder), swapped in by [`Staged::commit`] only when the run has finished. Until then the
/// old run folder, if any, is untouched; [`Staged::abort`] (also on drop) removes the temporary
/// folder, so a failed run leaves nothing behind and costs the user nothing.
#[derive(Debug)]
pub struct Staged {
    /// Where the files are written while the run goes on.
    pub folder: RunFolder,
    target: PathBuf,
    force: bool,
    markers: &'static [&'static str],
    what: &'static str,
    done: bool,
    /// Folders above the run folder that this run created (removed again on failure).
    made_parents: Vec<PathBuf>,
}

fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    dir.with_file_name(format!(".{name}.metaclf-{what}-{}", std::process::id()))
}

impl Staged {
    /// Checks that `dir` may be written (an existing non-empty folder only with `force`, and
    /// then only one that holds a metaclf run: its `run.json` or `config.toml`) and creates the
    /// temporary sibling folder.
    pub fn new(dir: &Path, force: bool) -> Result<Staged> {
        Self::for_folder(dir, force, &[MARKER, "config.toml"], "a metaclf run folder")
    }

    /// [`Staged::new`] for another kind of output folder, recognised by one of `markers`.
    pub fn for_folder(
        dir: &Path,
        force: bool,
        markers: &'static [&'static str],
        what: &'static str,
    ) -> Result<Staged> {
        if dir.file_name().is_none() {
            return Err(Error::Other(format!(
                "{} cannot be a run folder (it has no name)",
                dir.display()
            )));
        }
        check_replaceable(dir, force, markers, what)?;
        let mut made_parents = Vec::new();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            made_parents = parent
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .map(Path::to_path_buf)
                .collect();
            create_dirs(parent)?;
        }
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        std::fs::create_dir(&tmp).at(&tmp)?;
        Ok(Staged {
            folder: RunFolder { path: tmp },
            target: dir.to_path_buf(),
            force,
            markers,
            what,
            done: false,
            made_parents,
        })
    }

    /// The run folder the files will end up in.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the finished run into place: an old run folder is renamed aside, the new one
    /// renamed in, and the old one removed; if the second rename fails the old one is put back.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.done = true;
        let tmp = self.folder.path.clone();
        let fail = |e: Error| {
            let _ = std::fs::remove_dir_all(&tmp);
            e
        };
        // the folder may have appeared while the run went on
        check_replaceable(&self.target, self.force, self.markers, self.what).map_err(fail)?;
        let old = sibling(&self.target, "old");
        let had_old = self.target.exists();
        if had_old {
            std::fs::rename(&self.target, &old)
                .at(&self.target)
                .map_err(fail)?;
        }
        if let Err(e) = std::fs::rename(&tmp, &self.target) {
            if had_old {
                let _ = std::fs::rename(&old, &self.target);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::Io {
                path: self.target.clone(),
                source: e,
            });
        }
        if had_old {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!("could not remove the replaced run {}: {e}", old.display());
            }
        }
        Ok(self.target.clone())
    }

    /// Runs `body` in the staged folder with `run.log` attached to it, then commits (the value
    /// and the final folder) when it succeeds, or removes what it wrote when it fails.
    pub fn run_logged<T>(self, body: impl FnOnce(&RunFolder) -> Result<T>) -> Result<(T, PathBuf)> {
        attach_log(&self.folder.file("run.log"))?;
        let result = body(&self.folder);
        detach_log();
        match result {
            Ok(v) => Ok((v, self.commit()?)),
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// Removes the temporary folder (what a failed run wrote).
    pub fn abort(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if !self.done {
            self.done = true;
            let _ = std::fs::remove_dir_all(&self.folder.path);
            // innermost first; remove_dir leaves any folder that is not empty
            for p in &self.made_parents {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.cleanup();
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
        // an empty folder may be written
        std::fs::create_dir(&run).unwrap();
        Staged::new(&run, false).unwrap().abort();
        std::fs::write(run.join("mine.txt"), "keep").unwrap();
        assert!(matches!(Staged::new(&run, false), Err(Error::RunExists(_))));
        // not a metaclf run: even --force leaves it alone
        assert!(Staged::new(&run, true).is_err());
        std::fs::write(run.join("run.json"), "{}").unwrap();
        Staged::new(&run, true).unwrap().abort();
        assert_eq!(
            std::fs::read_to_string(run.join("mine.txt")).unwrap(),
            "keep"
        );
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn staged_run_replaces_only_on_commit_and_leaves_nothing_on_abort() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("run.json"), "{\"status\":\"done\"}").unwrap();
        std::fs::write(run.join("config.toml"), "old").unwrap();
        let before = files(&run);
        // without --force: refused before anything is written
        assert!(matches!(Staged::new(&run, false), Err(Error::RunExists(_))));
        // a failed run: the old folder is byte-identical and no temp folder is left
        let s = Staged::new(&run, true).unwrap();
        s.folder.write("config.toml", "new").unwrap();
        s.folder
            .write("run.json", "{\"status\":\"running\"}")
            .unwrap();
        assert_eq!(files(&run), before);
        s.abort();
        assert_eq!(files(&run), before);
        assert_eq!(files(d.path()).len(), 1, "{:?}", files(d.path()));
        // dropped without commit (an early return): the same
        {
            let s = Staged::new(&run, true).unwrap();
            s.folder.write("x", "y").unwrap();
        }
        assert_eq!(files(d.path()).len(), 1);
        // a finished run replaces the old one whole
        let s = Staged::new(&run, true).unwrap();
        s.folder.write("config.toml", "new").unwrap();
        assert_eq!(s.commit().unwrap(), run);
        assert_eq!(files(&run), vec![("config.toml".into(), b"new".to_vec())]);
        assert_eq!(files(d.path()).len(), 1);
        // a failed run removes the parent folders it created, and only those
        let s = Staged::new(&d.path().join("x/y/run"), false).unwrap();
        assert!(d.path().join("x/y").is_dir());
        s.abort();
        assert!(!d.path().join("x").exists());
        // a new folder, parents created
        let deep = d.path().join("a/b/run");
        let s = Staged::new(&deep, false).unwrap();
        s.folder.write("run.json", "{}").unwrap();
        s.commit().unwrap();
        assert!(deep.join("run.json").exists());
        // a regular file in the way is named
        let f = d.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = Staged::new(&f, true).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
        let e = Staged::new(&f.join("run"), false).unwrap_err().to_string();
        assert!(e.contains("is a file, so the folder"), "{e}");
    }
}
