//! The official OpenAI Python SDK as the client of a real node (`tests/python/test_openai_sdk.py`),
//! and every response shape checked against OpenAI's OpenAPI description
//! (`tests/python/check_openapi.py`, `tests/openai-openapi/openapi.yaml`). Both run in a virtual
//! environment (`target/openai-venv`, made here on first use with pinned packages from PyPI;
//! `.ci/run` makes it up front).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{KEY, Node, config, fixture_dir};

/// What the tests install, pinned: the SDK, and the schema validator for the conformance check.
const PACKAGES: [&str; 3] = ["openai==3.54.0", "jsonschema==4.26.0", "pyyaml==6.0.3"];

/// The virtual environment's python, made once per test binary: both tests ask for it at the
/// same time, and two `python3 -m venv` runs into one directory fail ("File exists").
fn venv() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("HELIXFLOW_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/openai-venv"));
    let python = dir.join("bin/python");
    let has_sdk = python.is_file()
        && Command::new(&python)
            .args(["-c", "import openai, jsonschema, yaml"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_sdk {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 is needed for the OpenAI SDK test");
        assert!(status.success(), "python3 -m venv {}", dir.display());
        let status = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(PACKAGES)
            .status()
            .unwrap();
        assert!(status.success(), "pip install {PACKAGES:?}");
    }
    python
}

#[test]
fn the_official_openai_python_sdk_works_against_a_node() {
    let python = venv();
    let node = Node::start(&config("", ""));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/test_openai_sdk.py");
    let output = Command::new(python)
        .arg(script)
        .env("HF_BASE_URL", &node.url)
        .env("HF_KEY", KEY)
        .env("HF_REFERENCE", fixture_dir().join("reference.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn responses_conform_to_the_openai_openapi_description() {
    let python = venv();
    let node = Node::start(&config("", ""));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(python)
        .arg(root.join("tests/python/check_openapi.py"))
        .env("HF_BASE_URL", &node.url)
        .env("HF_KEY", KEY)
        .env("HF_OPENAPI", root.join("tests/openai-openapi/openapi.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("responses valid"), "{stdout}");
}
