//! Fuzz the VCS JSON-RPC 2.0 request path: arbitrary bytes as a request body, parsed into
//! the envelope, then every typed argument getter over its params (no input may panic).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ratel_api::vcs::exercise_request(data);
});
