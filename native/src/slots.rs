//! Physical slots: `blocks.dat` (slot n at byte n × block size) and `hashes.dat` (the 16-byte
//! fingerprint of slot n at byte 16n; all zeros for a free slot), both mapped into memory.
//!
//! Layout (both files little more than arrays):
//!   blocks.dat := header-slot slot*      header-slot := "BLOCKFOLD-SLOTS\n" 0* (one block)
//!   hashes.dat := digest*                digest := 16 bytes (xxh3-128, canonical)
//! Slot 0 is the header, so address 0 means "no block" everywhere else.
//!
//! Both files grow with posix_fallocate in steps of max(n, capacity/4, 1024) slots, so running out
//! of disk is an error when slots are reserved, never a SIGBUS on a later store through the map.
//! Growth always leaves the filesystem's *slop* free (1/32 of it, from 1 MiB to 1 GiB, as ZFS
//! keeps back 1/32 of a pool): the data file can never fill the disk, so the catalog can still
//! commit the acknowledged writes and deletes (dm-vdo and ZFS keep such a reserve too). Growth
//! also leaves free what the catalog's block-table pages need (`keep_for_catalog`: set by the
//! core from its page count), so that the catalog can always commit their delete.
//! Long runs of free slots give their space back to the filesystem as holes (`punch`), never by
//! truncating the file: a read-only opener beside the writer maps the file at its old length, and
//! a page past a truncated end cannot be read (SIGBUS, which mapguard.rs turns into failed reads
//! and a damaged pool), while a hole reads as zeros. A hole is
//! allocated again (`back`) when its slots are reserved, so reuse is refused at reservation, never
//! at a store. The in-RAM variant (no directory) keeps both in anonymous maps.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, RemapOptions};

use crate::error::{Error, Result};
use crate::fingerprint::Digest;
use crate::mapguard::GuardedMap;

pub const DATA_FILE: &str = "blocks.dat";
pub const HASH_FILE: &str = "hashes.dat";
pub const MAGIC: &[u8; 16] = b"BLOCKFOLD-SLOTS\n";
pub const HASH_BYTES: usize = 16;
pub const MIN_GROWTH_SLOTS: u64 = 1024;
/// Where blocks.dat's header (slot 0) says whose file it is, after the magic: the pool's id
/// (16 bytes) and the size of its slots (u32, little-endian). Zeros until a writable open stamps
/// them (files made before pools had ids, a header a repair rewrote). hashes.dat keeps the id
/// too, in slot 0's fingerprint place, which no block uses.
const OWNER_AT: usize = 16;
const BLOCK_SIZE_AT: usize = 32;
const HEADER_BYTES: usize = 36;
pub type PoolId = [u8; 16];

/// The two files of a pool on disk; shared so that a sync can run without the core's lock.
#[derive(Clone)]
pub struct SlotFiles {
    data: Arc<File>,
    hashes: Arc<File>,
}

impl SlotFiles {
    /// fdatasync both files: every block and fingerprint stored so far is durable.
    pub fn sync(&self) -> Result<()> {
        self.data.sync_data()?;
        self.hashes.sync_data()?;
        Ok(())
    }
}

pub struct SlotStore {
    dir: Option<PathBuf>,
    block_size: usize,
    readonly: bool,
    files: Option<SlotFiles>,
    data: GuardedMap,
    hashes: GuardedMap,
    capacity: u64,
    /// Bytes beyond the slop that growth leaves free for the catalog (`keep_for_catalog`).
    catalog: u64,
}

impl SlotStore {
    /// The slot store of a pool directory.
    ///
    /// `create`: make missing or empty files (a new pool, or one whose catalog holds no block);
    /// otherwise a missing or empty file is refused. Errors: `Format` naming the file (missing,
    /// empty, not a whole number of slots, a bad header, a fingerprint file too short to repair),
    /// `Io`.
    pub fn open(dir: &Path, block_size: usize, readonly: bool, create: bool) -> Result<Self> {
        check_block_size(block_size)?;
        let create = create && !readonly;
        let data_path = dir.join(DATA_FILE);
        let hash_path = dir.join(HASH_FILE);
        let data = open_file(&data_path, readonly, create)?;
        let hashes = open_file(&hash_path, readonly, create).map_err(|e| match e {
            // Fingerprints can be computed again from the data; blocks cannot.
            Error::Format(why) => Error::Format(format!(
                "{why}: `blockfold -p {} rebuild --full --repair` computes the fingerprints \
                 again from {DATA_FILE}",
                dir.display()
            )),
            e => e,
        })?;
        let mut size = data.metadata()?.len();
        let bs = block_size as u64;
        if size == 0 {
            if !create {
                return Err(Error::Format(format!("{} is empty", data_path.display())));
            }
            allocate(&data, bs, dir, 0)?;
            size = bs;
        }
        check_stamps(&data, &data_path, &hashes, &hash_path, block_size)?;
        if size % bs != 0 {
            return Err(Error::Format(format!(
                "{} is {size} bytes: not a whole number of {block_size}-byte slots",
                data_path.display()
            )));
        }
        let capacity = size / bs;
        let want = capacity * HASH_BYTES as u64;
        if hashes.metadata()?.len() < want {
            // A crash between growing the two files leaves them out of step; even them up.
            if readonly {
                return Err(Error::Format(format!(
                    "{} holds fingerprints for {} slots, but {} has {capacity}: open the pool \
                     writable once to even them up",
                    hash_path.display(),
                    hashes.metadata()?.len() / HASH_BYTES as u64,
                    data_path.display()
                )));
            }
            hashes.set_len(want)?;
        }
        let files = SlotFiles {
            data: Arc::new(data),
            hashes: Arc::new(hashes),
        };
        let (data_map, hash_map) = map_files(&files, block_size, capacity, readonly)?;
        let mut store = SlotStore {
            dir: Some(dir.to_path_buf()),
            block_size,
            readonly,
            files: Some(files),
            data: data_map,
            hashes: hash_map,
            capacity,
            catalog: 0,
        };
        if size == bs && create && store.block(0)[..16] != MAGIC[..] {
            store.write_header();
        }
        if store.block(0)[..16] != MAGIC[..] {
            return Err(Error::Format(format!(
                "{} is not a Blockfold slot file (bad header): `blockfold -p {} rebuild --full \
                 --repair` rewrites the header if the rest of the file is this pool's",
                data_path.display(),
                dir.display()
            )));
        }
        Ok(store)
    }

    /// A store in RAM only (tests, a node's --memory), holding the header slot.
    pub fn in_memory(block_size: usize) -> Result<Self> {
        check_block_size(block_size)?;
        let mut store = SlotStore {
            dir: None,
            block_size,
            readonly: false,
            files: None,
            data: GuardedMap::anonymous(MmapOptions::new().len(block_size).map_anon()?.into()),
            hashes: GuardedMap::anonymous(MmapOptions::new().len(HASH_BYTES).map_anon()?.into()),
            capacity: 1,
            catalog: 0,
        };
        store.write_header();
        Ok(store)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Slots in the data file, the header included.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The path of one of the slot files (DATA_FILE, HASH_FILE), for messages.
    pub fn path_of(&self, file: &str) -> String {
        match &self.dir {
            Some(dir) => dir.join(file).display().to_string(),
            None => file.to_string(),
        }
    }

    /// Why writing is unsafe since the open, if a page of a slot file could not be read through
    /// its map (mapguard.rs): one line naming the file and the byte. The map holds zeros there
    /// from then on, so nothing is trusted from it until the pool is opened again.
    pub fn unreadable(&self) -> Option<String> {
        let (file, at) = match (self.data.fault(), self.hashes.fault()) {
            (Some(at), _) => (DATA_FILE, at),
            (None, Some(at)) => (HASH_FILE, at),
            (None, None) => return None,
        };
        Some(format!(
            "{} could not be read at byte {at} (an I/O error, or the file was truncated under the \
             pool): reads of the blocks there fail, and nothing is written until the pool is \
             opened again (restart the service; if the file was cut short, `blockfold rebuild \
             --full --repair` then marks the blocks that are gone corrupt)",
            self.path_of(file)
        ))
    }

    pub fn files(&self) -> Option<SlotFiles> {
        self.files.clone()
    }

    /// Bytes of disk the slot files may still take (growth, holes filled again): the free space
    /// of their filesystem less the slop and `catalog`, what is kept for the catalog (see
    /// `keep_for_catalog`). None in RAM (no filesystem bounds it).
    pub fn disk_room(&self, catalog: u64) -> Result<Option<u64>> {
        let Some(files) = &self.files else {
            return Ok(None);
        };
        let (free, total) = filesystem_space(&files.data)?;
        Ok(Some(free.saturating_sub(slop_bytes(total) + catalog)))
    }

    /// Keeps `bytes` free beyond the slop for the catalog from now on: growth leaves them free.
    /// `check`: also `NoSpace` if the filesystem has less than that free now (a write that adds
    /// block-table pages, which the catalog will hold, asks so).
    pub fn keep_for_catalog(&mut self, bytes: u64, check: bool) -> Result<()> {
        self.catalog = bytes;
        let (Some(files), true) = (&self.files, check) else {
            return Ok(());
        };
        let (free, total) = filesystem_space(&files.data)?;
        if total > 0 && free < slop_bytes(total).saturating_add(bytes) {
            return Err(Error::NoSpace(
                self.dir.as_deref().unwrap().display().to_string(),
            ));
        }
        Ok(())
    }

    /// Adds at least `at_least` slots; returns the first new slot. Error: `NoSpace` (the files are
    /// left as they were).
    /// Near a full disk the usual step (a quarter of the capacity) may not fit where the slots
    /// asked for do: the step is then halved, down to `at_least`, rather than refuse a write the
    /// disk has room for.
    pub fn grow(&mut self, at_least: u64) -> Result<u64> {
        let old = self.capacity;
        let mut step = at_least.max(old / 4).max(MIN_GROWTH_SLOTS);
        loop {
            match self.allocate_files(old, old + step) {
                Err(Error::NoSpace(_)) if step > at_least => step = (step / 2).max(at_least),
                result => break result?,
            }
        }
        let new = old + step;
        let (bs, hb) = (self.block_size as u64, HASH_BYTES as u64);
        // mremap: the pages already mapped stay mapped (no copy, no fault again).
        let options = RemapOptions::new().may_move(true);
        // SAFETY: the files (or anonymous memory) now cover the new lengths; `&mut self` means no
        // slice into the old mapping is alive.
        unsafe {
            self.data.remap((new * bs) as usize, options)?;
            self.hashes.remap((new * hb) as usize, options)?;
        }
        self.capacity = new;
        Ok(old)
    }

    /// Gives both files room for `new` slots, or fails and leaves them `old` slots long.
    fn allocate_files(&self, old: u64, new: u64) -> Result<()> {
        let (bs, hb) = (self.block_size as u64, HASH_BYTES as u64);
        if let Some(files) = &self.files {
            let dir = self.dir.as_deref().unwrap();
            allocate(&files.data, new * bs, dir, self.catalog)?;
            if let Err(e) = allocate(&files.hashes, new * hb, dir, self.catalog) {
                files.data.set_len(old * bs)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The bytes of one slot. Panics past the capacity (callers check addresses first).
    pub fn block(&self, slot: u64) -> &[u8] {
        assert!(
            slot < self.capacity,
            "slot {slot} past capacity {}",
            self.capacity
        );
        let bs = self.block_size;
        // SAFETY: inside the mapping; writers hold `&mut self`.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(slot as usize * bs), bs) }
    }

    pub fn digest(&self, slot: u64) -> Digest {
        assert!(slot < self.capacity);
        let mut d = [0u8; 16];
        // SAFETY: inside the mapping.
        unsafe {
            let p = self.hashes.as_ptr().add(slot as usize * HASH_BYTES);
            std::ptr::copy_nonoverlapping(p, d.as_mut_ptr(), HASH_BYTES);
        }
        d
    }

    /// Stores a block and its fingerprint in `slot`, through the map.
    pub fn put(&mut self, slot: u64, block: &[u8], digest: &Digest) {
        assert!(!self.readonly && slot > 0 && slot < self.capacity);
        assert_eq!(block.len(), self.block_size);
        // SAFETY: inside the mapping, `&mut self` excludes readers.
        unsafe {
            let p = self.data.as_mut_ptr().add(slot as usize * self.block_size);
            std::ptr::copy_nonoverlapping(block.as_ptr(), p, self.block_size);
        }
        self.put_digest(slot, digest);
    }

    pub fn put_digest(&mut self, slot: u64, digest: &Digest) {
        assert!(!self.readonly && slot > 0 && slot < self.capacity);
        // SAFETY: inside the mapping, `&mut self` excludes readers.
        unsafe {
            let h = self.hashes.as_mut_ptr().add(slot as usize * HASH_BYTES);
            std::ptr::copy_nonoverlapping(digest.as_ptr(), h, HASH_BYTES);
        }
    }

    /// Stores blocks and their fingerprints in `slots` (ascending runs go in one call each).
    ///
    /// Block data goes to files with pwritev, not through the map: a store through the map
    /// faults each page in first (zero-filled by the filesystem for a fresh page, most of a fresh
    /// write's cost as measured; read from disk for an evicted one). Reads through the map see
    /// the same page cache. Error: `Io` (nothing refers to
    /// these slots yet, so the caller just gives them back).
    pub fn put_many(&mut self, slots: &[u64], blocks: &[&[u8]], digests: &[Digest]) -> Result<()> {
        let Some(files) = self.files.clone() else {
            for ((&slot, block), digest) in slots.iter().zip(blocks).zip(digests) {
                self.put(slot, block, digest);
            }
            return Ok(());
        };
        assert!(!self.readonly);
        let bs = self.block_size as u64;
        let mut i = 0;
        while i < slots.len() {
            let mut j = i + 1;
            while j < slots.len() && slots[j] == slots[j - 1] + 1 && j - i < MAX_RUN {
                j += 1;
            }
            assert!(slots[i] > 0 && slots[j - 1] < self.capacity);
            assert!(blocks[i..j].iter().all(|b| b.len() == self.block_size));
            write_run(&files.data, slots[i] * bs, &blocks[i..j])?;
            i = j;
        }
        // Fingerprints go through the map: 16 bytes each, their pages nearly always cached.
        for (&slot, digest) in slots.iter().zip(digests) {
            self.put_digest(slot, digest);
        }
        Ok(())
    }

    /// Zeroes a slot's fingerprint: the slot holds nothing (free, or an orphan reclaimed).
    pub fn clear_digest(&mut self, slot: u64) {
        assert!(!self.readonly && slot > 0 && slot < self.capacity);
        // SAFETY: as in put.
        unsafe {
            let h = self.hashes.as_mut_ptr().add(slot as usize * HASH_BYTES);
            std::ptr::write_bytes(h, 0, HASH_BYTES);
        }
    }

    /// Test hook and repair tool: overwrite the raw bytes of a slot, fingerprint untouched.
    pub fn overwrite_raw(&mut self, slot: u64, offset: usize, bytes: &[u8]) {
        assert!(!self.readonly && slot < self.capacity && offset + bytes.len() <= self.block_size);
        // SAFETY: inside the mapping.
        unsafe {
            let p = self
                .data
                .as_mut_ptr()
                .add(slot as usize * self.block_size + offset);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        }
    }

    /// Gives the space of slots `first..first + count` back to the filesystem (a hole in the
    /// data file; its length and the fingerprints stay). A filesystem without holes keeps it.
    pub fn punch(&mut self, first: u64, count: u64) -> Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        assert!(!self.readonly && first > 0 && first + count <= self.capacity);
        let bs = self.block_size as u64;
        // SAFETY: a plain syscall on an open descriptor.
        let rc = unsafe {
            libc::fallocate(
                files.data.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (first * bs) as libc::off_t,
                (count * bs) as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
            _ => Err(Error::Io(std::io::Error::last_os_error())),
        }
    }

    /// The runs of slots (first, count) that lie wholly in holes of the data file (space given
    /// back by `punch`, found with SEEK_HOLE/SEEK_DATA): a rebuild marks the free ones hollow,
    /// since what RAM knew of them is gone. None found in RAM or where holes are not reported.
    pub fn holes(&self) -> Result<Vec<(u64, u64)>> {
        let Some(files) = &self.files else {
            return Ok(Vec::new());
        };
        let (fd, bs) = (files.data.as_raw_fd(), self.block_size as u64);
        let end = self.capacity * bs;
        let seek = |at: u64, whence| {
            // SAFETY: a plain syscall on an open descriptor.
            let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
            if r >= 0 {
                return Ok(r as u64);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => Ok(end), // nothing more of that kind before the end
                _ => Err(Error::Io(std::io::Error::last_os_error())),
            }
        };
        let mut out = Vec::new();
        let mut at = bs; // slot 0 is the header
        while at < end {
            let hole = seek(at, libc::SEEK_HOLE)?.min(end);
            if hole >= end {
                break;
            }
            let data = seek(hole, libc::SEEK_DATA)?.min(end);
            let (first, past) = (hole.div_ceil(bs), data / bs);
            if past > first {
                out.push((first, past - first));
            }
            at = data.max(hole + 1);
        }
        Ok(out)
    }

    /// Allocates disk behind slots `first..first + count` again (after `punch`), leaving the
    /// slop and the catalog's room free. Error: `NoSpace`.
    pub fn back(&mut self, first: u64, count: u64) -> Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        assert!(first > 0 && first + count <= self.capacity);
        let bs = self.block_size as u64;
        let dir = self.dir.as_deref().unwrap();
        fallocate_range(&files.data, first * bs, count * bs, dir, self.catalog)
    }

    pub fn sync(&self) -> Result<()> {
        match &self.files {
            Some(files) => files.sync(),
            None => Ok(()),
        }
    }

    /// The pool id stamped in each file: (blocks.dat's header, hashes.dat's), zeros where not
    /// stamped yet.
    pub fn owner(&self) -> (PoolId, PoolId) {
        let (mut data, mut hashes) = (PoolId::default(), PoolId::default());
        data.copy_from_slice(&self.block(0)[OWNER_AT..OWNER_AT + 16]);
        // SAFETY: slot 0's fingerprint place is inside every mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.hashes.as_ptr(), hashes.as_mut_ptr(), 16) }
        (data, hashes)
    }

    /// Stamps both files with the pool's id, and the header with the slot size (durable at the
    /// next sync).
    pub fn stamp(&mut self, id: &PoolId) {
        assert!(!self.readonly);
        let size = (self.block_size as u32).to_le_bytes();
        // SAFETY: slot 0 and its fingerprint place are inside every mapping; `&mut self`
        // excludes readers.
        unsafe {
            let header = self.data.as_mut_ptr();
            std::ptr::copy_nonoverlapping(id.as_ptr(), header.add(OWNER_AT), id.len());
            std::ptr::copy_nonoverlapping(size.as_ptr(), header.add(BLOCK_SIZE_AT), size.len());
            std::ptr::copy_nonoverlapping(id.as_ptr(), self.hashes.as_mut_ptr(), id.len());
        }
    }

    fn write_header(&mut self) {
        // SAFETY: slot 0 is inside every mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), self.data.as_mut_ptr(), MAGIC.len())
        }
    }
}

/// Windows of the data file in each of which `repair_header` hashes one fingerprinted slot again.
const HEADER_PROBES: u64 = 64;

/// Rewrites the header slot of `dir`'s blocks.dat when its magic is damaged, once the rest of the
/// file shows it is this pool's (what `rebuild --full --repair` does first; its full rebuild then
/// re-hashes every block, so nothing the header's damage touched is trusted). Shown by: a whole
/// number of `block_size`-byte slots, two at least; and in each of 64 windows spread over the
/// file, the first slot that has a fingerprint in hashes.dat is hashed again: more than half of
/// those must match (a random file, or a slot file of another block size, matches none, and one
/// holding no fingerprinted block proves nothing). A missing, empty or ragged file is left to
/// `SlotStore::open`. Returns whether it rewrote the header (false: it was sound, or not ours
/// to judge). Errors: `Format` naming the file and what the check found, `Io`.
pub fn repair_header(dir: &Path, block_size: usize) -> Result<bool> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    check_block_size(block_size)?;
    let data_path = dir.join(DATA_FILE);
    let hash_path = dir.join(HASH_FILE);
    let Ok(data) = OpenOptions::new().read(true).write(true).open(&data_path) else {
        return Ok(false);
    };
    let bs = block_size as u64;
    let size = data.metadata()?.len();
    if size < 2 * bs || size % bs != 0 {
        return Ok(false);
    }
    let mut header = vec![0u8; block_size];
    data.read_exact_at(&mut header, 0)?;
    if header[..MAGIC.len()] == MAGIC[..] {
        return Ok(false);
    }
    let slots = size / bs;
    let (mut checked, mut matched) = (0u64, 0u64);
    if let Ok(hashes) = File::open(&hash_path) {
        let known = (hashes.metadata()?.len() / HASH_BYTES as u64).min(slots);
        let mut hashes = BufReader::with_capacity(1 << 16, hashes);
        let (mut digest, mut block) = ([0u8; HASH_BYTES], vec![0u8; block_size]);
        for k in 0..HEADER_PROBES.min(known.saturating_sub(1)) {
            let first = 1 + k * (known - 1) / HEADER_PROBES;
            let end = 1 + (k + 1) * (known - 1) / HEADER_PROBES;
            hashes.seek(SeekFrom::Start(first * HASH_BYTES as u64))?;
            for slot in first..end {
                hashes.read_exact(&mut digest)?;
                if digest != [0; HASH_BYTES] {
                    data.read_exact_at(&mut block, slot * bs)?;
                    checked += 1;
                    matched += u64::from(crate::fingerprint::fingerprint(&block) == digest);
                    break;
                }
            }
        }
    }
    if checked == 0 {
        return Err(Error::Format(format!(
            "{} has a bad header, and {} holds no fingerprint to show the file is this pool's: \
             not rewritten (restore it from a backup)",
            data_path.display(),
            hash_path.display()
        )));
    }
    if matched * 2 <= checked {
        return Err(Error::Format(format!(
            "{} has a bad header and is not this pool's file of {block_size}-byte slots: {matched} \
             of {checked} blocks checked match their fingerprints in {}; not rewritten (restore \
             it from a backup)",
            data_path.display(),
            hash_path.display()
        )));
    }
    header.fill(0);
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    data.write_all_at(&header, 0)?;
    data.sync_data()?;
    Ok(true)
}

/// Slots written by one pwritev (IOV_MAX is 1024 on Linux).
const MAX_RUN: usize = 1024;

/// Writes the pieces back to back at `offset`, whole.
fn write_run(file: &File, offset: u64, pieces: &[&[u8]]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let iov: Vec<libc::iovec> = pieces
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let written = loop {
        // SAFETY: the iovecs point into live slices for the duration of the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // A short write (rare): the rest piece by piece.
    let mut at = 0usize;
    for p in pieces {
        let end = at + p.len();
        if end > written {
            let skip = written.saturating_sub(at);
            file.write_all_at(&p[skip..], offset + (at + skip) as u64)?;
        }
        at = end;
    }
    debug_assert_eq!(at, total);
    Ok(())
}

/// Refuses slot files stamped for another pool than each other, or a data file stamped with
/// another slot size: another pool's file, whose blocks would be read cut into this pool's
/// slots (or whose fingerprints are another's), said before anything is changed (a short
/// hashes.dat is evened up next).
fn check_stamps(
    data: &File,
    data_path: &Path,
    hashes: &File,
    hash_path: &Path,
    block_size: usize,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; HEADER_BYTES];
    if data.read_exact_at(&mut header, 0).is_err() || header[..MAGIC.len()] != MAGIC[..] {
        return Ok(()); // too short, or a bad header: said after the size check
    }
    let stamped = u32::from_le_bytes(header[BLOCK_SIZE_AT..].try_into().unwrap()) as usize;
    if stamped != 0 && stamped != block_size {
        return Err(Error::Format(format!(
            "{} holds {stamped}-byte slots (its header says so), but this pool's blocks are \
             {block_size} bytes: it is another pool's file; put this pool's own {DATA_FILE} and \
             {HASH_FILE} back",
            data_path.display()
        )));
    }
    let owner = &header[OWNER_AT..OWNER_AT + 16];
    let mut theirs = PoolId::default();
    if hashes.read_exact_at(&mut theirs, 0).is_ok()
        && owner != [0; 16]
        && theirs != [0; 16]
        && owner != theirs
    {
        return Err(Error::Format(format!(
            "{} and {} are not one pool's pair (stamped with pool ids {} and {}): one of them \
             was copied or moved here from another pool; put this pool's own files back",
            data_path.display(),
            hash_path.display(),
            hex(owner),
            hex(&theirs)
        )));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_block_size(block_size: usize) -> Result<()> {
    if !block_size.is_power_of_two() || !(512..=1 << 20).contains(&block_size) {
        return Err(Error::OutOfRange(format!(
            "bad block size {block_size}: use a power of two from 512 to 1048576"
        )));
    }
    Ok(())
}

fn open_file(path: &Path, readonly: bool, create: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(!readonly).create(create);
    options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Format(format!("{} is missing", path.display())),
        _ => Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    })
}

fn map_files(
    files: &SlotFiles,
    block_size: usize,
    capacity: u64,
    readonly: bool,
) -> Result<(GuardedMap, GuardedMap)> {
    let data_len = capacity as usize * block_size;
    let hash_len = capacity as usize * HASH_BYTES;
    let (data, hashes) = if readonly {
        (
            MmapOptions::new()
                .len(data_len)
                .map_raw_read_only(&*files.data)?,
            MmapOptions::new()
                .len(hash_len)
                .map_raw_read_only(&*files.hashes)?,
        )
    } else {
        (
            MmapOptions::new().len(data_len).map_raw(&*files.data)?,
            MmapOptions::new().len(hash_len).map_raw(&*files.hashes)?,
        )
    };
    Ok((
        GuardedMap::file(data, !readonly)?,
        GuardedMap::file(hashes, !readonly)?,
    ))
}

/// Grows `file` to `size` bytes with real blocks behind them, or fails with `NoSpace` and leaves
/// the file as it was. Filesystems without fallocate get a plain (sparse) extension. `catalog`:
/// bytes to leave free beyond the slop.
fn allocate(file: &File, size: u64, dir: &Path, catalog: u64) -> Result<()> {
    let current = file.metadata()?.len();
    if size <= current {
        return Ok(());
    }
    let result = fallocate_range(file, current, size - current, dir, catalog);
    if result.is_err() {
        file.set_len(current)?;
    }
    result
}

/// The filesystem space growth never takes: 1/32 of the filesystem, from 1 MiB to 1 GiB.
pub fn slop_bytes(filesystem_bytes: u64) -> u64 {
    (filesystem_bytes / 32).clamp(1 << 20, 1 << 30)
}

/// Bytes free to an unprivileged writer and the filesystem's size, of the filesystem holding
/// `file`.
fn filesystem_space(file: &File) -> Result<(u64, u64)> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a plain syscall filling a struct we own.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// posix_fallocate of `len` bytes at `offset`, refused with `NoSpace` if it would leave less than
/// the slop and `catalog` bytes free (the file may then hold part of the range: callers trim or
/// retry). Filesystems without fallocate (or statvfs figures) get nothing allocated, and no
/// refusal.
fn fallocate_range(file: &File, offset: u64, len: u64, dir: &Path, catalog: u64) -> Result<()> {
    let (free, total) = filesystem_space(file)?;
    if total > 0
        && free
            < len
                .saturating_add(slop_bytes(total))
                .saturating_add(catalog)
    {
        return Err(Error::NoSpace(dir.display().to_string()));
    }
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe {
        libc::posix_fallocate(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t)
    };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => Err(Error::NoSpace(dir.display().to_string())),
        libc::EOPNOTSUPP | libc::EINVAL => {
            let end = offset + len;
            if file.metadata()?.len() < end {
                file.set_len(end)?;
            }
            Ok(())
        }
        errno => Err(Error::Io(std::io::Error::from_raw_os_error(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; 4096]
    }

    #[test]
    fn create_store_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        assert_eq!(s.capacity(), 1);
        let first = s.grow(3).unwrap();
        assert_eq!(first, 1);
        assert_eq!(s.capacity(), 1 + MIN_GROWTH_SLOTS);
        s.put(5, &block(7), &[9; 16]);
        s.sync().unwrap();
        drop(s);
        let s = SlotStore::open(dir.path(), 4096, true, false).unwrap();
        assert_eq!(s.capacity(), 1 + MIN_GROWTH_SLOTS);
        assert_eq!(s.block(5), &block(7)[..]);
        assert_eq!(s.digest(5), [9; 16]);
        assert_eq!(s.digest(6), [0; 16]);
    }

    #[test]
    fn a_stamp_names_the_pool_and_refuses_another_slot_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        assert_eq!(s.owner(), ([0; 16], [0; 16]));
        s.grow(16).unwrap();
        s.stamp(&[7; 16]);
        s.sync().unwrap();
        drop(s);
        let s = SlotStore::open(dir.path(), 4096, true, false).unwrap();
        assert_eq!(s.owner(), ([7; 16], [7; 16]));
        drop(s);
        // The file is 17 * 4096 bytes: a whole number of 1024-byte slots, yet not this size's.
        let err = SlotStore::open(dir.path(), 1024, true, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("holds 4096-byte slots"), "{err}");
        // A hashes.dat of another pool beside it.
        std::fs::write(dir.path().join(HASH_FILE), [8u8; 16]).unwrap();
        let err = SlotStore::open(dir.path(), 4096, true, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("are not one pool's pair"), "{err}");
    }

    #[test]
    fn growth_step_is_a_quarter_of_capacity() {
        let mut s = SlotStore::in_memory(4096).unwrap();
        s.grow(1).unwrap();
        s.put(1, &block(1), &[1; 16]);
        s.grow(10_000).unwrap();
        assert_eq!(s.capacity(), 1 + 1024 + 10_000);
        assert_eq!(s.block(1), &block(1)[..]);
        assert_eq!(s.digest(1), [1; 16]);
        let cap = s.capacity();
        s.grow(1).unwrap();
        assert_eq!(s.capacity(), cap + cap / 4);
    }

    #[test]
    fn refuses_bad_files_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = SlotStore::open(dir.path(), 4096, false, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("blocks.dat is missing"), "{err}");

        drop(SlotStore::open(dir.path(), 4096, false, true).unwrap());
        let data = dir.path().join(DATA_FILE);
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.set_len(4096 + 100).unwrap();
        let err = SlotStore::open(dir.path(), 4096, false, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a whole number"), "{err}");
        assert!(err.to_string().contains("blocks.dat"), "{err}");

        f.set_len(8192).unwrap();
        std::fs::write(&data, vec![1u8; 8192]).unwrap();
        let err = SlotStore::open(dir.path(), 4096, false, false)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not a Blockfold slot file"),
            "{err}"
        );

        f.set_len(0).unwrap();
        let err = SlotStore::open(dir.path(), 4096, false, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("blocks.dat is empty"), "{err}");
    }

    #[test]
    fn short_fingerprint_file_is_evened_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        s.grow(1).unwrap();
        drop(s);
        let hashes = OpenOptions::new()
            .write(true)
            .open(dir.path().join(HASH_FILE))
            .unwrap();
        hashes.set_len(16).unwrap();
        let err = SlotStore::open(dir.path(), 4096, true, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("hashes.dat"), "{err}");
        let s = SlotStore::open(dir.path(), 4096, false, false).unwrap();
        assert_eq!(s.digest(s.capacity() - 1), [0; 16]);
    }

    #[test]
    fn full_disk_is_no_space_and_leaves_files_alone() {
        // RLIMIT_FSIZE would kill the process; a file on /dev/full is not seekable. Instead use a
        // size no filesystem here can hold.
        let dir = tempfile::tempdir().unwrap();
        let mut s = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        let err = s.grow(1 << 40).err().unwrap();
        assert!(matches!(err, Error::NoSpace(_) | Error::Io(_)), "{err}");
        assert_eq!(s.capacity(), 1);
        assert_eq!(
            std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len(),
            4096
        );
        s.grow(1).unwrap();
    }

    /// A pool directory whose blocks.dat holds `n` fingerprinted blocks of `bs` bytes.
    fn pool_of(bs: usize, n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SlotStore::open(dir.path(), bs, false, true).unwrap();
        s.grow(n).unwrap();
        for slot in 1..=n {
            let block = vec![slot as u8; bs];
            s.put(slot, &block, &crate::fingerprint::fingerprint(&block));
        }
        s.sync().unwrap();
        dir
    }

    #[test]
    fn a_file_cut_under_its_map_reads_zeros_there_and_says_so() {
        let dir = pool_of(4096, 8);
        let s = SlotStore::open(dir.path(), 4096, true, false).unwrap();
        assert_eq!(s.unreadable(), None);
        let cut = |name: &str, len: u64| {
            let f = OpenOptions::new().write(true).open(dir.path().join(name));
            f.unwrap().set_len(len).unwrap();
        };
        cut(DATA_FILE, 4 * 4096);
        assert_eq!(s.block(3), &vec![3u8; 4096][..]);
        assert_eq!(s.block(5), &[0u8; 4096][..]);
        let why = s.unreadable().unwrap();
        assert!(
            why.contains("blocks.dat could not be read at byte 20480"),
            "{why}"
        );
        // The page stays zeros even once the file is long again.
        cut(DATA_FILE, 9 * 4096);
        assert_eq!(s.block(5), &[0u8; 4096][..]);
        cut(HASH_FILE, 0);
        assert_eq!(s.digest(1), [0; 16]);
        assert!(
            s.unreadable().unwrap().contains("blocks.dat"),
            "the first file named stays"
        );
        drop(s);
        let s = SlotStore::open(dir.path(), 4096, false, false).unwrap();
        assert_eq!(s.unreadable(), None, "a new map starts sound");
    }

    fn scribble(path: &Path, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    #[test]
    fn a_damaged_header_is_rewritten_when_the_blocks_match_their_fingerprints() {
        let dir = pool_of(4096, 200);
        assert!(
            !repair_header(dir.path(), 4096).unwrap(),
            "a sound header is left alone"
        );
        // A bad sector over the header and slot 1: most blocks still match.
        scribble(&dir.path().join(DATA_FILE), 0, &[0x58; 4096 + 512]);
        let err = SlotStore::open(dir.path(), 4096, false, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("bad header"), "{err}");
        assert!(err.to_string().contains("rebuild --full --repair"), "{err}");
        assert!(repair_header(dir.path(), 4096).unwrap());
        let s = SlotStore::open(dir.path(), 4096, true, false).unwrap();
        assert_eq!(&s.block(0)[..16], MAGIC);
        assert!(s.block(0)[16..].iter().all(|&b| b == 0));
        assert_eq!(s.block(2), &vec![2u8; 4096][..]);
    }

    #[test]
    fn a_header_is_not_rewritten_on_a_file_that_is_not_ours() {
        // Another block size: 64 KiB slot files under a catalog that says 4 KiB.
        let dir = pool_of(65536, 100);
        scribble(&dir.path().join(DATA_FILE), 0, b"XXXXXXXX");
        let before = std::fs::read(dir.path().join(DATA_FILE)).unwrap();
        let err = repair_header(dir.path(), 4096).err().unwrap();
        assert!(err.to_string().contains("not this pool's"), "{err}");
        assert!(err.to_string().contains("0 of"), "{err}");
        assert_eq!(std::fs::read(dir.path().join(DATA_FILE)).unwrap(), before);

        // A random file with the fingerprints of the blocks that were there.
        let dir = pool_of(4096, 100);
        let random: Vec<u8> = (0..101 * 4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(dir.path().join(DATA_FILE), &random).unwrap();
        assert!(repair_header(dir.path(), 4096).is_err());
        assert_eq!(std::fs::read(dir.path().join(DATA_FILE)).unwrap(), random);

        // No fingerprint at all: nothing shows the file is ours.
        let dir = pool_of(4096, 100);
        scribble(&dir.path().join(DATA_FILE), 0, b"XXXXXXXX");
        std::fs::write(dir.path().join(HASH_FILE), vec![0u8; 101 * 16]).unwrap();
        let err = repair_header(dir.path(), 4096).err().unwrap();
        assert!(err.to_string().contains("holds no fingerprint"), "{err}");
    }
}
