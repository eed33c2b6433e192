//! One module per subcommand.

pub mod admin;
pub mod bench_engine;
pub mod certs;
pub mod gen_model;
pub mod keys;
pub mod node;
pub mod run;
pub mod up;
