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
//!
//! # Quick start
//!
//! Load a model, generate with a [`Session`] (one sequence), then serve two requests at once
//! with an [`Engine`] (continuous batching over one paged KV arena). A real model is
//! `Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf")?` (`scripts/fetch-model.sh` fetches
//! it); this example writes a tiny synthetic one in memory so that it runs anywhere.
//!
//! ```
//! use ember::gguf::GgufFile;
//! use ember::synth::{synth_gguf, SynthSpec};
//! use ember::{
//!     Engine, EngineConfig, FinishReason, KvBudget, Model, RequestParams, Session, SessionConfig,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tiny = || -> Result<Model, Box<dyn std::error::Error>> {
//!     let bytes = synth_gguf(&SynthSpec::default())?.to_bytes()?;
//!     Ok(Model::from_gguf(GgufFile::from_bytes(bytes)?)?)
//! };
//!
//! // One sequence: the CLI's `ember generate`. Greedy by default.
//! let cfg = SessionConfig { n_ctx: 128, threads: 1, ..SessionConfig::default() };
//! let mut session = Session::new(tiny()?, &cfg)?;
//! let params = RequestParams { max_tokens: 8, ignore_eos: true, ..RequestParams::default() };
//! let (prompt_ids, out) = session.generate_text("Once upon a time", &params, |piece| {
//!     print!("{piece}"); // streamed as complete UTF-8 pieces
//! })?;
//! assert_eq!(out.ids.len(), 8);
//! assert!(!prompt_ids.is_empty());
//!
//! // Many requests: submit, step until done, read each output.
//! let cfg = EngineConfig {
//!     n_ctx: 128,
//!     kv_budget: KvBudget::Blocks(32), // the arena, allocated once (blocks of 16 tokens)
//!     max_seqs: 4,
//!     threads: 1,
//!     ..EngineConfig::default()
//! };
//! let mut engine = Engine::new(tiny()?, cfg)?;
//! let a = engine.submit_text("The capital of France is", &params)?;
//! let b = engine.submit_text("Once upon a time", &params)?;
//! while engine.has_work() {
//!     engine.step()?; // one batched forward pass over both sequences
//! }
//! for id in [a, b] {
//!     let out = engine.output(id)?.next().expect("one sequence per request");
//!     assert_eq!((out.ids.len(), out.finish), (8, Some(FinishReason::Length)));
//!     println!("{:?} ({} prompt tokens)", out.text, out.n_prompt);
//!     engine.release(id)?; // its id is invalid from now on
//! }
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod compute;
pub mod convert;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod grammar;
pub mod kv;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod session;
pub mod stop;
pub mod synth;
pub mod threadpool;
pub mod tokenizer;
mod zeroed;

pub use backend::BackendKind;
pub use engine::{
    Engine, EngineConfig, FinishReason, KvBudget, PromptCacheLoad, RequestId, RequestParams,
    SeqOutput,
};
pub use error::{Error, Result};
pub use model::Model;
pub use sampler::SamplingParams;
pub use session::{Conversation, Session, SessionConfig};
pub use tokenizer::Tokenizer;
