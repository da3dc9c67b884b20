//! ws-spdy-bridge: a node-side proxy that speaks WebSocket to Kubernetes streaming clients and
//! SPDY/3.1 to legacy container runtimes.
#![forbid(unsafe_code)]

pub mod connection;
pub mod cri;
pub mod runtime_sim;
pub mod spdy;
pub mod status;
pub mod upstream;
