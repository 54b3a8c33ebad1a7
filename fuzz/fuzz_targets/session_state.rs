//! Fuzz the decoder of stored RADIUS session states (`sessions.state` in the ledger): never
//! a panic or a huge allocation; a state that decodes packs back to the same session.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use ratel_engine::radius::state;
    if let Ok(s) = state::unpack("nas", "sid", data) {
        assert_eq!(state::unpack("nas", "sid", &state::pack(&s)).unwrap(), s);
    }
});
