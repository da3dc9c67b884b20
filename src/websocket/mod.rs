//! The server side of RFC 6455 WebSocket connections, as the bridge's sessions use it: a
//! sans-IO frame codec ([`codec`]) and the connection's read and write halves ([`io`]).
//!
//! The opening handshake is answered by the HTTP server (see `server`); this module starts on
//! the upgraded connection.

pub mod codec;
pub mod io;

pub use codec::{CloseFrame, DecodeError, Event, Limits, Opcode, close_code};
pub use io::{ReadError, Reader, Writer, server};
