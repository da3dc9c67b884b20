//! The WebSocket `Decoder` with small limits, fed raw bytes or frames built from messages,
//! all at once and in pieces. See `ws_spdy_bridge_fuzz::websocket` for the input layout and
//! the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ws_spdy_bridge_fuzz::websocket::run(data);
});
