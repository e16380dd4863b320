//! The block layer seam: what the core's data path asks of whatever keeps the blocks.
//!
//! The core (pages, the graph mirror, partial blocks, zero handling, atomicity per request, the
//! commit protocol) is written once, over a `Backend`. Two implement it:
//!   Blocks     a local pool's slots, index, refcounts and free space (blocks.rs), native
//!   PyBackend  a block layer written in Python (a cluster's ClusterBlocks, which keeps each block
//!              on R nodes), called with the GIL taken (pybackend.rs)
//! The Python Protocol with the same steps is engine/blocklayer.py.
//!
//! Every method but `syncer` is called with the core's lock held: shared for `read`, alone for
//! the rest. A backend never calls back into the core.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fingerprint::Digest;

/// Makes every block stored so far durable; called without the core's lock, so that data ops
/// go on while a commit syncs.
pub type Syncer = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// Why a read gave no data.
pub enum ReadFault {
    /// The block of piece `i` does not match its fingerprint (remembered as corrupt).
    Rotten(usize),
    /// Anything else (an I/O error, a cluster with no reachable copy).
    Failed(Error),
}

impl From<Error> for ReadFault {
    fn from(e: Error) -> Self {
        ReadFault::Failed(e)
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Stores or shares each block (none all zeros) with its fingerprint; returns their
    /// addresses (never 0 nor u64::MAX), each referenced once more. A block is shared only if
    /// its bytes compare equal. All or nothing: an error leaves no reference taken.
    fn store(&mut self, blocks: &[&[u8]], digests: &[Digest]) -> Result<Vec<u64>>;

    /// One reference less for each address (repeats count); a block left with none waits for
    /// the commit that makes its last reference's removal durable.
    fn decref(&mut self, addrs: &[u64]) -> Result<()>;

    /// Copies each piece's block (`pieces[i].1` is one block long), checked against its
    /// fingerprint: a rotten block is never returned as data.
    fn read(&self, pieces: &mut [(u64, &mut [u8])]) -> std::result::Result<(), ReadFault>;

    /// Closes the current epoch of blocks waiting for a commit: (its number, whether it holds
    /// any).
    fn seal(&mut self) -> Result<(u64, bool)>;

    /// The commit that sealed `epoch` is durable: its blocks become free. Returns how many.
    fn release(&mut self, epoch: u64) -> Result<u64>;

    /// The commit that sealed `epoch` failed: its blocks wait again.
    fn unseal(&mut self, epoch: u64) -> Result<()>;

    /// The handle a commit syncs with (see `Syncer`).
    fn syncer(&self) -> Syncer;

    /// Why writing became unsafe since the block layer was opened (a page of a local pool's
    /// slot file that could not be read), in one line; None while it is sound.
    fn unreadable(&self) -> Option<String> {
        None
    }

    /// Bytes of disk that storing blocks must leave free from now on for the catalog's
    /// block-table pages (a local pool's catalog shares the slot files' filesystem); `check`:
    /// `NoSpace` unless that much is free now. A backend whose catalog lives elsewhere keeps
    /// nothing.
    fn keep_for_catalog(&mut self, _bytes: u64, _check: bool) -> Result<()> {
        Ok(())
    }
}
