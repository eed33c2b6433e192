//! Where the `helixflow` binary under test is. The harness runs it; it never builds it.

use std::path::PathBuf;

use crate::env;

/// `HELIXFLOW_BIN`, else `target/<profile>/helixflow` next to the test executable (which runs
/// from `target/<profile>/deps/`).
///
/// # Panics
/// When the binary is not there, saying how to build it.
pub fn helixflow_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(env::BINARY) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{}={} is not a file: point it at a built helixflow binary",
            env::BINARY,
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(format!("helixflow{}", std::env::consts::EXE_SUFFIX)))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no helixflow binary at {}: build it with `cargo build -p helixflow-node` (same \
                 profile as the tests), or set {} to its path",
                candidates[candidates.len() - 1].display(),
                env::BINARY
            )
        })
}
