//! HelixFlow's inference engine: Llama-family models on pluggable compute backends.
//!
//! Layers, bottom up: [`dtype`] and [`config`] (what a checkpoint is), [`weights`] (reading it),
//! [`backend`] (the kernels: CPU reference, later CUDA and ROCm), [`model`] (the decoder forward
//! pass), [`kv_cache`] (paged block bookkeeping), [`sampler`] (turning logits into tokens),
//! [`tokenizer`] (text in and out, chat templates) and [`engine`] (continuous batching).
//! This crate knows nothing of tokio, networking or actors: the node drives it from its own thread.

pub mod backend;
pub mod config;
pub mod dtype;
pub mod engine;
pub mod gen_model;
pub mod kv_cache;
pub mod model;
pub mod sampler;
pub mod tokenizer;
pub mod weights;
