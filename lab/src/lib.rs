//! The lab: what tunloom's integration tests and `tunloom lab` run the daemon in.
//!
//! - [`netns`]: network namespaces and veth links, made with `ip` and removed by name.
//! - [`testbed`]: one or two "hosts" (namespaces joined by an underlay veth), each
//!   running `tunloom run` as a child process, with clients for their APIs, ping and
//!   iperf3.
//! - [`lab`]: `tunloom lab` — a two-host overlay measured beside the kernel's VXLAN.
//!
//! Nothing here is part of a gateway: the daemon's library never depends on this
//! crate (it is a separate crate precisely so that it cannot), and everything it
//! makes is torn down by name or pid, also on failure and Ctrl-C.

#![forbid(unsafe_code)]

pub mod lab;
pub mod netns;
pub mod testbed;

pub use lab::{run, LabError, LabOptions, Report};
