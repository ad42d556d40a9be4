//! The browser client (`clients/js`): runs its `npm test` — the size-gated build, type check,
//! format check, unit tests on a virtual clock, and end-to-end tests in Debian's Chromium
//! against the real `wallet_bridge` and `spec_server` binaries, built here first.
//!
//! The dev dependencies are installed with `npm ci` on first use. Without Node ≥ 20, npm or
//! chromium the test says so loudly and passes, unless `CI` is set: then it fails
//! (`.ci/run` installs them with `scripts/install-node.sh` and `scripts/install-chromium.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Node's major version, if `node` runs.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_start_matches('v').split('.').next()?.parse().ok()
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing to run the browser tests, if anything.
fn missing() -> Option<String> {
    match node_major() {
        None => return Some("node is not installed".into()),
        Some(v) if v < 20 => return Some(format!("node {v} is older than 20")),
        Some(_) => {}
    }
    if !runs("npm", "--version") {
        return Some("npm is not installed".into());
    }
    let chromium = std::env::var("WSRPC_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no chromium at {chromium}"));
    }
    None
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

#[test]
fn npm_test_passes_in_chromium_against_the_real_servers() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: the browser client's tests cannot run (scripts/install-node.sh, \
             scripts/install-chromium.sh)"
        );
        eprintln!("SKIPPED js_client: {why} (CI would fail here)");
        return;
    }
    let root = repo();
    let js = root.join("clients/js");
    // `npm ci` again only when the lock file changed since the last install.
    let installed = js.join("node_modules/.package-lock.json");
    let stale = match (installed.metadata(), js.join("package-lock.json").metadata()) {
        (Ok(i), Ok(l)) => i.modified().ok() < l.modified().ok(),
        _ => true,
    };
    if stale {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&js), "npm ci");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo)
            .args(["build", "-q", "-p", "wsrpc-examples"])
            .args(["--example", "wallet_bridge", "--example", "spec_server"])
            .current_dir(&root),
        "cargo build of the example servers",
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("debug/examples");
    run(
        Command::new("npm").arg("test").current_dir(&js).env("WSRPC_EXAMPLES_DIR", &target),
        "npm test in clients/js",
    );
    // The build wrote dist/ again: the committed bundle must be what the sources build.
    if !root.join(".git").exists() {
        return;
    }
    let diff = Command::new("git")
        .args(["diff", "--exit-code", "--stat", "--", "clients/js/dist"])
        .current_dir(&root)
        .status();
    if let Ok(status) = diff {
        assert!(
            status.success(),
            "clients/js/dist is stale: run `npm run build` in clients/js and commit it"
        );
    }
}
