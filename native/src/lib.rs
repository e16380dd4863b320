//! Blockfold's native core: every per-block step between a request and a slot.
//!
//! Python (the `engine` package) keeps the catalog, the decisions and the user interfaces; this
//! crate keeps the per-block work and its RAM state, and is driven through a few coarse calls
//! (see API.md). Units, one concept a file:
//!   backend      the block layer seam: what the data path asks of whatever keeps the blocks
//!   fingerprint  xxh3-128 digests and index keys
//!   slots        blocks.dat / hashes.dat, mapped, grown by fallocate
//!   mapguard     a page of a mapped slot file that cannot be read (SIGBUS): zeros and a record
//!   refcounts    2 bytes a slot, chunked
//!   freespace    free bitmap and pending frees by epoch
//!   index        fingerprint key -> slot, sharded, 8 bytes a cell
//!   blocks       a local pool's block layer: store/share (plan, reserve, apply), decref,
//!                verified reads, seal/release
//!   tables       block-table pages, the layer-graph mirror, chain resolution, dirty tracking
//!   gate         pauses data ops for structural edits, and writes during a rebuild
//!   core         the lock and the data path over a VM (write/read/trim/extents), commits,
//!                structural edits; generic over the backend
//!   rebuild      refcounts, index and free space from the pages; orphans
//!   check        fsck's checks of the RAM state
//!   progress     throttled progress reports and cancellation
//!   nbd          the NBD transmission phase of a connection, on a thread of its own
//!   meter        what the NBD export serves, counted: requests, bytes, latency
//!   python       the Python module engine._native (feature "python")
//!   pybackend    a block layer written in Python (a cluster's), as a backend

pub mod backend;
pub mod blocks;
pub mod check;
pub mod core;
pub mod error;
pub mod fingerprint;
pub mod freespace;
pub mod gate;
pub mod index;
pub mod mapguard;
pub mod meter;
pub mod nbd;
pub mod progress;
pub mod rebuild;
pub mod refcounts;
pub mod sharing;
pub mod slots;
pub mod tables;

#[cfg(feature = "python")]
mod pybackend;
#[cfg(feature = "python")]
mod python;
