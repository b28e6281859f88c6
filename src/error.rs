//! The library's error type: every failure names the file, key or value it is about.

use std::path::PathBuf;

/// Every error the library can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {file}: {msg}")]
    ConfigParse { file: PathBuf, msg: String },
    #[error("config key `{key}`: {msg}")]
    Config { key: String, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("data set `{name}`: {msg}")]
    Data { name: String, msg: String },
    #[error("fetching `{name}`: {msg}")]
    Fetch { name: String, msg: String },
    #[error("checksum mismatch for {path}: expected {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "run folder {0} already exists; pass --force to overwrite it or --out to choose another"
    )]
    RunExists(PathBuf),
    #[error(
        "output folder {0} already exists; pass --force to replace it or --out to choose another"
    )]
    OutputExists(PathBuf),
    /// The run's meta data cannot give a trust model (says why).
    #[error("no trust model: {0}")]
    NoTrustModel(String),
    #[error("model: {0}")]
    Model(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn cfg(key: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        msg: msg.into(),
    }
}
