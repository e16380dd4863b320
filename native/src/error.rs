//! The one error type of the core. Each kind is one a caller branches on; the Python binding maps
//! each kind to one exception class (see API.md), the NBD loop will map each to one errno.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error)]
pub enum Error {
    /// A range outside a VM, a bad argument: refused, nothing changed.
    #[error("{0}")]
    OutOfRange(String),
    /// No VM registered under that name: refused, nothing changed.
    #[error("no VM named '{0}'")]
    UnknownVm(String),
    /// The slot files could not grow: refused at reservation, nothing changed.
    #[error("out of disk space in {0}")]
    NoSpace(String),
    /// A block's bytes no longer hash to its stored fingerprint: never served as data.
    #[error("corrupt block at byte {offset} of VM '{vm}' (slot {slot}): its bytes no longer match its fingerprint")]
    Corrupt { vm: String, offset: u64, slot: u64 },
    /// A change to a core opened read-only: refused, nothing changed.
    #[error("{0}")]
    ReadOnly(String),
    /// A slot file that is not what a pool keeps: names the file.
    #[error("{0}")]
    Format(String),
    /// The caller asked for something its state does not allow (e.g. rebuild with dirty pages).
    #[error("{0}")]
    State(String),
    /// Long work stopped because the caller asked.
    #[error("{0} cancelled")]
    Cancelled(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Raised by a block layer written in Python (a cluster's): handed back to Python as is.
    #[cfg(feature = "python")]
    #[error("{0}")]
    Python(pyo3::PyErr),
}
