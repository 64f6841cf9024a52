//! The control plane's HTTP side: one synchronous server per listener, each serving
//! one face over the model, reading shared state and never touching a worker.
//!
//! - [`router`]: patterns, the gate (who is asking) and permissions, 404/405,
//!   request and response values.
//! - [`http`]: the server every face runs on — a readiness-based front that bounds
//!   every client (sizes, deadlines, connections), handler pools, the request log.
//! - [`weave`]: the Weave Net local API, parsed into calls on the [`crate::model`].
//! - [`management`]: `/health`, `/api/v1/stats`, `/api/v1/openapi.json`.
//! - [`container_station`]: Docker's network API as Container Station serves it
//!   (seed 002), on the management listener.
//! - [`libnetwork`]: the 2015 libnetwork API (seed 001), on a loopback listener of
//!   its own.
//! - [`identity`]: the management listener's token gate, and the routes that hand
//!   out and manage credentials (Weka's login, Neuwerk's sessions and service
//!   accounts, Container Station's login).
//! - [`tls`]: the management listener's certificate (files, or a self-signed CA
//!   kept in the state directory) and its rustls configuration.
//! - [`metrics`]: `/metrics` for Prometheus, on a listener of its own, from the
//!   same sources as the stats.
//!
//! Each face is a thin adapter with its own small state type (the model it calls and
//! the few settings it shows), so it can be built, tested and fuzzed from a model
//! alone; each maps the model's error kinds to its own status codes and shapes in
//! one place.

pub mod container_station;
pub mod http;
pub mod identity;
pub mod libnetwork;
pub mod management;
pub mod metrics;
pub mod router;
pub mod tls;
pub mod weave;

pub use http::{serve, serve_tls, Limits, RequestTimes};
