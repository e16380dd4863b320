//! A block layer written in Python as the core's backend: a cluster's ClusterBlocks, which keeps
//! each block on R nodes (engine/blocklayer.py declares the Protocol it implements).
//!
//! The core calls a backend with its lock held; each call here then takes the GIL. That order
//! (core lock, then GIL) is the only one: every Python entry point into the core releases the GIL
//! before it waits for the lock (python.rs), and a block layer never calls back into the core.
//! So a cluster's write holds the core's lock while its blocks travel to the nodes, and the GIL
//! only while Python runs (its network waits release it).
//!
//! Read verification is the layer's own: it hashes every copy it fetches and asks another
//! replica when one is rotten (engine/cluster/reads.py); what it returns is served as is.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::sync::Arc;

use crate::backend::{Backend, ReadFault, Syncer};
use crate::error::{Error, Result};
use crate::fingerprint::Digest;

pub struct PyBackend {
    layer: Py<PyAny>,
    block_size: usize,
}

impl PyBackend {
    pub fn new(layer: Py<PyAny>, block_size: usize) -> Self {
        PyBackend { layer, block_size }
    }
}

/// Runs `f` with the GIL; a Python exception becomes `Error::Python`, handed back as is.
fn python<T>(f: impl FnOnce(Python<'_>) -> PyResult<T>) -> Result<T> {
    Python::attach(f).map_err(Error::Python)
}

impl Backend for PyBackend {
    /// `store_blocks(blocks: uint8[n, block_size], digests: uint64[n, 2]) -> uint64[n]`: the
    /// digests as the canonical bytes viewed as native words, as engine.fingerprint gives them.
    fn store(&mut self, blocks: &[&[u8]], digests: &[Digest]) -> Result<Vec<u64>> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let n = blocks.len();
        let data: Vec<u8> = blocks.concat();
        let words: Vec<u64> = digests
            .iter()
            .flat_map(|d| {
                [
                    u64::from_ne_bytes(d[..8].try_into().unwrap()),
                    u64::from_ne_bytes(d[8..].try_into().unwrap()),
                ]
            })
            .collect();
        let bs = self.block_size;
        python(|py| {
            let data = PyArray1::from_vec(py, data).reshape([n, bs])?;
            let words = PyArray1::from_vec(py, words).reshape([n, 2])?;
            let ids = self.layer.call_method1(py, "store_blocks", (data, words))?;
            let ids = ids.extract::<PyReadonlyArray1<u64>>(py)?;
            Ok(ids.as_array().to_vec())
        })
    }

    fn decref(&mut self, addrs: &[u64]) -> Result<()> {
        if addrs.is_empty() {
            return Ok(());
        }
        python(|py| {
            self.layer
                .call_method1(py, "decref", (PyArray1::from_slice(py, addrs),))?;
            Ok(())
        })
    }

    /// `gather(addrs: uint64[n]) -> uint8[n, block_size]`, each copy already checked.
    fn read(&self, pieces: &mut [(u64, &mut [u8])]) -> std::result::Result<(), ReadFault> {
        let addrs: Vec<u64> = pieces.iter().map(|p| p.0).collect();
        python(|py| {
            let got = self
                .layer
                .call_method1(py, "gather", (PyArray1::from_vec(py, addrs),))?;
            let got = got.extract::<PyReadonlyArray2<u8>>(py)?;
            if got.shape() != [pieces.len(), self.block_size] {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "gather returned {:?} bytes, not {} blocks",
                    got.shape(),
                    pieces.len()
                )));
            }
            let rows = got.as_array();
            for ((_, dst), row) in pieces.iter_mut().zip(rows.outer_iter()) {
                match row.as_slice() {
                    Some(s) => dst.copy_from_slice(s),
                    None => dst.iter_mut().zip(row.iter()).for_each(|(d, s)| *d = *s),
                }
            }
            Ok(())
        })
        .map_err(ReadFault::Failed)
    }

    fn seal(&mut self) -> Result<(u64, bool)> {
        python(|py| {
            let any: bool = self.layer.getattr(py, "has_pending")?.extract(py)?;
            let epoch: u64 = self.layer.call_method0(py, "seal")?.extract(py)?;
            Ok((epoch, any))
        })
    }

    fn release(&mut self, epoch: u64) -> Result<u64> {
        python(|py| {
            self.layer.call_method1(py, "release", (epoch,))?;
            Ok(0)
        })
    }

    fn unseal(&mut self, epoch: u64) -> Result<()> {
        python(|py| {
            self.layer.call_method1(py, "unseal", (epoch,))?;
            Ok(())
        })
    }

    fn syncer(&self) -> Syncer {
        let layer = Python::attach(|py| self.layer.clone_ref(py));
        Arc::new(move || {
            python(|py| {
                layer.call_method0(py, "sync")?;
                Ok(())
            })
        })
    }
}
