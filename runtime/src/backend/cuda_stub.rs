//! The CUDA backend of a build without the `cuda` feature: it cannot be constructed, and says
//! why. Rebuild with `--features cuda` for the real one.

use super::BackendSizes;
use crate::error::{Error, Result};
use crate::kv::{KvGroups, KvLayout};
use crate::model::{BatchToken, BlockTables, Model, Scratch};

/// Uninhabited: a stub backend never exists.
#[derive(Debug)]
enum Never {}

/// The CUDA backend (stub: this build has no CUDA support).
#[derive(Debug)]
pub struct CudaBackend(Never);

impl CudaBackend {
    pub(crate) fn new(_model: &Model, _z: BackendSizes, _groups: &KvGroups) -> Result<CudaBackend> {
        Err(Error::Backend(
            "built without CUDA (rebuild with `--features cuda`)".into(),
        ))
    }

    pub(crate) fn describe(&self) -> String {
        match self.0 {}
    }

    pub(crate) fn arena_bytes(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn n_blocks(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn layout(&self) -> KvLayout {
        match self.0 {}
    }

    pub(crate) fn forward(
        &mut self,
        _model: &Model,
        _batch: &[BatchToken],
        _tables: &(impl BlockTables + ?Sized),
        _scratch: &mut Scratch,
    ) -> Result<usize> {
        match self.0 {}
    }

    pub(crate) fn copy_slots(&mut self, _src: usize, _dst: usize, _n_slots: usize) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn shift_keys(&mut self, _block: usize, _delta: usize, _swa: &[bool]) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn read_block(&self, _b: usize, _k: &mut [u8], _v: &mut [u8]) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn write_block(&mut self, _b: usize, _k: &[u8], _v: &[u8]) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn graph_count(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn set_graph(&mut self, _on: bool) {
        match self.0 {}
    }
}

/// Whether this build can use a CUDA driver: never, without the `cuda` feature.
pub fn driver_present() -> bool {
    false
}
