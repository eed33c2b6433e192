//! The one error type of model generation: a refused [`ModelSpec`](super::ModelSpec) field, or a
//! file that could not be written. Every variant names the field or the file.

use std::path::PathBuf;

/// Why a model could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenModelError {
    /// A [`ModelSpec`](super::ModelSpec) field holds a value the generator refuses.
    #[error("model spec field `{field}` = {value}: {reason}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// Creating, writing or renaming a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be serialized.
    #[error("cannot serialize {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The `tokenizers` crate refused to build or save the tokenizer.
    #[error("cannot build tokenizer {path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
}

impl GenModelError {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        GenModelError::InvalidSpec {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| GenModelError::Io { path, source }
    }
}
