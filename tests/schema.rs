//! The served API against its own OpenAPI document, with schemathesis (from PyPI;
//! `scripts/setup` installs it into `.tools/venv`): generated requests, valid and
//! not, to every operation of every face (the management face with an admin token),
//! bounded in examples; no answer may be a server error, and every status code,
//! content type and body must be one the document describes. Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use std::path::PathBuf;
use tunloom_lab::testbed::OneHost;

/// The project's schemathesis, or one on PATH.
fn schemathesis() -> String {
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/schemathesis");
    if ours.exists() {
        ours.display().to_string()
    } else {
        "schemathesis".into()
    }
}

fn the_served_api_never_answers_with_a_server_error() {
    // Peers that never answer make /connect wait; 200 ms is enough here.
    let mut h = OneHost::create(
        "schema",
        &common::exe(),
        "[node]\nname = \"schema\"\n[control]\nsync_timeout_ms = 200\n",
    )
    .unwrap();
    h.start().unwrap();
    let st = schemathesis();
    // The management face with an admin token (minted offline, as an operator would),
    // so schemathesis reaches past the gate; the other faces have no authentication.
    let token = tunloom_lab::testbed::admin_token(&h.ns.name).expect("tunloom auth token mint works");
    let bearer = format!("Authorization: Bearer {token}");
    // Each face on its own port: the management face's paths, then the rest.
    for (base, filter) in [
        (
            "http://127.0.0.1:6786",
            "--include-path-regex=^/(health|ready|api/|container-station/)",
        ),
        ("http://127.0.0.1:6785", "--include-path-regex=^/(networks|services)"),
        (
            "http://127.0.0.1:6784",
            "--exclude-path-regex=^/(health|ready|api/|container-station/|networks|services)",
        ),
    ] {
        let out =
            h.ns.command(
                &st,
                &[
                    "run",
                    "http://127.0.0.1:6786/api/v1/openapi.json",
                    "--url",
                    base,
                    filter,
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                    "--max-examples",
                    "40",
                    "--seed",
                    "7",
                    "--request-timeout",
                    "10",
                    "--header",
                    &bearer,
                ],
            )
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "schemathesis against {base}:\n{text}\n{}",
            h.log()
        );
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("passed") || l.contains("cases"))
            .collect();
        eprintln!("schemathesis {base}: {}", summary.join(" | "));
    }
    // Still serving after all of it.
    assert_eq!(h.weave("GET", "/status", None).unwrap().0, 200);
}

fn main() -> std::process::ExitCode {
    common::main(&[(
        "the_served_api_never_answers_with_a_server_error",
        Needs::Netns,
        the_served_api_never_answers_with_a_server_error,
    )])
}
