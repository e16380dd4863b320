//! The Python module `engine._native`: a few coarse calls over buffers and numpy arrays.
//! The API is documented in native/API.md; this file only converts and releases the GIL.
//!
//! Every call that takes the core's lock first releases the GIL (`detach`): the core takes the
//! GIL while it holds its lock (a rebuild reporting progress, a cluster's block layer storing
//! blocks), so waiting for the lock with the GIL held could deadlock. Nothing here ever does.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use parking_lot::Mutex;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::backend::Backend;
use crate::check;
use crate::core::{catalog_bytes, Core, Edit};
use crate::error::Error;
use crate::fingerprint::{self, Fingerprinter};
use crate::meter::{self, Meter};
use crate::nbd::{self, Connection, Export, Failure, Host};
use crate::progress::Report;
use crate::pybackend::PyBackend;
use crate::rebuild::Figures;
use crate::tables::{INHERIT, PAGE_ENTRIES, ZERO};

create_exception!(
    engine._native,
    NativeError,
    PyException,
    "Base of the core's errors."
);
create_exception!(
    engine._native,
    OutOfRangeError,
    NativeError,
    "A range outside a VM, a bad argument: nothing changed."
);
create_exception!(
    engine._native,
    UnknownVMError,
    NativeError,
    "No VM registered under that name: nothing changed."
);
create_exception!(
    engine._native,
    NoSpaceError,
    NativeError,
    "The slot files could not grow: the request was refused, nothing changed."
);
create_exception!(
    engine._native,
    CorruptError,
    NativeError,
    "A block's bytes no longer match its fingerprint; .vm, .offset, .slot say which."
);
create_exception!(
    engine._native,
    ReadOnlyError,
    NativeError,
    "A change to a core opened read-only: nothing changed."
);
create_exception!(
    engine._native,
    FormatError,
    NativeError,
    "A slot file that is not what a pool keeps; the message names it."
);
create_exception!(
    engine._native,
    StateError,
    NativeError,
    "A call the core's state does not allow (unknown layer, closed core, ...)."
);
create_exception!(
    engine._native,
    CancelledError,
    NativeError,
    "Long work stopped because the caller asked."
);

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::OutOfRange(_) => OutOfRangeError::new_err(msg),
        Error::UnknownVm(_) => UnknownVMError::new_err(msg),
        Error::NoSpace(_) => NoSpaceError::new_err(msg),
        Error::Corrupt { vm, offset, slot } => {
            let err = CorruptError::new_err(msg);
            let value = err.value(py);
            // Attributes of a fresh exception object cannot fail to set.
            let _ = value.setattr("vm", vm);
            let _ = value.setattr("offset", offset);
            let _ = value.setattr("slot", slot);
            err
        }
        Error::ReadOnly(_) => ReadOnlyError::new_err(msg),
        Error::Format(_) => FormatError::new_err(msg),
        Error::State(_) => StateError::new_err(msg),
        Error::Cancelled(_) => CancelledError::new_err(msg),
        Error::Io(io) => match io.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, msg)),
            None => PyOSError::new_err(msg),
        },
        Error::Python(e) => e,
    }
}

trait OrRaise<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for crate::error::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// A read-only view of any C-contiguous buffer (bytes, bytearray, memoryview, numpy array),
/// usable without the GIL while the export is held.
struct Bytes {
    _buf: PyUntypedBuffer,
    ptr: usize,
    len: usize,
}

impl Bytes {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buf = PyUntypedBuffer::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(OutOfRangeError::new_err("the buffer is not contiguous"));
        }
        Ok(Bytes {
            ptr: buf.buf_ptr() as usize,
            len: buf.len_bytes(),
            _buf: buf,
        })
    }

    fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let b = Self::get(obj)?;
        if b._buf.readonly() {
            return Err(OutOfRangeError::new_err("the buffer is read-only"));
        }
        Ok(b)
    }

    /// SAFETY: the buffer export (held by self) keeps the memory alive and unresized.
    fn slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// SAFETY: as `slice`; the caller checked the buffer is writable.
    #[allow(clippy::mut_from_ref)]
    fn slice_mut(&self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

/// A bytes object of `length` bytes, not zeroed (a 1 MiB read spent 6 % of its time zeroing
/// what it then overwrote).
fn uninit_bytes(py: Python<'_>, length: usize) -> PyResult<Bound<'_, PyBytes>> {
    let size = isize::try_from(length)
        .map_err(|_| OutOfRangeError::new_err(format!("{length} bytes is too long a read")))?;
    // SAFETY: PyBytes_FromStringAndSize with a null pointer makes an uninitialised bytes object
    // of that size (or fails, raising MemoryError).
    unsafe {
        let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

fn u64s<'py>(py: Python<'py>, v: Vec<u64>) -> Bound<'py, PyArray1<u64>> {
    PyArray1::from_vec(py, v)
}

/// Calls `progress(phase, done, total, bytes_per_s)` and checks `cancel.is_set()` (each may be
/// None), with the GIL taken for just that moment. An exception from either stops the work and
/// is raised by the caller afterwards.
struct PySink {
    progress: Option<Py<PyAny>>,
    cancel: Option<Py<PyAny>>,
    raised: Option<PyErr>,
    what: &'static str,
}

impl PySink {
    fn new(progress: Option<Py<PyAny>>, cancel: Option<Py<PyAny>>, what: &'static str) -> Self {
        PySink {
            progress,
            cancel,
            raised: None,
            what,
        }
    }

    fn call(&mut self, r: &Report) -> crate::error::Result<()> {
        if self.progress.is_none() && self.cancel.is_none() {
            return Ok(());
        }
        let outcome: PyResult<bool> = Python::attach(|py| {
            if let Some(p) = &self.progress {
                p.call1(py, (r.phase, r.done, r.total, r.bytes_per_s))?;
            }
            match &self.cancel {
                Some(c) => c.call_method0(py, "is_set")?.is_truthy(py),
                None => Ok(false),
            }
        });
        match outcome {
            Ok(false) => Ok(()),
            Ok(true) => Err(Error::Cancelled(self.what.into())),
            Err(e) => {
                self.raised = Some(e);
                Err(Error::Cancelled(self.what.into()))
            }
        }
    }

    fn finish<T>(self, py: Python<'_>, r: crate::error::Result<T>) -> PyResult<T> {
        match (r, self.raised) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => r.or_raise(py),
        }
    }
}

/// The fingerprint of each `block_size` block of `data`, as n × 16 bytes (canonical xxh3-128).
#[pyfunction]
fn fingerprints<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    block_size: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = Bytes::get(data)?;
    if block_size == 0 || data.len % block_size != 0 {
        return Err(OutOfRangeError::new_err(format!(
            "{} bytes are not a whole number of {block_size}-byte blocks",
            data.len
        )));
    }
    let digests = py.detach(|| fingerprint::fingerprints(data.slice(), block_size));
    Ok(PyBytes::new(py, digests.as_flattened()))
}

/// Rewrites a damaged blocks.dat header in `directory` once the file shows it is the pool's
/// (`slots::repair_header`); true if it did.
#[pyfunction]
fn repair_header(py: Python<'_>, directory: PathBuf, block_size: usize) -> PyResult<bool> {
    py.detach(|| crate::slots::repair_header(&directory, block_size))
        .or_raise(py)
}

/// The phases a local core's rebuild reports, in order.
const PHASES: [&str; 4] = ["tables", "hashes", "index", "space"];

/// The core behind a `Core` object: a local pool's, or one over a block layer in Python.
#[derive(Clone)]
enum Inner {
    Local(Arc<Core>),
    Foreign(Arc<Core<PyBackend>>),
}

/// `$body` with `$c` bound to the core, whichever its backend (the body is compiled for each).
macro_rules! each {
    ($inner:expr, $c:ident => $body:expr) => {
        match $inner {
            Inner::Local($c) => $body,
            Inner::Foreign($c) => $body,
        }
    };
}

/// `$body` on the core with the GIL released, its error raised as the matching exception.
macro_rules! detached {
    ($self:ident, $py:ident, |$c:ident| $body:expr) => {
        each!($self.inner()?, $c => $py.detach(|| $body)).or_raise($py)
    };
}

/// A pool's core: block tables, VMs and the data path over a block layer: the local slots, or a
/// block layer written in Python (see API.md).
#[pyclass(frozen, name = "Core", module = "engine._native")]
struct PyCore {
    inner: Mutex<Option<Inner>>,
    /// The Python block layer of a core made by `Core.over`.
    layer: Option<Py<PyAny>>,
}

impl PyCore {
    fn inner(&self) -> PyResult<Inner> {
        self.inner
            .lock()
            .clone()
            .ok_or_else(|| StateError::new_err("the core is closed"))
    }

    /// The local core, for what only a pool's own slots answer (a Python block layer answers
    /// its own views).
    fn local(&self) -> PyResult<Arc<Core>> {
        match self.inner()? {
            Inner::Local(c) => Ok(c),
            Inner::Foreign(_) => Err(StateError::new_err(
                "a core over a Python block layer: ask the block layer",
            )),
        }
    }

    /// Runs `f` on the local core with the GIL released, mapping its error.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Core) -> crate::error::Result<T> + Send,
    ) -> PyResult<T> {
        let core = self.local()?;
        py.detach(|| f(&core)).or_raise(py)
    }
}

fn figures_dict<'py>(py: Python<'py>, f: &Figures) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("mode", f.mode)?;
    d.set_item("seconds", f.seconds)?;
    d.set_item("pages", f.pages)?;
    d.set_item("references", f.references)?;
    d.set_item("blocks", f.blocks)?;
    d.set_item("bytes", f.bytes)?;
    d.set_item("bytes_per_s", f.bytes_per_s)?;
    d.set_item("corrupt_blocks", PyList::new(py, &f.corrupt_blocks)?)?;
    d.set_item("bad_references", f.bad_references)?;
    d.set_item("orphans_reclaimed", f.orphans_reclaimed)?;
    d.set_item("free_slots", f.free_slots)?;
    d.set_item("capacity_slots", f.capacity_slots)?;
    Ok(d)
}

fn page_blob<'py>(py: Python<'py>, page: &[u64]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = page.iter().flat_map(|x| x.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}

#[pymethods]
impl PyCore {
    #[new]
    #[pyo3(signature = (directory, block_size, *, readonly=false, create=false, colliding_fingerprint=None))]
    fn new(
        py: Python<'_>,
        directory: Option<PathBuf>,
        block_size: usize,
        readonly: bool,
        create: bool,
        colliding_fingerprint: Option<[u8; 16]>,
    ) -> PyResult<Self> {
        let fp = colliding_fingerprint.map_or(Fingerprinter::Xxh3, Fingerprinter::Constant);
        let core = py
            .detach(|| Core::open(directory.as_deref(), block_size, readonly, create, fp))
            .or_raise(py)?;
        Ok(PyCore {
            inner: Mutex::new(Some(Inner::Local(Arc::new(core)))),
            layer: None,
        })
    }

    /// A core whose blocks a Python block layer keeps (engine/blocklayer.py's Protocol: a
    /// cluster's ClusterBlocks); the core does the rest, as for a local pool.
    #[staticmethod]
    #[pyo3(signature = (block_layer, block_size, *, readonly=false))]
    fn over(block_layer: Py<PyAny>, block_size: usize, readonly: bool) -> PyResult<Self> {
        if !block_size.is_power_of_two() || !(512..=1 << 20).contains(&block_size) {
            return Err(OutOfRangeError::new_err(format!(
                "bad block size {block_size}: a power of two from 512 B to 1 MiB"
            )));
        }
        let layer = Python::attach(|py| block_layer.clone_ref(py));
        let backend = PyBackend::new(block_layer, block_size);
        let core = Core::over(backend, block_size, readonly, Fingerprinter::Xxh3);
        Ok(PyCore {
            inner: Mutex::new(Some(Inner::Foreign(Arc::new(core)))),
            layer: Some(layer),
        })
    }

    /// Lets go of the slot files once calls in flight finish; every later call raises StateError.
    fn close(&self) {
        self.inner.lock().take();
    }

    #[getter]
    fn block_size(&self) -> PyResult<usize> {
        Ok(each!(self.inner()?, c => c.block_size()))
    }

    #[getter]
    fn readonly(&self) -> PyResult<bool> {
        Ok(each!(self.inner()?, c => c.readonly()))
    }

    /// A rebuild has counted the references: writes are served.
    #[getter]
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        detached!(self, py, |c| Ok(c.state().ready))
    }

    /// The phases `rebuild` reports, in order.
    #[getter]
    fn rebuild_phases<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.layer {
            Some(layer) => Ok(layer.bind(py).getattr("rebuild_phases")?),
            None => Ok(PyTuple::new(py, PHASES)?.into_any()),
        }
    }

    /// What makes writing unsafe, as the last rebuild found it (a truncated or deleted slot
    /// file) or as a read through the maps found it since the open (a page of a slot file that
    /// could not be read), or None; every write and structural edit is refused with it
    /// (FormatError).
    #[getter]
    fn damage(&self, py: Python<'_>) -> PyResult<Option<String>> {
        match self.inner()? {
            Inner::Local(core) => Ok(py.detach(|| core.damage())),
            Inner::Foreign(_) => Ok(None),
        }
    }

    /// Repairs what a truncated or deleted slot file left (run a full rebuild after it):
    /// returns (fingerprints computed from the data, slots referenced past the end of the data
    /// file, now known corrupt). Raises NoSpaceError, OSError, ReadOnlyError.
    fn repair<'py>(&self, py: Python<'py>) -> PyResult<(u64, Bound<'py, PyArray1<u64>>)> {
        let core = self.local()?;
        let (computed, lost) = py.detach(|| core.repair()).or_raise(py)?;
        Ok((computed, u64s(py, lost)))
    }

    /// The pool id stamped in the slot files: (blocks.dat's header, hashes.dat's), 16 bytes
    /// each, zeros where not stamped yet (a pool older than pool ids, a header a repair
    /// rewrote). A local core's only.
    fn slot_owner<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let (data, hashes) = self.local()?.owner();
        Ok((PyBytes::new(py, &data), PyBytes::new(py, &hashes)))
    }

    /// Stamps both slot files with the pool's id (16 bytes; durable at the next sync). Raises
    /// ValueError (not 16 bytes), ReadOnlyError.
    fn stamp_owner(&self, py: Python<'_>, id: &[u8]) -> PyResult<()> {
        let id: crate::slots::PoolId = id
            .try_into()
            .map_err(|_| PyValueError::new_err("a pool id is 16 bytes"))?;
        let core = self.local()?;
        py.detach(|| core.stamp_owner(&id)).or_raise(py)
    }

    /// Slots in the data file, the header included.
    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |c| Ok(c.state().blocks.store.capacity()))
    }

    #[getter]
    fn collisions(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |c| Ok(c.state().blocks.collisions))
    }

    #[setter]
    fn set_collisions(&self, py: Python<'_>, n: u64) -> PyResult<()> {
        self.run(py, |c| {
            c.state_mut().blocks.collisions = n;
            Ok(())
        })
    }

    // -- the layer graph mirror ------------------------------------------------------------

    #[pyo3(signature = (layer, parent, top))]
    fn add_layer(
        &self,
        py: Python<'_>,
        layer: u64,
        parent: Option<u64>,
        top: bool,
    ) -> PyResult<()> {
        detached!(self, py, |c| c
            .state_mut()
            .tables
            .add_layer(layer, parent, top))
    }

    fn set_top(&self, py: Python<'_>, layer: u64, top: bool) -> PyResult<()> {
        detached!(self, py, |c| c.state_mut().tables.set_top(layer, top))
    }

    #[pyo3(signature = (layer, parent))]
    fn set_parent(&self, py: Python<'_>, layer: u64, parent: Option<u64>) -> PyResult<()> {
        detached!(self, py, |c| c.state_mut().tables.set_parent(layer, parent))
    }

    fn drop_layer<'py>(&self, py: Python<'py>, layer: u64) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let addrs = detached!(self, py, |c| c.state_mut().tables.drop_layer(layer))?;
        Ok(u64s(py, addrs))
    }

    fn merge_into_child<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
        child: u64,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let addrs = detached!(self, py, |c| c
            .state_mut()
            .tables
            .merge_into_child(layer, child))?;
        Ok(u64s(py, addrs))
    }

    /// What merging frozen `layer` into its only child makes of the child's pages, without doing
    /// it: ([(page, entries bytes or None), ...] for the pages that change, shadowed addresses).
    #[allow(clippy::type_complexity)]
    fn merged<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
        child: u64,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyArray1<u64>>)> {
        let m = detached!(self, py, |c| c.merged(layer, child))?;
        let pages = PyList::empty(py);
        for (pno, page) in m.pages {
            pages.append((pno, page.map(|p| page_blob(py, &p[..]))))?;
        }
        Ok((pages, u64s(py, m.shadowed)))
    }

    /// What folding top `top` down into its parent `layer` makes of the parent's pages, without
    /// doing it: ([(page, entries bytes or None), ...] for the pages that change, shadowed
    /// addresses).
    #[allow(clippy::type_complexity)]
    fn folded<'py>(
        &self,
        py: Python<'py>,
        top: u64,
        layer: u64,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyArray1<u64>>)> {
        let m = detached!(self, py, |c| c.folded(top, layer))?;
        let pages = PyList::empty(py);
        for (pno, page) in m.pages {
            pages.append((pno, page.map(|p| page_blob(py, &p[..]))))?;
        }
        Ok((pages, u64s(py, m.shadowed)))
    }

    /// Applies a committed structural edit whole (see API.md); returns how many blocks it freed.
    #[pyo3(signature = (*, removed_vms=Vec::new(), drops=Vec::new(), folds=Vec::new(), new_layers=Vec::new(), frozen=Vec::new(), vms=Vec::new()))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn apply_edit(
        &self,
        py: Python<'_>,
        removed_vms: Vec<String>,
        drops: Vec<(u64, Option<u64>)>,
        folds: Vec<(u64, u64)>,
        new_layers: Vec<(u64, Option<u64>)>,
        frozen: Vec<u64>,
        vms: Vec<(String, u64, u64)>,
    ) -> PyResult<u64> {
        let edit = Edit {
            removed_vms,
            drops,
            folds,
            new_layers,
            frozen,
            vms,
        };
        detached!(self, py, |c| c.apply_edit(&edit))
    }

    /// Loads stored pages from an iterable of (layer, page, entries blob); returns how many were
    /// for layers in the graph.
    fn load_pages(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<u64> {
        let inner = self.inner()?;
        let mut loaded = 0u64;
        let mut batch: Vec<(u64, u64, Vec<u8>)> = Vec::with_capacity(1024);
        let flush = |batch: &mut Vec<(u64, u64, Vec<u8>)>| -> PyResult<u64> {
            let rows = std::mem::take(batch);
            each!(&inner, c => py.detach(|| {
                let mut st = c.state_mut();
                let mut n = 0;
                for (layer, pno, blob) in rows {
                    n += st.tables.load_page(layer, pno, &blob)? as u64;
                }
                Ok(n)
            }))
            .or_raise(py)
        };
        for row in rows.try_iter()? {
            let (layer, pno, blob): (u64, u64, Vec<u8>) = row?.extract()?;
            batch.push((layer, pno, blob));
            if batch.len() == 1024 {
                loaded += flush(&mut batch)?;
            }
        }
        loaded += flush(&mut batch)?;
        Ok(loaded)
    }

    // -- pages -------------------------------------------------------------------------------

    /// The visible address of `count` blocks of `layer` from `lbn` (0 reads as zeros).
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
        lbn: u64,
        count: usize,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let out = detached!(self, py, |c| {
            let mut out = vec![0u64; count];
            c.lookup(layer, lbn, &mut out).map(|_| out)
        })?;
        Ok(u64s(py, out))
    }

    /// Writes entries from `lbn` within one page; returns the addresses replaced (the caller
    /// drops their references with `decref`).
    fn set_entries<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
        lbn: u64,
        entries: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let entries = entries.as_slice()?.to_vec();
        let old = detached!(self, py, |c| c
            .state_mut()
            .tables
            .set_entries(layer, lbn, &entries))?;
        Ok(u64s(py, old))
    }

    /// A page's raw entries (INHERIT, ZERO or addresses), or None.
    fn page<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
        page: u64,
    ) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        let p = detached!(self, py, |c| Ok(c
            .state()
            .tables
            .page(layer, page)
            .map(|p| p.to_vec())))?;
        Ok(p.map(|v| u64s(py, v)))
    }

    fn page_numbers(&self, py: Python<'_>, layer: u64) -> PyResult<Vec<u64>> {
        detached!(self, py, |c| Ok(c.state().tables.page_numbers(layer)))
    }

    fn is_empty(&self, py: Python<'_>, layer: u64) -> PyResult<bool> {
        detached!(self, py, |c| Ok(c.state().tables.is_empty(layer)))
    }

    /// Every block address the layer holds, with repeats.
    fn layer_entries<'py>(
        &self,
        py: Python<'py>,
        layer: u64,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let addrs = detached!(self, py, |c| Ok(c.state().tables.layer_entries(layer)))?;
        Ok(u64s(py, addrs))
    }

    /// How many blocks read as data through `layer` (cached for frozen layers).
    fn visible_blocks(&self, py: Python<'_>, layer: u64) -> PyResult<u64> {
        detached!(self, py, |c| c.state().tables.visible_blocks(layer))
    }

    /// Drops one reference from each address; a block left with none waits for the next commit.
    fn decref(&self, py: Python<'_>, addrs: PyReadonlyArray1<'_, u64>) -> PyResult<()> {
        let addrs = addrs.as_slice()?.to_vec();
        match self.inner()? {
            Inner::Local(c) => py.detach(|| {
                let mut st = c.state_mut();
                let mut wanted: HashMap<u64, u64> = HashMap::new();
                for &a in &addrs {
                    *wanted.entry(a).or_default() += 1;
                }
                // Checked whole first: a bad address changes nothing.
                if let Some((&bad, _)) = wanted
                    .iter()
                    .find(|(&a, &n)| a == 0 || st.blocks.refcount(a) < n)
                {
                    return Err(Error::State(format!(
                        "decref of slot {bad}, which holds fewer references than that"
                    )));
                }
                st.blocks.decref(&addrs)
            }),
            Inner::Foreign(c) => py.detach(|| c.state_mut().blocks.decref(&addrs)),
        }
        .or_raise(py)
    }

    // -- VMs and the data path -------------------------------------------------------------

    fn set_vm(&self, py: Python<'_>, name: &str, top: u64, size: u64) -> PyResult<()> {
        detached!(self, py, |c| c.set_vm(name, top, size))
    }

    fn remove_vm(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        detached!(self, py, |c| c.remove_vm(name))
    }

    fn write(
        &self,
        py: Python<'_>,
        name: &str,
        offset: u64,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let data = Bytes::get(data)?;
        detached!(self, py, |c| c.write(name, offset, data.slice()))
    }

    fn trim(&self, py: Python<'_>, name: &str, offset: u64, length: u64) -> PyResult<()> {
        detached!(self, py, |c| c.trim(name, offset, length))
    }

    /// Trims what the VM's chain holds past its end (Core::cut_past_end).
    fn cut_past_end(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        detached!(self, py, |c| c.cut_past_end(name))
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        offset: u64,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner()?;
        let bytes = uninit_bytes(py, length)?;
        // SAFETY: a fresh bytes object nobody else sees yet; a read that succeeds writes every
        // byte of it, and one that fails drops it unseen.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                pyo3::ffi::PyBytes_AsString(bytes.as_ptr()) as *mut u8,
                length,
            )
        };
        each!(&inner, c => py.detach(|| c.read_into(name, offset, out))).or_raise(py)?;
        Ok(bytes)
    }

    /// Reads len(buffer) bytes at `offset` into a writable buffer (bytearray, memoryview, numpy).
    fn read_into(
        &self,
        py: Python<'_>,
        name: &str,
        offset: u64,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let out = Bytes::writable(buffer)?;
        detached!(self, py, |c| c.read_into(name, offset, out.slice_mut()))
    }

    /// Runs of (length, zero) covering the range, for NBD block status.
    fn extents(
        &self,
        py: Python<'_>,
        name: &str,
        offset: u64,
        length: u64,
    ) -> PyResult<Vec<(u64, bool)>> {
        let runs = detached!(self, py, |c| c.extents(name, offset, length, usize::MAX))?;
        Ok(runs.into_iter().map(|e| (e.length, e.zero)).collect())
    }

    /// The first LBN at or after `lbn` of VM `name` that reads from a block (None: none does, to
    /// the end): a walk that skips holes in time proportional to the pages the VM's layers hold.
    fn next_mapped(&self, py: Python<'_>, name: &str, lbn: u64) -> PyResult<Option<u64>> {
        detached!(self, py, |c| c.next_mapped(name, lbn))
    }

    /// Stops new data ops and waits for those in flight (a structural edit follows).
    fn close_gate(&self, py: Python<'_>) -> PyResult<()> {
        detached!(self, py, |c| {
            c.gate().close();
            Ok(())
        })
    }

    fn open_gate(&self, py: Python<'_>) -> PyResult<()> {
        detached!(self, py, |c| {
            c.gate().open();
            Ok(())
        })
    }

    // -- commits -----------------------------------------------------------------------------

    /// (token, [(layer, page, entries bytes or None for a deleted page), ...], frees): the dirty
    /// pages of every layer not in `exclude`, with the pending frees sealed (`frees`: there were
    /// some, so the commit has work even with no page).
    #[pyo3(signature = (exclude=Vec::new()))]
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        exclude: Vec<u64>,
    ) -> PyResult<(u64, Bound<'py, PyList>, bool)> {
        let exclude: HashSet<u64> = exclude.into_iter().collect();
        let snap = detached!(self, py, |c| c.snapshot(&exclude))?;
        let rows = PyList::empty(py);
        for p in snap.pages {
            let blob = p.entries.map(|e| page_blob(py, &e[..]));
            rows.append((p.layer, p.page, blob))?;
        }
        Ok((snap.token, rows, snap.frees))
    }

    /// Makes every stored block durable (fdatasync of the slot files, or the block layer's
    /// `sync`); data ops go on meanwhile.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        detached!(self, py, |c| c.sync())
    }

    /// The snapshot is committed; returns how many slots were released.
    fn end(&self, py: Python<'_>, token: u64) -> PyResult<u64> {
        detached!(self, py, |c| c.end(token))
    }

    fn abort(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        detached!(self, py, |c| c.abort(token))
    }

    // -- rebuild and checks ------------------------------------------------------------------

    /// Rebuilds the block layer's RAM metadata from the pages in RAM; returns its figures (a
    /// Python block layer's rebuild, handed every reference, returns its own).
    #[pyo3(signature = (*, full=false, reclaim=true, progress=None, cancel=None))]
    fn rebuild(
        &self,
        py: Python<'_>,
        full: bool,
        reclaim: bool,
        progress: Option<Py<PyAny>>,
        cancel: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.inner()? {
            Inner::Local(core) => {
                let mut sink = PySink::new(progress, cancel, "rebuild");
                let result =
                    py.detach(|| core.rebuild(full, reclaim, &mut |r: &Report| sink.call(r)));
                let figures = sink.finish(py, result)?;
                Ok(figures_dict(py, &figures)?.into_any().unbind())
            }
            Inner::Foreign(core) => {
                let layer = self.layer.as_ref().expect("a foreign core has its layer");
                py.detach(|| {
                    core.rebuild_with(|refs, pages| {
                        Python::attach(|py| {
                            let kw = PyDict::new(py);
                            kw.set_item("pages", pages)?;
                            kw.set_item("full", full)?;
                            kw.set_item("reclaim", reclaim)?;
                            kw.set_item("progress", progress)?;
                            kw.set_item("cancel", cancel)?;
                            let refs = PyArray1::from_vec(py, refs);
                            layer.call_method(py, "rebuild", (refs,), Some(&kw))
                        })
                        .map_err(Error::Python)
                    })
                })
                .or_raise(py)
            }
        }
    }

    /// fsck's checks of the block layer over one consistent state (writes wait meanwhile): a
    /// local core's reference, refcount and space checks and the re-hash of every live slot, or
    /// a Python block layer's `fsck(references, progress)`. A list of problem dicts, each with
    /// kind, message and pbn.
    #[pyo3(signature = (*, progress=None, cancel=None))]
    fn fsck(
        &self,
        py: Python<'_>,
        progress: Option<Py<PyAny>>,
        cancel: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.inner()? {
            Inner::Local(core) => {
                let mut sink = PySink::new(progress, cancel, "fsck");
                let result = py.detach(|| {
                    let st = core.state();
                    let mut problems = check::check(&st);
                    let live = st.blocks.live_slots();
                    let bad = check::rehash(&st, &live, &mut |r: &Report| sink.call(r))?;
                    problems.extend(check::corrupt_problems(&bad));
                    Ok(problems)
                });
                let problems = sink.finish(py, result)?;
                Ok(problems_list(py, &problems)?.into_any().unbind())
            }
            Inner::Foreign(core) => {
                let layer = self.layer.as_ref().expect("a foreign core has its layer");
                py.detach(|| {
                    core.with_references(|refs| {
                        Python::attach(|py| {
                            let kw = PyDict::new(py);
                            kw.set_item("progress", progress)?;
                            let refs = PyArray1::from_slice(py, refs);
                            layer.call_method(py, "fsck", (refs,), Some(&kw))
                        })
                        .map_err(Error::Python)
                    })
                })
                .or_raise(py)
            }
        }
    }

    /// The reference, refcount and space checks: a list of {"kind", "message", "pbn"}.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let problems = self.run(py, |c| Ok(check::check(&c.state())))?;
        problems_list(py, &problems)
    }

    /// Re-hashes the given slots (all live ones if None); returns those that no longer match
    /// their fingerprint (now known corrupt). Progress phase "fsck"; cancellable.
    #[pyo3(signature = (slots=None, *, progress=None, cancel=None))]
    fn rehash<'py>(
        &self,
        py: Python<'py>,
        slots: Option<PyReadonlyArray1<'py, u64>>,
        progress: Option<Py<PyAny>>,
        cancel: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let slots = match slots {
            Some(s) => Some(s.as_slice()?.to_vec()),
            None => None,
        };
        let core = self.local()?;
        let mut sink = PySink::new(progress, cancel, "rehash");
        let result = py.detach(|| {
            let st = core.state();
            let slots = slots.unwrap_or_else(|| st.blocks.live_slots());
            check::rehash(&st, &slots, &mut |r: &Report| sink.call(r))
        });
        Ok(u64s(py, sink.finish(py, result)?))
    }

    /// A scrub's step: verifies up to `limit` live slots above `after`; returns (the last slot
    /// checked or 0 when none was left, how many, those found rotten).
    fn scrub<'py>(
        &self,
        py: Python<'py>,
        after: u64,
        limit: usize,
    ) -> PyResult<(u64, usize, Bound<'py, PyArray1<u64>>)> {
        let (last, n, bad) = self.run(py, |c| c.scrub(after, limit))?;
        Ok((last, n, u64s(py, bad)))
    }

    // -- a local pool's views ----------------------------------------------------------------

    /// Live slots, ascending.
    fn live<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(u64s(
            py,
            self.run(py, |c| Ok(c.state().blocks.live_slots()))?,
        ))
    }

    /// (how many slots are live, `limit` of them from the `offset`-th on, ascending).
    fn live_page<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        limit: usize,
    ) -> PyResult<(u64, Bound<'py, PyArray1<u64>>)> {
        let (total, page) = self.run(py, |c| Ok(c.state().blocks.live_page(offset, limit)))?;
        Ok((total, u64s(py, page)))
    }

    fn refcounts_of<'py>(
        &self,
        py: Python<'py>,
        addrs: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let addrs = addrs.as_slice()?.to_vec();
        let out = self.run(py, |c| {
            let st = c.state();
            Ok(addrs.iter().map(|&a| st.blocks.refcount(a)).collect())
        })?;
        Ok(u64s(py, out))
    }

    /// Which of n fingerprints (n × 16 bytes, canonical digests) a live, sound block of this
    /// pool has: n bytes, each 1 or 0. Read-only, one call per batch, the GIL released (a dedup
    /// estimate). A core over a Python block layer refuses.
    fn known<'py>(
        &self,
        py: Python<'py>,
        digests: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = Bytes::get(digests)?;
        if data.len % 16 != 0 {
            return Err(OutOfRangeError::new_err(format!(
                "{} bytes are not a whole number of 16-byte fingerprints",
                data.len
            )));
        }
        let digests: Vec<fingerprint::Digest> = data
            .slice()
            .chunks_exact(16)
            .map(|c| c.try_into().unwrap())
            .collect();
        let found = self.run(py, |c| Ok(c.state().blocks.known(&digests)))?;
        Ok(PyBytes::new(py, &found))
    }

    /// The stored fingerprints of the addresses, as an n × 2 uint64 array (the hashes.dat words).
    fn fingerprints_of<'py>(
        &self,
        py: Python<'py>,
        addrs: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let addrs = addrs.as_slice()?.to_vec();
        let words = self.run(py, |c| {
            let st = c.state();
            let capacity = st.blocks.store.capacity();
            if let Some(&bad) = addrs.iter().find(|&&a| a >= capacity) {
                return Err(Error::OutOfRange(format!(
                    "slot {bad} is past the end of the data file"
                )));
            }
            Ok(addrs
                .iter()
                .flat_map(|&a| {
                    let d = st.blocks.store.digest(a);
                    [
                        u64::from_le_bytes(d[..8].try_into().unwrap()),
                        u64::from_le_bytes(d[8..].try_into().unwrap()),
                    ]
                })
                .collect::<Vec<u64>>())
        })?;
        let n = addrs.len();
        Ok(u64s(py, words).reshape([n, 2])?.into_any())
    }

    /// Figures for stats: unique_blocks, free_slots, hollow_slots (free slots whose space went
    /// back to the filesystem), waiting_slots, capacity_bytes (of the data file), disk_room_bytes
    /// (what the slot files may still take on their filesystem, the slop and the catalog's room
    /// left; None in RAM),
    /// collisions, corrupt_blocks, refcount_histogram, metadata_ram_bytes,
    /// metadata_ram_bytes_per_block.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.run(py, |c| {
            let st = c.state();
            let b = &st.blocks;
            let corrupt = b.corrupt.read().len();
            Ok((
                b.unique_blocks(),
                (b.space.free_count(), b.space.hollow_count()),
                b.space.waiting_count(),
                (
                    b.store.capacity() * b.block_size() as u64,
                    b.store.disk_room(catalog_bytes(&st.tables, 0))?,
                ),
                b.collisions,
                corrupt,
                b.refcount_histogram(),
                b.metadata_bytes(),
            ))
        })?;
        let d = PyDict::new(py);
        d.set_item("unique_blocks", s.0)?;
        d.set_item("free_slots", s.1 .0)?;
        d.set_item("hollow_slots", s.1 .1)?;
        d.set_item("waiting_slots", s.2)?;
        d.set_item("capacity_bytes", s.3 .0)?;
        d.set_item("disk_room_bytes", s.3 .1)?;
        d.set_item("collisions", s.4)?;
        d.set_item("corrupt_blocks", s.5)?;
        let hist = PyDict::new(py);
        for (label, n) in s.6 {
            hist.set_item(label, n)?;
        }
        d.set_item("refcount_histogram", hist)?;
        d.set_item("metadata_ram_bytes", s.7)?;
        let per = if s.0 > 0 {
            (s.7 as f64 / s.0 as f64 * 100.0).round() / 100.0
        } else {
            0.0
        };
        d.set_item("metadata_ram_bytes_per_block", per)?;
        Ok(d)
    }

    /// Known-corrupt slots, ascending.
    #[getter]
    fn corrupt<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(u64s(py, self.run(py, |c| Ok(c.corrupt_slots()))?))
    }

    /// Remembers slots as corrupt (e.g. restored from the catalog at open).
    fn mark_corrupt(&self, py: Python<'_>, slots: PyReadonlyArray1<'_, u64>) -> PyResult<()> {
        let slots = slots.as_slice()?.to_vec();
        self.run(py, |c| {
            c.mark_corrupt(&slots);
            Ok(())
        })
    }

    /// Bytes of RAM for index, refcounts and free space.
    fn metadata_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |c| Ok(c.state().blocks.metadata_bytes()))
    }

    // -- views of the tables -----------------------------------------------------------------

    /// The names of the VMs that read block `addr`, sorted.
    fn vms_reading(&self, py: Python<'_>, addr: u64) -> PyResult<Vec<String>> {
        detached!(self, py, |c| Ok(c.vms_reading(addr)))
    }

    /// How many VMs read each of `addrs` (as `vms_reading` counts them; 0: not referenced).
    fn readers_of<'py>(
        &self,
        py: Python<'py>,
        addrs: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let addrs = addrs.as_slice()?.to_vec();
        Ok(u64s(py, detached!(self, py, |c| Ok(c.readers_of(&addrs)))?))
    }

    /// Where block `addr` is referenced: [(layer, LBN), ...].
    fn references(&self, py: Python<'_>, addr: u64) -> PyResult<Vec<(u64, u64)>> {
        detached!(self, py, |c| Ok(c.references(addr)))
    }

    /// How many pages are dirty (waiting for a commit).
    fn dirty_pages(&self, py: Python<'_>) -> PyResult<usize> {
        detached!(self, py, |c| Ok(c.state().tables.dirty_count()))
    }
}

fn problems_list<'py>(
    py: Python<'py>,
    problems: &[check::Problem],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for p in problems {
        let d = PyDict::new(py);
        d.set_item("kind", p.kind)?;
        d.set_item("message", &p.message)?;
        d.set_item("pbn", p.pbn)?;
        list.append(d)?;
    }
    Ok(list)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(fingerprints, m)?)?;
    m.add_function(wrap_pyfunction!(repair_header, m)?)?;
    m.add_class::<PyCore>()?;
    m.add_class::<PyMeter>()?;
    m.add_class::<PyTransmission>()?;
    m.add("PAGE_ENTRIES", PAGE_ENTRIES)?;
    m.add("INHERIT", INHERIT)?;
    m.add("ZERO", ZERO)?;
    for (name, cls) in [
        ("NativeError", py.get_type::<NativeError>()),
        ("OutOfRangeError", py.get_type::<OutOfRangeError>()),
        ("UnknownVMError", py.get_type::<UnknownVMError>()),
        ("NoSpaceError", py.get_type::<NoSpaceError>()),
        ("CorruptError", py.get_type::<CorruptError>()),
        ("ReadOnlyError", py.get_type::<ReadOnlyError>()),
        ("FormatError", py.get_type::<FormatError>()),
        ("StateError", py.get_type::<StateError>()),
        ("CancelledError", py.get_type::<CancelledError>()),
    ] {
        m.add(name, cls)?;
    }
    Ok(())
}

// -- the NBD export ---------------------------------------------------------------------------

/// What only the engine does for an NBD connection, through a Python object with `flush()`,
/// `failure(exception) -> (nbd_error, message)` and `log(message)`; each called with the GIL.
struct PyHost(Py<PyAny>);

impl PyHost {
    fn failure_of(&self, py: Python<'_>, e: PyErr) -> Failure {
        let told = self
            .0
            .bind(py)
            .call_method1("failure", (e.value(py),))
            .and_then(|r| r.extract::<(u32, String)>());
        told.map(|(error, message)| Failure { error, message })
            .unwrap_or_else(|e| {
                self.log_with(
                    py,
                    &format!("internal error: the failure handler raised {e}"),
                );
                Failure {
                    error: nbd::EIO,
                    message: "internal error (logged by the server)".into(),
                }
            })
    }

    fn log_with(&self, py: Python<'_>, message: &str) {
        if let Err(e) = self.0.bind(py).call_method1("log", (message,)) {
            e.write_unraisable(py, None);
        }
    }
}

impl Host for PyHost {
    fn flush(&self) -> Result<(), Failure> {
        Python::attach(|py| match self.0.bind(py).call_method0("flush") {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failure_of(py, e)),
        })
    }

    fn failure(&self, error: Error) -> Failure {
        Python::attach(|py| {
            let e = to_py(py, error);
            self.failure_of(py, e)
        })
    }

    fn log(&self, message: &str) {
        Python::attach(|py| self.log_with(py, message));
    }
}

/// What the NBD export serves, counted as it goes (read at a scrape): requests and bytes per
/// VM, a latency histogram per kind of request (buckets up to each of `buckets` seconds).
#[pyclass(frozen, name = "Meter", module = "engine._native")]
struct PyMeter(Arc<Meter>);

#[pymethods]
impl PyMeter {
    #[new]
    fn new(buckets: Vec<f64>) -> Self {
        PyMeter(Arc::new(Meter::new(&buckets)))
    }

    /// [(vm, reads, writes, trims, read_bytes, written_bytes)] of every VM served so far.
    fn vms(&self) -> Vec<(String, u64, u64, u64, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.0
            .vms()
            .into_iter()
            .map(|(name, c)| {
                let [r, w, t] = [0, 1, 2].map(|i| c.requests[i].load(Relaxed));
                (
                    name,
                    r,
                    w,
                    t,
                    c.read_bytes.load(Relaxed),
                    c.written_bytes.load(Relaxed),
                )
            })
            .collect()
    }

    /// [(op, [count per bucket, the last above every bound], count, sum of seconds)] for
    /// read, write, trim and flush.
    fn latency(&self) -> Vec<(&'static str, Vec<u64>, u64, f64)> {
        meter::OPS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let (buckets, count, sum) = self.0.latency(i).read();
                (*op, buckets, count, sum)
            })
            .collect()
    }

    /// How many writes, trims and rotten blocks found the export has seen.
    #[getter]
    fn changes(&self) -> u64 {
        self.0.changes()
    }
}

/// One NBD connection in its transmission phase, served by a thread of its own without the GIL
/// (native/src/nbd.rs). The socket `fd` (blocking, connected) is the connection's from the
/// moment this returns: it sends `greeting` first, then serves until NBD_CMD_DISC or the end of
/// input, and closes it. `host`: see PyHost. RuntimeError if no thread can be started (the
/// socket stays the caller's).
#[pyclass(frozen, name = "Transmission", module = "engine._native")]
struct PyTransmission(Arc<Connection>);

#[pymethods]
impl PyTransmission {
    #[new]
    #[pyo3(signature = (core, fd, greeting, name, size, *, structured, context, read_only, peer, host, meter))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        core: &PyCore,
        fd: i32,
        greeting: Vec<u8>,
        name: String,
        size: u64,
        structured: bool,
        context: u32,
        read_only: bool,
        peer: String,
        host: Py<PyAny>,
        meter: &PyMeter,
    ) -> PyResult<Self> {
        let inner = core.inner()?;
        let export = Export {
            name,
            size,
            block_size: each!(&inner, c => c.block_size()) as u64,
            structured,
            context,
            read_only,
            peer,
        };
        let meter = meter.0.clone();
        let host = PyHost(host);
        let started = match inner {
            Inner::Local(c) => nbd::serve(fd, greeting, c, export, host, meter),
            Inner::Foreign(c) => nbd::serve(fd, greeting, c, export, host, meter),
        };
        started
            .map(PyTransmission)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))
    }

    /// Stop taking requests; those already received are still answered.
    fn stop(&self) {
        self.0.stop();
    }

    /// Drop the connection now, as if its network failed.
    fn abort(&self) {
        self.0.abort();
    }

    /// Waits (without the GIL) until the connection is closed, at most `timeout` seconds;
    /// whether it is.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        let timeout = timeout.map(|t| std::time::Duration::from_secs_f64(t.max(0.0)));
        py.detach(|| self.0.join(timeout))
    }

    /// The connection is closed.
    #[getter]
    fn done(&self) -> bool {
        self.0.done()
    }
}
