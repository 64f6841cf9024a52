//! Helpers shared by the integration tests, and their harness: tests that need
//! network namespaces (root) or programs such as iperf3 are *ignored*, by name and
//! with the reason, when those are missing — never reported as passed — unless
//! TUNLOOM_REQUIRE_NETNS=1 (CI), where a missing capability is a failure.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The tunloom binary cargo built for these tests, or the one TUNLOOM_EXE names (to
/// run the suite against a release build).
pub fn exe() -> PathBuf {
    std::env::var_os("TUNLOOM_EXE").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tunloom")), PathBuf::from)
}

/// What a test needs beyond a build.
#[derive(Clone, Copy)]
pub enum Needs {
    /// Nothing: runs anywhere.
    Nothing,
    /// Root and network namespaces.
    Netns,
    /// Network namespaces and these programs.
    NetnsWith(&'static [&'static str]),
}

/// Whether this run must not leave namespace tests out (CI sets
/// TUNLOOM_REQUIRE_NETNS=1).
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

/// Why a test with `needs` cannot run here, if it cannot.
fn missing(needs: Needs) -> Option<String> {
    let programs: &[&str] = match needs {
        Needs::Nothing => return None,
        Needs::Netns => &[],
        Needs::NetnsWith(p) => p,
    };
    if let Err(why) = tunloom_lab::netns::available() {
        return Some(why);
    }
    programs
        .iter()
        .find(|p| !has(p))
        .map(|p| format!("needs {p} (run scripts/setup)"))
}

/// Runs `tests` as this file's test binary, with libtest's command line.
pub fn main(tests: &[(&'static str, Needs, fn())]) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let required = netns_required();
    let trials = tests
        .iter()
        .map(|&(name, needs, f)| match missing(needs) {
            None => libtest_mimic::Trial::test(name, move || {
                f();
                Ok(())
            }),
            Some(why) if required => libtest_mimic::Trial::test(name, move || {
                Err(format!("TUNLOOM_REQUIRE_NETNS=1 but this test cannot run: {why}").into())
            }),
            Some(why) => {
                eprintln!("ignoring {name}: {why} (TUNLOOM_REQUIRE_NETNS=1 makes this a failure)");
                // Ignored; run anyway with --include-ignored, it fails rather than pass.
                libtest_mimic::Trial::test(name, move || Err(format!("cannot run here: {why}").into()))
                    .with_ignored_flag(true)
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

pub fn never() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        tunloom_lab::netns::enter(&ns).unwrap();
        f()
    })
    .join()
    .unwrap()
}
