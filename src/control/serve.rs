//! The HTTP shell every face runs in: a synchronous `tiny_http` server with a pool
//! of handler threads, the 2 MiB body limit (413 beyond it, without reading the
//! body), a log line per request, and a caught panic answered 500 — so no request
//! can take the daemon down. It touches only the listener it is given.

use super::router::{self, Request, Router};
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request body any face accepts.
pub const MAX_BODY: usize = 2 << 20;

/// Serves `router` on `listener` with `threads` handler threads until `shutdown` is
/// set. Requests are handled concurrently, so writes from many clients share store
/// commits; each face's handlers only read shared state or go through the model.
pub fn serve<S: Send + Sync + 'static>(
    face: &'static str,
    listener: TcpListener,
    router: Router<S>,
    state: Arc<S>,
    shutdown: Arc<AtomicBool>,
    threads: usize,
) -> std::io::Result<()> {
    let server = Arc::new(tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)?);
    let router = Arc::new(router);
    let run = {
        let (server, router, state, shutdown) = (server.clone(), router.clone(), state.clone(), shutdown.clone());
        move || {
            while !shutdown.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(req)) => handle(face, &router, &state, req),
                    Ok(None) => {}
                    Err(e) => log::warn!("{face}: accept failed: {e}"),
                }
            }
        }
    };
    let mut helpers = Vec::new();
    for i in 1..threads.max(1) {
        let run = run.clone();
        match std::thread::Builder::new().name(format!("tl-{face}-{i}")).spawn(run) {
            Ok(h) => helpers.push(h),
            Err(e) => log::warn!("{face}: cannot start handler thread: {e}"),
        }
    }
    run();
    for h in helpers {
        let _ = h.join();
    }
    Ok(())
}

fn handle<S>(face: &str, router: &Router<S>, state: &S, mut raw: tiny_http::Request) {
    let t0 = Instant::now();
    let method = raw.method().as_str().to_ascii_uppercase();
    let url = raw.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let headers: Vec<(String, String)> = raw
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_string(), h.value.as_str().to_string()))
        .collect();
    let too_big = || router.error(413, &format!("request body exceeds the {MAX_BODY}-byte limit"));
    let resp = if raw.body_length().is_some_and(|n| n > MAX_BODY) {
        too_big()
    } else {
        let mut body = Vec::new();
        match raw.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body) {
            Err(e) => router.error(400, &format!("cannot read request body: {e}")),
            Ok(_) if body.len() > MAX_BODY => too_big(),
            Ok(_) => {
                let req = Request {
                    method: method.clone(),
                    path: path.to_string(),
                    query: router::parse_query(query),
                    headers,
                    body,
                };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| router.dispatch(state, &req))).unwrap_or_else(
                    |_| {
                        log::error!("{face}: handler for {method} {path} panicked");
                        router.error(500, "internal error (a bug in tunloom); the daemon log has the details")
                    },
                )
            }
        }
    };
    let status = resp.status;
    log::info!(
        "{face}: {} {method} {path} {status} {:.1}ms",
        raw.remote_addr().map_or_else(|| "-".to_string(), |a| a.to_string()),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let mut out =
        tiny_http::Response::from_data(if method == "HEAD" { Vec::new() } else { resp.body }).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], resp.content_type.as_bytes()) {
        out.add_header(h);
    }
    for (k, v) in resp.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            out.add_header(h);
        }
    }
    if let Err(e) = raw.respond(out) {
        log::debug!("{face}: writing response: {e}");
    }
}
