//! Kubernetes channel protocols, sans-IO: bytes in, values out; nothing here does I/O.
//!
//! * [`subprotocol`]: WebSocket sub-protocol names and the selection rule (protocol.md §4.1).
//! * [`frame`]: v5 channel framing, the CLOSE signal and the initial message (§4.3–§4.6).
//! * [`resize`]: the streaming resize JSON decoder and the canonical re-encoding (§4.7).
//! * [`outcome`]: the error stream's outcome and the Status the client gets (§3.6, §5.6).

pub mod frame;
pub mod outcome;
pub mod resize;
pub mod subprotocol;
