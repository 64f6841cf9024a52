#![deny(unsafe_code)]
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod lab;
pub mod netns;
pub mod peers;
pub mod pipeline;
pub mod route;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod testbed;
#[doc(hidden)]
pub mod testkit;
pub mod wire;
