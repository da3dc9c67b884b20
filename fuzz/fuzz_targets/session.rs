//! Operation sequences on a `spdy::Session` in either role, checked against a model.
//! See `ws_spdy_bridge_fuzz::session` for the operations and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_spdy_bridge_fuzz::session::{Harness, Input};

fuzz_target!(|data: &[u8]| {
    Harness::run(&Input::from_bytes(data));
});
