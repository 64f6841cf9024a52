//! What checking a bearer token costs, per request: `Identity::verify` of a user
//! access token and of a service-account token (Ed25519 signature with ring, claims,
//! revocation and account lookups), and of a token with a bad signature (what a
//! forger costs the node). Besides criterion's estimates, `verify_p50` prints the
//! median and the 99th percentile of single calls.
//!
//! Run: `cargo bench --bench token`

use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tunloom::auth::{Identity, Role, Settings};
use tunloom::testkit::TempDir;

struct Tokens {
    _dir: TempDir,
    id: Identity,
    user: String,
    account: String,
    forged: String,
}

fn setup() -> Tokens {
    let dir = TempDir::new("bench-token");
    let id = Identity::open(&dir.0, Settings::default()).unwrap();
    let user = id.mint("bench", Role::Admin, Some(Duration::from_secs(3600))).unwrap();
    let a = id.create_account("bench", "", Role::Admin, "bench").unwrap();
    let (_, account) = id
        .mint_account_token(&a.id, "bench", None, false, None, "bench")
        .unwrap();
    let mut forged = user.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    Tokens {
        _dir: dir,
        id,
        user,
        account,
        forged,
    }
}

/// Median and 99th percentile of single `verify` calls.
fn p50_report(t: &Tokens) {
    for (what, token) in [("user", &t.user), ("service account", &t.account)] {
        let mut ns: Vec<u64> = (0..20_000)
            .map(|_| {
                let s = Instant::now();
                black_box(t.id.verify(black_box(token)).unwrap());
                s.elapsed().as_nanos() as u64
            })
            .collect();
        ns.sort_unstable();
        println!(
            "verify_p50 {what} token: p50 {:.1} µs, p99 {:.1} µs per call ({} calls)",
            ns[ns.len() / 2] as f64 / 1e3,
            ns[ns.len() * 99 / 100] as f64 / 1e3,
            ns.len()
        );
    }
}

fn bench(c: &mut Criterion) {
    let t = setup();
    let mut g = c.benchmark_group("token");
    g.bench_function("verify/user", |b| b.iter(|| t.id.verify(black_box(&t.user)).unwrap()));
    g.bench_function("verify/service_account", |b| {
        b.iter(|| t.id.verify(black_box(&t.account)).unwrap())
    });
    g.bench_function("verify/bad_signature", |b| {
        b.iter(|| t.id.verify(black_box(&t.forged)).unwrap_err())
    });
    g.bench_function("mint/user", |b| {
        b.iter(|| t.id.mint("bench", Role::Readonly, None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    p50_report(&setup());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
