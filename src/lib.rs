//! ws-spdy-bridge: a node-side proxy that speaks WebSocket to Kubernetes streaming clients and
//! SPDY/3.1 to legacy container runtimes.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod channel;
pub mod config;
pub mod connection;
pub mod cri;
pub mod metrics;
pub mod relay;
pub mod runtime_sim;
pub mod server;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod upstream;
pub mod websocket;
pub mod wsclient;
