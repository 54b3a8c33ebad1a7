//! Fuzz the Access-Request decoder (RFC 2865), the PAP/CHAP checks, the reply builder
//! (which walks the request's attributes to copy its Proxy-States) and the Disconnect
//! answer checker: never a panic, never an out-of-bounds read; a reply stays within 4096
//! octets and starts with its Message-Authenticator.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use ratel_engine::radius::{auth, codec, disconnect};
    let secret = b"testing123";
    let mut out = Vec::new();
    if let Ok(req) = auth::decode_access_request(data, secret, false) {
        let _ = auth::credentials_match(&req.credentials, b"pw", secret, req.authenticator);
        auth::write_reply(
            &mut out,
            &req,
            &auth::Decision::Reject(auth::RejectReason::WrongPassword),
            secret,
        );
        assert!(out.len() <= 4096 && out[20..22] == [80, 18]);
    }
    if codec::decode_status_server(data, secret).is_ok() {
        auth::write_status_reply(&mut out, data, secret);
        assert!(out.len() <= 4096 && out[0] == auth::CODE_ACCESS_ACCEPT);
    }
    let sent = [40u8; 20];
    let _ = disconnect::check_answer(data, &sent, secret);
});
