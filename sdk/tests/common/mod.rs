//! Running `agw-agent` as a person at a shell does, for the CLI's tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::{path::Path, process::Command};

/// Runs agw-agent with the agent directory `dir`; its success, stdout and stderr.
pub fn agent(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agw-agent"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` as one JSON document (what `--json` prints).
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}
