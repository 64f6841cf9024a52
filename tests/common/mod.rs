//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The tunloom binary cargo built for these tests.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunloom"))
}

/// Whether namespace tests can run. Without root they are skipped loudly — unless
/// TUNLOOM_REQUIRE_NETNS=1 (CI), where a missing capability fails the test.
pub fn netns_or_skip(test: &str) -> bool {
    match tunloom_lab::netns::available() {
        Ok(()) => true,
        Err(why) => {
            if netns_required() {
                panic!("{test}: TUNLOOM_REQUIRE_NETNS=1 but namespace tests cannot run: {why}");
            }
            eprintln!("\n*** SKIPPED {test}: {why} (set TUNLOOM_REQUIRE_NETNS=1 to make this a failure) ***\n");
            false
        }
    }
}

/// Whether this run must not skip namespace tests (CI sets TUNLOOM_REQUIRE_NETNS=1).
pub fn netns_required() -> bool {
    std::env::var("TUNLOOM_REQUIRE_NETNS").as_deref() == Ok("1")
}

/// Whether a program is installed (for tests that need iperf3 or ping).
pub fn has(prog: &str) -> bool {
    std::process::Command::new(prog)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

pub fn never() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}
