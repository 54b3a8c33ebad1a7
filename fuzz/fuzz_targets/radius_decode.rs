//! Fuzz the RADIUS accounting decoder, the Status-Server verifier and the reply builder
//! (which walks the request's attributes to copy its Proxy-States): never a panic, never an
//! out-of-bounds read; the reply to a request that decoded is never longer than it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use ratel_engine::radius::codec;
    let decoded = codec::decode(data, b"testing123").is_ok()
        | codec::decode_status_server(data, b"testing123").is_ok();
    let mut out = Vec::new();
    codec::write_response(&mut out, data, b"testing123");
    // The reply to a request that decoded is never longer than the request.
    assert!(!decoded || out.len() <= data.len().min(4096));
});
