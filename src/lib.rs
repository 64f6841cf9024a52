#![deny(unsafe_code)]
pub mod route;
pub mod wire;
