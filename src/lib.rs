//! tunloom: a userspace VXLAN overlay gateway for container networks.
//!
//! One process per host owns a multi-queue TUN device. Pinned workers, one per core
//! and one TUN queue each, route packets by longest prefix and carry them in VXLAN
//! over UDP to peer hosts, which decapsulate and deliver them.
//!
//! ```text
//!            ┌──────────── worker i (dataplane::worker, one per core) ─────────────┐
//!  TUN queue │ read ─▶ pipeline::inside ──▶ pipeline::segment ─▶ dataplane::batch │─ sendmmsg, UDP GSO ─▶ peer
//!     i      │          route (route::Table)    TSO split           GSO trains    │
//!            │                  │ gateway address                                 │
//!            │                  └──────▶ service (smoltcp, own thread) ──┐        │
//!            │ writev ◀─ pipeline::coalesce ◀─ pipeline::outside ◀───────┼────────│◀ recvmmsg, UDP GRO ─ peer
//!            └───────────── GRO trains ───── anti-spoofing, VNI ─────────┘────────┘
//!                  ▲ loads the published snapshot once per batch (arc-swap)
//!
//!  control side:
//!   faces (control::weave, control::management) ── model ── store (committer → redb)
//!        │ router: gate → permission → handler      │  │  └─ host (addresses on tl0)
//!        │                                          │  └──── peers (driver: UDP 6783)
//!        └──────────────── answers once ───────────┴─▶ snapshot::Published ─▶ workers
//!                          durable and in force
//! ```
//!
//! The dataplane, packet by packet:
//! - [`wire`]: views and values for VXLAN, Ethernet, virtio-net, peer control
//!   messages; ICMP error emitters; checksums. No I/O, no allocation.
//! - [`route`]: longest-prefix match (IPv4 and IPv6).
//! - [`pipeline`]: the sans-IO packet path — pure functions of (snapshot, packet,
//!   buffers) returning a [`pipeline::Verdict`].
//! - [`dataplane`]: the I/O shell — TUN device, sockets, worker event loops, their
//!   counters.
//! - [`snapshot`]: the immutable forwarding state and its publication.
//! - [`service`]: tunloom's own endpoint at gateway addresses (smoltcp, own thread).
//!
//! The control half, write by write:
//! - [`control`]: the HTTP faces — a router with a gate and permissions, the
//!   `tiny_http` shell, one file per face, each with its own state.
//! - [`model`]: what tunloom knows and decides (IPAM, DNS records, exposed
//!   addresses, peering); one write path; no I/O of its own.
//! - [`store`]: revisioned key-value storage with compare-and-swap and watch; group
//!   commit; redb and in-memory backends.
//! - [`host`]: the kernel changes and liveness probes the model asks for.
//! - [`peers`]: the peer control protocol — a pure table and the driver that owns its
//!   socket.
//!
//! - [`auth`]: identity — users, service accounts, EdDSA bearer tokens, refresh
//!   tokens, the failed-login limit; its own store; no HTTP.
//!
//! Around both: [`app`] assembles the daemon, [`config`] validates the file into each
//! part's settings, [`telemetry`] counts, [`names`] holds the naming rules, and
//! [`sys`] makes every raw system call — the only module with `unsafe`. The modules
//! import each other without cycles (`tests/architecture.rs` checks it).
//!
//! The lab (network namespaces, the two-host testbed and `tunloom lab`) is the
//! separate crate `tunloom-lab` in `lab/`: no module here can depend on it.

#![deny(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dns;
// Only the fuzz build (cargo-fuzz sets `--cfg fuzzing`) and the corpus replay in
// `cargo test` see the fuzz entry points; they are no part of the library's API.
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod host;
pub mod model;
pub mod names;
pub mod peers;
pub mod pipeline;
pub mod route;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod sys;
pub mod telemetry;
// Fixtures shared by unit tests, integration tests and benches; not an API.
#[doc(hidden)]
pub mod testkit;
pub mod wire;
