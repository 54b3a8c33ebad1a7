//! Fuzz the RADIUS accounting decoder: never a panic, never an out-of-bounds read.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ratel_engine::radius::codec::decode(data, b"testing123");
});
