//! Ember: an embedded LLM inference runtime.
//!
//! Loads llama-family and Gemma 3 GGUF models (memory-mapped, never copied), keeps the KV cache
//! in a paged block arena allocated once at start-up, and generates text on the CPU or a CUDA
//! GPU.
//!
//! Layering (ARCHITECTURE.md at the repository root says the rule at each boundary): [`gguf`]
//! parses files; [`model`] knows the architectures and holds the one forward pass, written
//! against the [`model::Executor`] trait; [`backend`] implements that trait on the CPU (worker
//! threads of [`compute`] over the kernel tables of `ember-kernels`) and on CUDA; [`kv`] is the
//! paged KV cache; [`engine`] is the only driver (generation and scoring requests,
//! continuous batching); [`tokenizer`], [`sampler`], [`stop`] and [`chat`] turn text into tokens
//! and back; [`session`] is a convenience over an engine with one sequence.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod compute;
pub mod convert;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod session;
pub mod stop;
pub mod synth;
pub mod threadpool;
pub mod tokenizer;

pub use error::{Error, Result};
