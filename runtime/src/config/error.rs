//! Why a cluster file was refused: each error names the file, the field and the value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: `{field}` = {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        value: String,
        reason: String,
    },
}
