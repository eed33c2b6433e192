//! One module per subcommand.

pub mod bench_engine;
pub mod gen_model;
pub mod run;
