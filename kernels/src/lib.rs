//! Ember compute kernels.
//!
//! `reference/` is the scalar specification of every kernel and is always compiled; ISA kernels
//! (AVX2, NEON) and the CUDA backend are later added beside it and tested against it.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod dispatch;
pub mod kv;
pub mod reference;
pub mod tile;
pub mod traits;
pub mod types;
pub use types::{supported_names, GgmlType, SUPPORTED};

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod x86_64;

#[cfg(all(feature = "simd", target_arch = "aarch64"))]
mod aarch64;
