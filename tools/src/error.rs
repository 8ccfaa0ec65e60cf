//! The tools' error type: the library's errors, and what only the tools meet (golden files,
//! data files).

use thiserror::Error;

/// Everything that can go wrong in the tools, as a typed value.
#[derive(Debug, Error)]
pub enum Error {
    /// An error of the library.
    #[error(transparent)]
    Optim(#[from] fused_optim::Error),
    /// Two sequences that must have the same length do not.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A data file (e.g. MNIST idx) that cannot be read.
    #[error("data file {file}: {reason}")]
    Data {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A golden file that does not follow its schema or asks for an unsupported option.
    #[error("golden file {file}: {reason}")]
    Golden {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
