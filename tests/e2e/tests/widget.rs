//! The widget's own tests, run as part of `cargo test` so one command tests the whole product:
//! its TypeScript checks, unit tests and bundle freshness (`npm test` in `widget/`), and its
//! browser tests in headless Chromium against the real stack started here, with the demo
//! concierge answering (`widget/test/browser/`).
//!
//! Needs Node.js with npm (the packages are installed from `widget/package-lock.json` when
//! missing) and Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use jack_e2e::{Svc, TestStack};
use jack_runtime::CancellationToken;

fn widget_dir() -> PathBuf {
    // At run time (cargo sets it for tests too): a test binary may be shared by checkouts.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest_dir).join("../../widget").canonicalize().expect("widget/ exists")
}

/// Installs the widget's npm packages once per test binary, when they are missing.
fn npm_packages() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = widget_dir();
    if *done || dir.join("node_modules/.package-lock.json").exists() {
        *done = true;
        return;
    }
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci (widget packages)");
    *done = true;
}

/// Runs a command to the end; on failure the test fails with everything it printed.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: could not start ({e}); is Node.js installed?"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed ({}):\n{text}", output.status);
    text
}

#[test]
fn widget_typechecks_passes_its_unit_tests_and_its_committed_bundle_is_fresh() {
    npm_packages();
    let out = run(Command::new("npm").args(["test", "--silent"]).current_dir(widget_dir()), "npm test (widget)");
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_works_in_a_real_browser_against_the_real_stack() {
    tokio::task::spawn_blocking(npm_packages).await.unwrap();
    let stack = TestStack::start().await;
    let shutdown = CancellationToken::new();
    let cursor = tempfile::tempdir().unwrap();
    let concierge = tokio::spawn(jack::concierge::run(
        vec![stack.stack.url(Svc::Conversation)],
        stack.credentials(jack_e2e::Role::Responder),
        cursor.path().join("cursor"),
        shutdown.clone(),
    ));

    let mut command = Command::new("node");
    command
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec", "test/browser/"])
        .current_dir(widget_dir())
        .env("JACK_URL", stack.http_base())
        .env("JACK_CONVERSATION_ADDR", stack.stack.addr(Svc::Conversation).to_string())
        .env("JACK_RESPONDER_TOKEN_FILE", stack.data_dir().join("credentials/responder.token"));
    let out =
        tokio::task::spawn_blocking(move || run(&mut command, "browser tests (widget/test/browser)")).await.unwrap();
    println!("{out}");

    shutdown.cancel();
    concierge.await.unwrap();
}
