//! SPDY/3.1, sans-IO: frame codec, name/value header blocks, their zlib contexts and the
//! session state.
//!
//! Nothing here performs I/O or reads a clock: bytes go in, frames and events come out.

pub mod deflate;
pub mod dictionary;
pub mod frame;
pub mod headers;
pub mod inflate;
pub mod session;

pub use frame::{Decoder, Encoder, Frame, GoAwayStatus, Limits, RstStatus};
pub use headers::{HeaderBlock, HeaderLimits};
pub use session::{Event, Role, Session};
