//! Pages of a mapped slot file that cannot be read: turned into zeros and a record, so one bad
//! page fails the reads of its blocks instead of killing the process.
//!
//! Linux raises SIGBUS on a load or store through a file map whose page cannot be had: past the
//! end of a file truncated under the map, or an I/O error reading the page in. Its default action
//! kills the whole process (every NBD connection of every VM, with their unflushed writes), where
//! qemu's file driver or ZFS fail that one read with EIO. So a process-wide handler, installed once
//! by the first guarded map, looks the faulting address up in a fixed table of the guarded maps;
//! inside one, it maps a private page of zeros over the faulting page, records the offset, and
//! returns. The copy then goes on and reads zeros, which no fingerprint matches: the read fails
//! as a corrupt block, and the map's owner sees the record and refuses every write from then on
//! (`SlotStore::unreadable`, `Core::damage`). A page so replaced stays zeros until the file is
//! mapped again (the pool reopened). Anything else (an address outside every guarded map, a
//! SIGBUS sent by kill) goes to the handler that was there before, or gets the default action.
//!
//! The handler may only use atomics: each table entry is a range behind a sequence number (a
//! seqlock), odd while its map changes (claimed, grown by mremap, released).

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Once, OnceLock};

use memmap2::{MmapRaw, RemapOptions};

use crate::error::{Error, Result};

/// Maps guarded at once in a process (two per open pool).
const ENTRIES: usize = 4096;

struct Entry {
    claimed: AtomicBool,
    seq: AtomicU64,
    start: AtomicUsize,
    len: AtomicUsize,
    writable: AtomicBool,
    /// 1 + the offset of the first page that could not be read; 0: none.
    fault: AtomicU64,
}

impl Entry {
    const fn new() -> Self {
        Entry {
            claimed: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            writable: AtomicBool::new(false),
            fault: AtomicU64::new(0),
        }
    }

    /// Sets the range (len 0: none). Only the entry's owner calls it.
    fn set(&self, start: usize, len: usize, writable: bool) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq + 1, Relaxed);
        fence(Release);
        self.start.store(start, Relaxed);
        self.len.store(len, Relaxed);
        self.writable.store(writable, Relaxed);
        self.seq.store(seq + 2, Release);
    }

    /// (start, len, writable), read whole; None while another thread changes it.
    fn get(&self) -> Option<(usize, usize, bool)> {
        for _ in 0..1000 {
            let seq = self.seq.load(Acquire);
            if seq & 1 == 0 {
                let range = (
                    self.start.load(Relaxed),
                    self.len.load(Relaxed),
                    self.writable.load(Relaxed),
                );
                fence(Acquire);
                if self.seq.load(Relaxed) == seq {
                    return Some(range);
                }
            }
            std::hint::spin_loop();
        }
        None
    }
}

static TABLE: [Entry; ENTRIES] = [const { Entry::new() }; ENTRIES];
static PAGE: AtomicUsize = AtomicUsize::new(0);
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// A file map whose unreadable pages read as zeros and are recorded (see the module's doc).
/// Anonymous maps cannot fault and take no entry.
pub struct GuardedMap {
    map: MmapRaw,
    entry: Option<usize>,
}

impl GuardedMap {
    /// A map of a file. Error: `State` when every entry of the table is taken.
    pub fn file(map: MmapRaw, writable: bool) -> Result<Self> {
        install();
        let entry = (0..ENTRIES)
            .find(|&i| {
                TABLE[i]
                    .claimed
                    .compare_exchange(false, true, AcqRel, Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| {
                Error::State(format!(
                    "more than {ENTRIES} slot-file maps open in one process"
                ))
            })?;
        TABLE[entry].fault.store(0, Relaxed);
        TABLE[entry].set(map.as_ptr() as usize, map.len(), writable);
        Ok(GuardedMap {
            map,
            entry: Some(entry),
        })
    }

    pub fn anonymous(map: MmapRaw) -> Self {
        GuardedMap { map, entry: None }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// mremap to `len` bytes; the record of a fault stays. A map holding a page of zeros is more
    /// than one mapping to the kernel, and mremap refuses it (EFAULT): a pool with an unreadable
    /// page does not grow.
    ///
    /// # Safety
    /// No pointer into the map may be used across the call (as `MmapRaw::remap`).
    pub unsafe fn remap(&mut self, len: usize, options: RemapOptions) -> std::io::Result<()> {
        let result = self.map.remap(len, options);
        if let Some(i) = self.entry {
            let writable = TABLE[i].writable.load(Relaxed);
            TABLE[i].set(self.map.as_ptr() as usize, self.map.len(), writable);
        }
        result
    }

    /// The offset of the first page found unreadable, if any.
    pub fn fault(&self) -> Option<u64> {
        let i = self.entry?;
        TABLE[i].fault.load(Acquire).checked_sub(1)
    }
}

impl Drop for GuardedMap {
    /// The entry goes before the map is unmapped (the field's drop, after this).
    fn drop(&mut self) {
        if let Some(i) = self.entry {
            TABLE[i].set(0, 0, false);
            TABLE[i].claimed.store(false, Release);
        }
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: plain syscalls filling structs we own; the previous action is kept before ours
        // can run.
        unsafe {
            PAGE.store(libc::sysconf(libc::_SC_PAGESIZE) as usize, Relaxed);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous);
            let _ = PREVIOUS.set(previous);
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut ours.sa_mask);
            libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut());
        }
    });
}

extern "C" fn on_sigbus(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a valid siginfo; errno is the interrupted code's, kept as it was.
    unsafe {
        let errno = *libc::__errno_location();
        // si_code > 0: raised by the kernel for an access (not sent with kill or raise).
        let absorbed = (*info).si_code > 0 && absorb((*info).si_addr() as usize);
        *libc::__errno_location() = errno;
        if !absorbed {
            pass_on(signo, info, context);
        }
    }
}

/// Maps zeros over the page at `addr` if a guarded map holds it, and records it.
fn absorb(addr: usize) -> bool {
    let page = PAGE.load(Relaxed);
    for entry in &TABLE {
        let Some((start, len, writable)) = entry.get() else {
            continue;
        };
        if len == 0 || addr < start || addr >= start + len {
            continue;
        }
        let at = addr & !(page - 1);
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: the page lies in a map we own; nothing else lives there.
        let zeros = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                prot,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if zeros == libc::MAP_FAILED {
            return false;
        }
        let _ =
            entry
                .fault
                .compare_exchange(0, (at.max(start) - start) as u64 + 1, AcqRel, Relaxed);
        return true;
    }
    false
}

/// Someone else's SIGBUS: the handler that was there before ours, or the default action.
///
/// # Safety
/// Called from the signal handler with the kernel's arguments.
unsafe fn pass_on(signo: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if let Some(previous) = PREVIOUS.get() {
        let handler = previous.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(signo, info, context);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(signo);
            }
            return;
        }
    }
    // The default action, on return: a fault repeats it, a signal sent waits in the mask till then.
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
    libc::raise(libc::SIGBUS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::MmapOptions;

    #[test]
    fn a_page_past_a_truncated_end_reads_zeros_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 4 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = MmapOptions::new()
            .len(4 * 4096)
            .map_raw_read_only(&file)
            .unwrap();
        let guarded = GuardedMap::file(map, false).unwrap();
        assert_eq!(guarded.fault(), None);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096 + 100)
            .unwrap();
        let mut copy = vec![1u8; 4 * 4096];
        // SAFETY: inside the map (which now lies partly past the end of its file).
        unsafe { std::ptr::copy_nonoverlapping(guarded.as_ptr(), copy.as_mut_ptr(), copy.len()) };
        assert!(copy[..4096].iter().all(|&b| b == 7));
        assert!(copy[4096 + 100..].iter().all(|&b| b == 0));
        assert_eq!(guarded.fault(), Some(2 * 4096));
        drop(guarded);
    }
}
