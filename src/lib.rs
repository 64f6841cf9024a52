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
//!  control side: peers (UDP 6783 hello/announce) ─┐
//!                control (HTTP API, tiny_http)  ──┴─▶ snapshot::Published (routes, peers)
//! ```
//!
//! Layers, each in its own module:
//! - [`wire`]: views and values for VXLAN, Ethernet, virtio-net, peer control
//!   messages; ICMP error emitters; checksums. No I/O, no allocation.
//! - [`route`]: longest-prefix match (IPv4 and IPv6).
//! - [`pipeline`]: the sans-IO packet path — pure functions of (snapshot, packet,
//!   buffers) returning a [`pipeline::Verdict`].
//! - [`dataplane`]: the I/O shell — TUN device, sockets, worker event loops.
//! - [`snapshot`]: the immutable forwarding state and its publication.
//! - [`peers`], [`control`], [`service`]: the control plane, the HTTP API and the
//!   gateway endpoint.
//! - [`model`], [`store`]: what the control side knows (peers, IPAM, DNS records,
//!   exposed addresses) and where it is kept durable (redb, group commit).
//! - [`daemon`], [`config`], [`stats`]: assembly, configuration, counters.
//! - [`sys`]: every raw system call; the only module with `unsafe`.
//!
//! The lab (network namespaces, the two-host testbed and `tunloom lab`) is the
//! separate crate `tunloom-lab` in `lab/`: no module here can depend on it.

#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod control;
pub mod dataplane;
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
