//! One module per subcommand.

pub mod bench_engine;
pub mod gen_model;
pub mod keys;
pub mod node;
pub mod run;
pub mod up;
