//! The error that keeps a version of a credential file from being used (the
//! last good version stays). A leaf under the loaders of each kind of
//! credential (`credentials.rs`, `crl.rs`, `identity.rs`), which all report
//! through it, so that none of them imports another to say a file is bad.

use std::path::{Path, PathBuf};

/// A credential file that could not be used; the previous version stays.
/// Raised as `Event::TrustError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileError {
    /// The file (empty when no single file is to blame).
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

impl From<FileError> for crate::config::BuildError {
    fn from(e: FileError) -> crate::config::BuildError {
        crate::config::BuildError::Trust {
            path: e.path,
            reason: e.reason,
        }
    }
}

/// A [`FileError`] for `path`.
pub(crate) fn bad(path: &Path, reason: impl std::fmt::Display) -> FileError {
    FileError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}
