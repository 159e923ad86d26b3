//! Errors of the CUDA backend: every failure is an `Error::Backend` naming what failed.

use crate::error::Error;

pub(crate) fn backend_err(what: impl Into<String>) -> Error {
    Error::Backend(what.into())
}

pub(crate) fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Backend(format!("{what}: {e}"))
}
