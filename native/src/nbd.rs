//! The NBD transmission phase of one connection, on a thread of its own, without the GIL.
//!
//! Python negotiates (engine/nbd/handshake.py); once a client has chosen its export, the socket
//! comes here with what negotiation settled (`Export`). Requests are performed in order as they
//! arrive; replies pile up and go out in one send once nothing more has arrived (or 256 KiB
//! have piled up), so a client at iodepth 16 gets a burst's replies in one system call.
//!
//! Replies are simple, or, once structured replies were negotiated, one chunk each: READ data is
//! one OFFSET_DATA chunk (so NBD_CMD_FLAG_DF always holds), BLOCK_STATUS one BLOCK_STATUS chunk,
//! an error one ERROR chunk with its message; other successes stay simple replies, as the spec
//! allows. A request is applied whole or not at all: a write whose payload does not fully arrive
//! never reaches the pool. See https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
//!
//! What only Python does comes through a `Host`: a flush (a commit), what a client is told of an
//! engine error (and logging it). Each is a call with the GIL, rare or as costly as a commit.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::Backend;
use crate::core::{Core, Extent};
use crate::error::{Error, Result};
use crate::meter::{Meter, Op, VmCounters};

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668E_33EF;
const REQUEST_SIZE: usize = 28;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const FLAG_FUA: u16 = 1 << 0;
const FLAG_NO_HOLE: u16 = 1 << 1;
const FLAG_DF: u16 = 1 << 2;
const FLAG_REQ_ONE: u16 = 1 << 3;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
const STATE_HOLE: u32 = 1 << 0;
const STATE_ZERO: u32 = 1 << 1;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// The largest READ or WRITE payload served (announced at negotiation); larger ones get EINVAL.
pub const MAX_PAYLOAD: u64 = 32 << 20;
const MAX_MESSAGE: usize = 4096;
const RECV_BYTES: usize = 256 << 10;
/// Replies sent at once, not held until nothing more has arrived.
const SEND_BYTES: usize = 256 << 10;
/// The most one BLOCK_STATUS reply describes; clients ask on. Just under 4 GiB, a multiple of
/// every block size a pool takes (4..64 KiB), so that an extent rounded up to its block's end
/// still fits the reply's 32-bit length: a hole costs one reply per 4 GiB, whatever the VM size.
const STATUS_SPAN: u64 = (1 << 32) - (64 << 10);
/// The most extents one BLOCK_STATUS reply holds (512 KiB of descriptors); clients ask on.
const STATUS_EXTENTS: usize = 1 << 16;
const THREAD_STACK: usize = 2 << 20;
/// Buffers a connection keeps between requests (a large READ or WRITE is let go after it).
const KEEP_BYTES: usize = 1 << 20;

/// What the request loop asks of the pool: a core, over either block layer.
pub trait Volume: Send + Sync + 'static {
    fn read_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()>;
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> Result<()>;
    fn trim(&self, name: &str, offset: u64, length: u64) -> Result<()>;
    fn extents(&self, name: &str, offset: u64, length: u64, limit: usize) -> Result<Vec<Extent>>;
}

impl<B: Backend + Send + Sync + 'static> Volume for Core<B> {
    fn read_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        Core::read_into(self, name, offset, out)
    }
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        Core::write(self, name, offset, data)
    }
    fn trim(&self, name: &str, offset: u64, length: u64) -> Result<()> {
        Core::trim(self, name, offset, length)
    }
    fn extents(&self, name: &str, offset: u64, length: u64, limit: usize) -> Result<Vec<Extent>> {
        Core::extents(self, name, offset, length, limit)
    }
}

/// An NBD error value and one line for a human (the message of a structured ERROR chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: u32,
    pub message: String,
}

impl Failure {
    fn new(error: u32, message: impl Into<String>) -> Self {
        Failure {
            error,
            message: message.into(),
        }
    }
}

/// What only the engine in Python does for a connection.
pub trait Host: Send + Sync + 'static {
    /// Makes every write so far durable (a commit).
    fn flush(&self) -> std::result::Result<(), Failure>;
    /// What the client is told of an engine error (logged by the host if it is worth it).
    fn failure(&self, error: Error) -> Failure;
    /// One line for the server's log.
    fn log(&self, message: &str);
}

/// What negotiation settled for one connection.
#[derive(Clone, Debug)]
pub struct Export {
    pub name: String,
    pub size: u64,
    pub block_size: u64,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of `base:allocation` if selected for this export, else 0.
    pub context: u32,
    pub read_only: bool,
    /// HOST:PORT of the client, for the log.
    pub peer: String,
}

/// A connection being served, as its owner sees it: stop it, drop it, wait for its end.
pub struct Connection {
    fd: RawFd,
    closed: Mutex<bool>,
    ended: Condvar,
}

impl Connection {
    /// Stop taking requests; those already received are still answered.
    pub fn stop(&self) {
        self.shutdown(libc::SHUT_RD);
    }

    /// Drop the connection now, as if its network failed (a thread stuck sending is freed).
    pub fn abort(&self) {
        self.shutdown(libc::SHUT_RDWR);
    }

    fn shutdown(&self, how: i32) {
        let closed = self.closed.lock();
        if !*closed {
            // SAFETY: the descriptor stays open while `closed` is false and its lock is held.
            unsafe { libc::shutdown(self.fd, how) };
        }
    }

    /// Waits until the connection is closed (at most `timeout`); whether it is.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut closed = self.closed.lock();
        while !*closed {
            match deadline {
                None => self.ended.wait(&mut closed),
                Some(d) => {
                    if self.ended.wait_until(&mut closed, d).timed_out() {
                        break;
                    }
                }
            }
        }
        *closed
    }

    pub fn done(&self) -> bool {
        *self.closed.lock()
    }

    fn close(&self) {
        let mut closed = self.closed.lock();
        // SAFETY: the loop owned the descriptor and is done with it.
        unsafe { libc::close(self.fd) };
        *closed = true;
        self.ended.notify_all();
    }
}

/// Serves the connection on `fd` (a connected, blocking stream socket, owned from now on) on a
/// thread of its own: sends `greeting` (the replies that ended negotiation), then runs the
/// request loop until NBD_CMD_DISC or the end of input, and closes the socket. If the thread
/// cannot be started, the error is returned and `fd` is left to the caller.
pub fn serve<V: Volume, H: Host>(
    fd: RawFd,
    greeting: Vec<u8>,
    volume: Arc<V>,
    export: Export,
    host: H,
    meter: Arc<Meter>,
) -> io::Result<Arc<Connection>> {
    let connection = Arc::new(Connection {
        fd,
        closed: Mutex::new(false),
        ended: Condvar::new(),
    });
    let theirs = connection.clone();
    std::thread::Builder::new()
        .name(format!("nbd {}", export.peer))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let counters = meter.vm(&export.name);
            let peer = export.peer.clone();
            let mut t = Transmission::new(fd, volume, export, &host, meter, counters);
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.run(&greeting)));
            match ended {
                Ok(End::Quiet) => {}
                Ok(End::Protocol(why)) => {
                    host.log(&format!("{peer}: {why}; closing the connection"))
                }
                Err(_) => host.log(&format!(
                    "{peer}: internal error: the request loop panicked"
                )),
            }
            theirs.close();
        })?;
    Ok(connection)
}

/// Why a connection ends.
enum End {
    /// NBD_CMD_DISC, the end of input, or a socket error: nothing more to say.
    Quiet,
    /// The client broke the protocol beyond any reply: logged, and the connection dropped.
    Protocol(String),
}

/// The client closed its side, or the socket failed.
struct Gone;

struct Request {
    cookie: u64,
    command: u16,
    flags: u16,
    offset: u64,
    length: u64,
}

fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "?",
    }
}

struct Transmission<'h, V, H> {
    fd: RawFd,
    volume: Arc<V>,
    export: Export,
    host: &'h H,
    meter: Arc<Meter>,
    counters: Arc<VmCounters>,
    input: Vec<u8>,
    start: usize, // input before it is parsed already
    output: Vec<u8>,
    payload: Vec<u8>,
}

impl<'h, V: Volume, H: Host> Transmission<'h, V, H> {
    fn new(
        fd: RawFd,
        volume: Arc<V>,
        export: Export,
        host: &'h H,
        meter: Arc<Meter>,
        counters: Arc<VmCounters>,
    ) -> Self {
        Transmission {
            fd,
            volume,
            export,
            host,
            meter,
            counters,
            input: Vec::new(),
            start: 0,
            output: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn run(&mut self, greeting: &[u8]) -> End {
        self.output.extend_from_slice(greeting);
        let end = self.serve();
        // What was received is answered, whatever ended the connection.
        let _ = self.send();
        end
    }

    fn serve(&mut self) -> End {
        loop {
            // Wait for input only once every reply so far is sent.
            let wait = self.output.is_empty();
            match self.fill(REQUEST_SIZE, wait) {
                Ok(true) => {}
                Ok(false) => {
                    if self.send().is_err() {
                        return End::Quiet;
                    }
                    continue;
                }
                Err(Gone) => return End::Quiet,
            }
            let h = &self.input[self.start..self.start + REQUEST_SIZE];
            let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
            let r = Request {
                flags: u16::from_be_bytes(h[4..6].try_into().unwrap()),
                command: u16::from_be_bytes(h[6..8].try_into().unwrap()),
                cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
                offset: u64::from_be_bytes(h[16..24].try_into().unwrap()),
                length: u32::from_be_bytes(h[24..28].try_into().unwrap()) as u64,
            };
            self.start += REQUEST_SIZE;
            if magic != REQUEST_MAGIC {
                return End::Protocol(format!("bad request magic {magic:#x}"));
            }
            if r.command == CMD_DISC {
                return End::Quiet;
            }
            let mut refusal = None;
            let carries_data = matches!(r.command, CMD_READ | CMD_WRITE);
            if carries_data && r.length > MAX_PAYLOAD {
                refusal = Some(Failure::new(
                    EINVAL,
                    format!(
                        "{} of {} bytes: the most is {MAX_PAYLOAD}",
                        command_name(r.command),
                        r.length
                    ),
                ));
                if r.command == CMD_WRITE && self.discard(r.length).is_err() {
                    return End::Quiet; // keeps the stream in step, or the client is gone
                }
            } else if r.command == CMD_WRITE && self.take(r.length as usize).is_err() {
                return End::Quiet; // cut short: nothing of it is applied
            }
            let mark = self.output.len();
            let answered = match refusal {
                Some(f) => Err(f),
                None => self.perform(&r),
            };
            if let Err(f) = answered {
                self.output.truncate(mark);
                self.failure(&r, f);
            }
            if self.output.len() >= SEND_BYTES && self.send().is_err() {
                return End::Quiet;
            }
        }
    }

    // -- performing requests ---------------------------------------------------------------------

    fn allowed(&self, command: u16) -> Option<u16> {
        Some(match command {
            CMD_READ if self.export.structured => FLAG_FUA | FLAG_DF,
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => FLAG_FUA,
            CMD_WRITE_ZEROES => FLAG_FUA | FLAG_NO_HOLE,
            CMD_BLOCK_STATUS => FLAG_FUA | FLAG_REQ_ONE,
            _ => return None,
        })
    }

    /// Appends the reply to one request to the output; a failure appends nothing.
    fn perform(&mut self, r: &Request) -> std::result::Result<(), Failure> {
        let command = command_name(r.command);
        let Some(allowed) = self.allowed(r.command) else {
            return Err(Failure::new(
                EINVAL,
                format!("unknown command {}", r.command),
            ));
        };
        if r.flags & !allowed != 0 {
            return Err(Failure::new(
                EINVAL,
                format!("flags {:#x} are not valid for {command}", r.flags),
            ));
        }
        let modifying = matches!(r.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if self.export.read_only && modifying {
            return Err(Failure::new(EPERM, "the export is read-only"));
        }
        if r.command == CMD_FLUSH {
            self.flush()?;
            self.simple_reply(r.cookie, 0);
            return Ok(());
        }
        if r.command == CMD_BLOCK_STATUS && self.export.context == 0 {
            return Err(Failure::new(
                EINVAL,
                "BLOCK_STATUS needs the base:allocation context set for this export",
            ));
        }
        let size = self.export.size;
        if r.offset as u128 + r.length as u128 > size as u128 {
            // as the spec asks: writing past the end is "no space", anything else is invalid
            let error = if matches!(r.command, CMD_WRITE | CMD_WRITE_ZEROES) {
                ENOSPC
            } else {
                EINVAL
            };
            return Err(Failure::new(
                error,
                format!(
                    "{command} of {} bytes at {} runs past the end of {} ({size} bytes)",
                    r.length, r.offset, self.export.name
                ),
            ));
        }
        match r.command {
            CMD_READ => self.read(r),
            CMD_BLOCK_STATUS => self.block_status(r),
            _ => {
                if r.length > 0 {
                    let started = Instant::now();
                    let done = if r.command == CMD_WRITE {
                        let payload = std::mem::take(&mut self.payload);
                        let done = self.volume.write(&self.export.name, r.offset, &payload);
                        self.payload = payload;
                        done
                    } else {
                        // TRIM and WRITE_ZEROES alike: the range reads back as zeros and frees
                        // its slots. NO_HOLE changes nothing, as zero blocks never take a slot.
                        self.volume.trim(&self.export.name, r.offset, r.length)
                    };
                    self.meter.changed();
                    done.map_err(|e| self.host.failure(e))?;
                    let op = if r.command == CMD_WRITE {
                        Op::Write
                    } else {
                        Op::Trim
                    };
                    self.counted(op, started);
                    if op == Op::Write {
                        self.counters.written_bytes.fetch_add(r.length, Relaxed);
                    }
                    if r.flags & FLAG_FUA != 0 {
                        self.flush()?;
                    }
                }
                self.simple_reply(r.cookie, 0);
                Ok(())
            }
        }
    }

    fn read(&mut self, r: &Request) -> std::result::Result<(), Failure> {
        if r.length == 0 {
            if self.export.structured {
                // an OFFSET_DATA chunk holds at least one byte
                self.chunk_header(r.cookie, REPLY_TYPE_NONE, 0);
            } else {
                self.simple_reply(r.cookie, 0);
            }
            return Ok(());
        }
        if self.export.structured {
            self.chunk_header(r.cookie, REPLY_TYPE_OFFSET_DATA, 8 + r.length as u32);
            self.output.extend_from_slice(&r.offset.to_be_bytes());
        } else {
            self.simple_reply(r.cookie, 0);
        }
        let at = self.output.len();
        self.output.resize(at + r.length as usize, 0);
        let started = Instant::now();
        match self
            .volume
            .read_into(&self.export.name, r.offset, &mut self.output[at..])
        {
            Ok(()) => {
                self.counted(Op::Read, started);
                self.counters.read_bytes.fetch_add(r.length, Relaxed);
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::Corrupt { .. }) {
                    self.meter.changed(); // remembered as corrupt: a figure
                }
                Err(self.host.failure(e))
            }
        }
    }

    /// `base:allocation` from the block tables: HOLE|ZERO where no block is behind the range,
    /// 0 (data) elsewhere. Extents follow block boundaries; without REQ_ONE the last one runs on
    /// to the end of its block, as the spec allows.
    fn block_status(&mut self, r: &Request) -> std::result::Result<(), Failure> {
        if r.length == 0 {
            return Err(Failure::new(EINVAL, "BLOCK_STATUS of 0 bytes"));
        }
        let one = r.flags & FLAG_REQ_ONE != 0;
        let mut end = r.offset + r.length.min(STATUS_SPAN);
        if !one {
            let bs = self.export.block_size;
            end = self.export.size.min(end.div_ceil(bs) * bs);
        }
        let extents = self
            .volume
            .extents(
                &self.export.name,
                r.offset,
                end - r.offset,
                if one { 1 } else { STATUS_EXTENTS },
            )
            .map_err(|e| self.host.failure(e))?;
        self.chunk_header(
            r.cookie,
            REPLY_TYPE_BLOCK_STATUS,
            4 + 8 * extents.len() as u32,
        );
        self.output
            .extend_from_slice(&self.export.context.to_be_bytes());
        for e in &extents {
            let state = if e.zero { STATE_HOLE | STATE_ZERO } else { 0 };
            self.output
                .extend_from_slice(&(e.length as u32).to_be_bytes());
            self.output.extend_from_slice(&state.to_be_bytes());
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), Failure> {
        let started = Instant::now();
        self.host.flush()?;
        self.meter.observe(Op::Flush, started.elapsed());
        Ok(())
    }

    fn counted(&self, op: Op, started: Instant) {
        self.meter.observe(op, started.elapsed());
        self.counters.requests[op as usize].fetch_add(1, Relaxed);
    }

    // -- replies ---------------------------------------------------------------------------------

    fn simple_reply(&mut self, cookie: u64, error: u32) {
        self.output
            .extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&error.to_be_bytes());
        self.output.extend_from_slice(&cookie.to_be_bytes());
    }

    /// A structured reply chunk's header: every reply Blockfold sends is one chunk, so each
    /// carries NBD_REPLY_FLAG_DONE. `length` bytes of payload follow.
    fn chunk_header(&mut self, cookie: u64, kind: u16, length: u32) {
        self.output
            .extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        self.output
            .extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        self.output.extend_from_slice(&kind.to_be_bytes());
        self.output.extend_from_slice(&cookie.to_be_bytes());
        self.output.extend_from_slice(&length.to_be_bytes());
    }

    fn failure(&mut self, r: &Request, f: Failure) {
        if !self.export.structured {
            self.simple_reply(r.cookie, f.error);
            return;
        }
        let mut cut = f.message.len().min(MAX_MESSAGE);
        while !f.message.is_char_boundary(cut) {
            cut -= 1; // whole characters
        }
        let text = &f.message.as_bytes()[..cut];
        self.chunk_header(r.cookie, REPLY_TYPE_ERROR, 6 + text.len() as u32);
        self.output.extend_from_slice(&f.error.to_be_bytes());
        self.output
            .extend_from_slice(&(text.len() as u16).to_be_bytes());
        self.output.extend_from_slice(text);
    }

    // -- the socket ------------------------------------------------------------------------------

    /// Sends every reply so far.
    fn send(&mut self) -> std::result::Result<(), Gone> {
        let mut sent = 0;
        while sent < self.output.len() {
            let rest = &self.output[sent..];
            // SAFETY: a valid buffer of rest.len() bytes; the descriptor is ours until close.
            let n = unsafe {
                libc::send(
                    self.fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.output.clear();
                return Err(Gone);
            }
            sent += n as usize;
        }
        self.output.clear();
        if self.output.capacity() > KEEP_BYTES {
            self.output.shrink_to(KEEP_BYTES); // one large read does not stay held
        }
        Ok(())
    }

    /// Buffers at least `need` unparsed bytes; without `wait`, only if they have arrived.
    fn fill(&mut self, need: usize, wait: bool) -> std::result::Result<bool, Gone> {
        while self.input.len() - self.start < need {
            if self.start > 0 {
                self.input.drain(..self.start);
                self.start = 0;
            }
            match recv_more(self.fd, &mut self.input, RECV_BYTES, wait)? {
                Some(0) => return Err(Gone),
                None => return Ok(false),
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// Exactly `n` bytes of input into `self.payload`: what is buffered, then from the socket.
    fn take(&mut self, n: usize) -> std::result::Result<(), Gone> {
        self.payload.clear();
        if self.payload.capacity() > KEEP_BYTES {
            self.payload.shrink_to(KEEP_BYTES); // one large write does not stay held
        }
        let buffered = (self.input.len() - self.start).min(n);
        self.payload
            .extend_from_slice(&self.input[self.start..self.start + buffered]);
        self.start += buffered;
        while self.payload.len() < n {
            let want = n - self.payload.len();
            if recv_more(self.fd, &mut self.payload, want, true)? == Some(0) {
                return Err(Gone);
            }
        }
        Ok(())
    }

    fn discard(&mut self, mut n: u64) -> std::result::Result<(), Gone> {
        while n > 0 {
            if self.input.len() == self.start && !self.fill(1, true)? {
                return Err(Gone);
            }
            let step = ((self.input.len() - self.start) as u64).min(n);
            self.start += step as usize;
            n -= step;
        }
        Ok(())
    }
}

/// Receives at most `most` bytes onto the end of `buf` (no zero-filling first: an idle
/// connection touches no more memory than it receives): how many (0 at the end of input), None
/// if nothing has arrived and `wait` is false.
fn recv_more(
    fd: RawFd,
    buf: &mut Vec<u8>,
    most: usize,
    wait: bool,
) -> std::result::Result<Option<usize>, Gone> {
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    buf.reserve(most);
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of at least `most` bytes owned by `buf`.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), most, flags) };
        if n >= 0 {
            // SAFETY: recv initialised the first n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(Some(n as usize));
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    /// A VM in RAM whose every block reads as data; reads past 1 MiB fail as rotten.
    struct Ram(Mutex<Vec<u8>>);

    impl Volume for Ram {
        fn read_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
            if offset >= 1 << 20 {
                return Err(Error::Corrupt {
                    vm: name.into(),
                    offset,
                    slot: 1,
                });
            }
            let d = self.0.lock();
            out.copy_from_slice(&d[offset as usize..offset as usize + out.len()]);
            Ok(())
        }
        fn write(&self, _: &str, offset: u64, data: &[u8]) -> Result<()> {
            self.0.lock()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn trim(&self, _: &str, offset: u64, length: u64) -> Result<()> {
            self.0.lock()[offset as usize..(offset + length) as usize].fill(0);
            Ok(())
        }
        fn extents(&self, _: &str, _: u64, length: u64, _: usize) -> Result<Vec<Extent>> {
            Ok(vec![Extent {
                length,
                zero: false,
            }])
        }
    }

    struct Quiet;

    impl Host for Quiet {
        fn flush(&self) -> std::result::Result<(), Failure> {
            Ok(())
        }
        fn failure(&self, error: Error) -> Failure {
            Failure::new(EIO, error.to_string())
        }
        fn log(&self, _: &str) {}
    }

    fn start(structured: bool) -> (UnixStream, Arc<Connection>, Arc<Meter>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let export = Export {
            name: "a".into(),
            size: 2 << 20,
            block_size: 4096,
            structured,
            context: 0,
            read_only: false,
            peer: "test".into(),
        };
        let meter = Arc::new(Meter::new(&[0.001]));
        let volume = Arc::new(Ram(Mutex::new(vec![0; 2 << 20])));
        let c = serve(
            theirs.into_raw_fd(),
            b"hi".to_vec(),
            volume,
            export,
            Quiet,
            meter.clone(),
        )
        .unwrap();
        (ours, c, meter)
    }

    fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&command.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&length.to_be_bytes());
        r
    }

    fn exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn writes_read_back_and_every_request_before_disc_is_answered() {
        let (mut s, c, meter) = start(false);
        assert_eq!(exactly(&mut s, 2), b"hi");
        let mut burst = request(CMD_WRITE, 1, 4096, 4);
        burst.extend_from_slice(b"abcd");
        burst.extend(request(CMD_READ, 2, 4094, 8));
        burst.extend(request(CMD_DISC, 3, 0, 0));
        s.write_all(&burst).unwrap();
        let reply = exactly(&mut s, 16 + 16 + 8);
        assert_eq!(&reply[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[4..8], &[0; 4]);
        assert_eq!(&reply[8..16], &1u64.to_be_bytes());
        assert_eq!(&reply[24..32], &2u64.to_be_bytes());
        assert_eq!(&reply[32..], b"\0\0abcd\0\0");
        assert!(c.join(Some(Duration::from_secs(5))));
        assert_eq!(s.read(&mut [0; 1]).unwrap(), 0); // closed
        assert_eq!(meter.vms()[0].1.written_bytes.load(Relaxed), 4);
        assert_eq!(meter.changes(), 1);
    }

    #[test]
    fn structured_errors_carry_their_message_and_bad_magic_ends_the_connection() {
        let (mut s, c, _) = start(true);
        exactly(&mut s, 2);
        s.write_all(&request(CMD_READ, 7, 2 << 20, 1)).unwrap();
        let header = exactly(&mut s, 20);
        assert_eq!(&header[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&header[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let body = exactly(&mut s, length);
        assert_eq!(&body[..4], &EINVAL.to_be_bytes());
        let text = String::from_utf8(body[6..].to_vec()).unwrap();
        assert_eq!(
            text,
            "READ of 1 bytes at 2097152 runs past the end of a (2097152 bytes)"
        );
        s.write_all(&request(CMD_READ, 8, 1 << 20, 4096)).unwrap(); // rotten
        let header = exactly(&mut s, 20);
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        assert_eq!(&exactly(&mut s, length)[..4], &EIO.to_be_bytes());
        s.write_all(&[0xff; 28]).unwrap();
        assert!(c.join(Some(Duration::from_secs(5))));
    }

    #[test]
    fn stop_ends_an_idle_connection_and_join_waits_for_it() {
        let (mut s, c, _) = start(false);
        exactly(&mut s, 2);
        assert!(!c.join(Some(Duration::from_millis(50))));
        c.stop();
        assert!(c.join(Some(Duration::from_secs(5))));
        assert!(c.done());
        c.abort(); // after the end: nothing happens
    }
}
