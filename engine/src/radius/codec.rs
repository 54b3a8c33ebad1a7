//! A zero-copy RADIUS accounting decoder (RFC 2865/2866/2869/3579): bytes in, a borrowed
//! [`AcctRequest`] out, or a [`DecodeError`] saying why the datagram was dropped.
//!
//! Hostile input is the normal case here: the decoder works on the exact `Length` bytes of
//! the datagram (trailing padding ignored, a short datagram rejected), never allocates, and
//! never trusts a length field beyond the slice it was given. The Request Authenticator is
//! verified over those exact bytes; a Message-Authenticator, when present, is checked with
//! HMAC-MD5 (RFC 3579 §3.2, computed with a zeroed Request Authenticator for accounting).
//!
//! Replies are built from the request's bytes: every `Proxy-State` of the request is copied
//! into the Accounting-Response, unmodified and in order (RFC 2865 §5.33, RFC 2866 §4.1), so
//! a proxy (FreeRADIUS, Radiator, a chain of them) can route the reply back. `Status-Server`
//! (RFC 5997) is decoded by [`decode_status_server`]: it must carry a valid
//! Message-Authenticator, and its reply carries one too.

use std::net::{Ipv4Addr, Ipv6Addr};

/// RADIUS codes used here.
pub const CODE_ACCOUNTING_REQUEST: u8 = 4;
pub const CODE_ACCOUNTING_RESPONSE: u8 = 5;
/// Status-Server (RFC 5997): "are you alive?", answered on the accounting port with an
/// Accounting-Response.
pub const CODE_STATUS_SERVER: u8 = 12;
/// Proxy-State (RFC 2865 §5.33): opaque to us, echoed in every reply.
pub const ATTR_PROXY_STATE: u8 = 33;
/// Message-Authenticator (RFC 3579 §3.2).
pub const ATTR_MESSAGE_AUTHENTICATOR: u8 = 80;

/// Acct-Status-Type values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusType {
    Start,
    Stop,
    InterimUpdate,
    AccountingOn,
    AccountingOff,
    Other(u32),
}

impl StatusType {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => StatusType::Start,
            2 => StatusType::Stop,
            3 => StatusType::InterimUpdate,
            7 => StatusType::AccountingOn,
            8 => StatusType::AccountingOff,
            o => StatusType::Other(o),
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or than its own Length field.
    Truncated,
    /// Length field below 20 or above 4096.
    BadLength,
    /// Not an Accounting-Request.
    NotAccountingRequest(u8),
    /// An attribute with length < 2 or running past the packet.
    BadAttribute,
    /// Request Authenticator does not match the shared secret.
    BadAuthenticator,
    /// Message-Authenticator present but wrong (or not 18 bytes long).
    BadMessageAuthenticator,
    /// No Acct-Status-Type.
    MissingStatusType,
    /// A Status-Server without Message-Authenticator (RFC 5997 §3 requires one).
    MissingMessageAuthenticator,
}

impl DecodeError {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadLength => "bad length",
            DecodeError::NotAccountingRequest(_) => "not an Accounting-Request",
            DecodeError::BadAttribute => "malformed attribute",
            DecodeError::BadAuthenticator => "wrong Request Authenticator",
            DecodeError::BadMessageAuthenticator => "wrong Message-Authenticator",
            DecodeError::MissingStatusType => "no Acct-Status-Type",
            DecodeError::MissingMessageAuthenticator => {
                "Status-Server without Message-Authenticator"
            }
        }
    }
}

/// A decoded, verified Accounting-Request, borrowing the datagram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcctRequest<'a> {
    pub identifier: u8,
    pub authenticator: [u8; 16],
    pub status: Option<StatusType>,
    pub user_name: &'a [u8],
    pub session_id: &'a [u8],
    pub session_time: Option<u32>,
    pub input_octets: u32,
    pub output_octets: u32,
    pub input_gigawords: u32,
    pub output_gigawords: u32,
    pub event_timestamp: Option<u32>,
    pub delay_time: u32,
    pub nas_ip: Option<Ipv4Addr>,
    /// NAS-IPv6-Address (RFC 3162 §2.1).
    pub nas_ipv6: Option<Ipv6Addr>,
    pub nas_identifier: &'a [u8],
    pub nas_port: Option<u32>,
    pub framed_ip: Option<Ipv4Addr>,
    pub calling_station: &'a [u8],
    pub called_station: &'a [u8],
    pub terminate_cause: Option<u32>,
    pub interim_interval: Option<u32>,
}

impl AcctRequest<'_> {
    pub fn status_type(&self) -> StatusType {
        self.status.unwrap_or(StatusType::Other(0))
    }
    /// Octets in with gigawords folded in.
    pub fn octets_in(&self) -> u64 {
        ((self.input_gigawords as u64) << 32) | self.input_octets as u64
    }
    pub fn octets_out(&self) -> u64 {
        ((self.output_gigawords as u64) << 32) | self.output_octets as u64
    }
}

fn be32(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// MD5 of the concatenation of `parts`.
fn md5_parts(parts: &[&[u8]]) -> [u8; 16] {
    let mut ctx = md5::Context::new();
    for p in parts {
        ctx.consume(p);
    }
    ctx.compute().0
}

/// HMAC-MD5 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&md5::compute(key).0);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = md5::Context::new();
    inner.consume(ipad);
    for p in parts {
        inner.consume(p);
    }
    let ih = inner.compute().0;
    md5_parts(&[&opad, &ih])
}

/// The packet's exact `Length` bytes of a datagram (RFC 2865 §3: octets beyond Length are
/// padding and are ignored).
fn frame(datagram: &[u8]) -> Result<&[u8], DecodeError> {
    if datagram.len() < 20 {
        return Err(DecodeError::Truncated);
    }
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if !(20..=4096).contains(&len) {
        return Err(DecodeError::BadLength);
    }
    if datagram.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(&datagram[..len])
}

/// The attributes of a framed packet as (type, value, offset of the value), in order; an
/// attribute with length < 2 or running past the packet ends the walk with an error.
fn attributes(pkt: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8], usize), DecodeError>> {
    let mut pos = 20;
    std::iter::from_fn(move || {
        if pos >= pkt.len() {
            return None;
        }
        if pos + 2 > pkt.len() {
            pos = pkt.len();
            return Some(Err(DecodeError::BadAttribute));
        }
        let (typ, alen) = (pkt[pos], pkt[pos + 1] as usize);
        if alen < 2 || pos + alen > pkt.len() {
            pos = pkt.len();
            return Some(Err(DecodeError::BadAttribute));
        }
        let at = pos + 2;
        pos += alen;
        Some(Ok((typ, &pkt[at..pos], at)))
    })
}

/// Decodes and verifies an Accounting-Request datagram against `secret`.
pub fn decode<'a>(datagram: &'a [u8], secret: &[u8]) -> Result<AcctRequest<'a>, DecodeError> {
    let pkt = frame(datagram)?;
    let len = pkt.len();
    if pkt[0] != CODE_ACCOUNTING_REQUEST {
        return Err(DecodeError::NotAccountingRequest(pkt[0]));
    }
    let mut req = AcctRequest {
        identifier: pkt[1],
        ..Default::default()
    };
    req.authenticator.copy_from_slice(&pkt[4..20]);
    let mut msg_auth: Option<usize> = None;
    let mut pos = 20;
    while pos < len {
        if pos + 2 > len {
            return Err(DecodeError::BadAttribute);
        }
        let (typ, alen) = (pkt[pos], pkt[pos + 1] as usize);
        if alen < 2 || pos + alen > len {
            return Err(DecodeError::BadAttribute);
        }
        let v = &pkt[pos + 2..pos + alen];
        match typ {
            1 => req.user_name = v,
            4 => req.nas_ip = be32(v).map(Ipv4Addr::from),
            95 => {
                req.nas_ipv6 = <[u8; 16]>::try_from(v).ok().map(Ipv6Addr::from);
            }
            5 => req.nas_port = be32(v),
            8 => req.framed_ip = be32(v).map(Ipv4Addr::from),
            30 => req.called_station = v,
            31 => req.calling_station = v,
            32 => req.nas_identifier = v,
            40 => req.status = be32(v).map(StatusType::from_u32),
            41 => req.delay_time = be32(v).unwrap_or(0),
            42 => req.input_octets = be32(v).unwrap_or(0),
            43 => req.output_octets = be32(v).unwrap_or(0),
            44 => req.session_id = v,
            46 => req.session_time = be32(v),
            49 => req.terminate_cause = be32(v),
            52 => req.input_gigawords = be32(v).unwrap_or(0),
            53 => req.output_gigawords = be32(v).unwrap_or(0),
            55 => req.event_timestamp = be32(v),
            80 => {
                if alen != 18 {
                    return Err(DecodeError::BadMessageAuthenticator);
                }
                msg_auth = Some(pos + 2);
            }
            85 => req.interim_interval = be32(v),
            _ => {}
        }
        pos += alen;
    }
    // Request Authenticator = MD5(Code + Identifier + Length + 16 zero octets + attributes + secret).
    let zero = [0u8; 16];
    let want = md5_parts(&[&pkt[..4], &zero, &pkt[20..], secret]);
    if !constant_time_eq(&want, &req.authenticator) {
        return Err(DecodeError::BadAuthenticator);
    }
    if let Some(at) = msg_auth {
        // HMAC-MD5 over the packet with the Request Authenticator and the
        // Message-Authenticator value both zeroed.
        let got = &pkt[at..at + 16];
        let mac = hmac_md5(
            secret,
            &[&pkt[..4], &zero, &pkt[20..at], &zero, &pkt[at + 16..]],
        );
        if !constant_time_eq(&mac, got) {
            return Err(DecodeError::BadMessageAuthenticator);
        }
    }
    if req.status.is_none() {
        return Err(DecodeError::MissingStatusType);
    }
    Ok(req)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 20-byte Accounting-Response to a request that carries no Proxy-State (the load
/// generator's check; the server answers with [`write_response`]).
pub fn response(identifier: u8, request_authenticator: &[u8; 16], secret: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0] = CODE_ACCOUNTING_RESPONSE;
    out[1] = identifier;
    out[2..4].copy_from_slice(&20u16.to_be_bytes());
    let auth = md5_parts(&[&out[..4], request_authenticator, secret]);
    out[4..20].copy_from_slice(&auth);
    out
}

/// A verified Status-Server (RFC 5997).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusServer {
    pub identifier: u8,
}

/// Decodes and verifies a Status-Server datagram against `secret`. Its Request
/// Authenticator is random (as an Access-Request's), so the packet is authenticated by its
/// Message-Authenticator alone, which RFC 5997 §3 makes mandatory: HMAC-MD5 over the packet
/// as sent, the Message-Authenticator's value zeroed.
pub fn decode_status_server(datagram: &[u8], secret: &[u8]) -> Result<StatusServer, DecodeError> {
    let pkt = frame(datagram)?;
    if pkt[0] != CODE_STATUS_SERVER {
        return Err(DecodeError::NotAccountingRequest(pkt[0]));
    }
    let mut msg_auth = None;
    for a in attributes(pkt) {
        let (typ, v, at) = a?;
        if typ == ATTR_MESSAGE_AUTHENTICATOR {
            if v.len() != 16 || msg_auth.is_some() {
                return Err(DecodeError::BadMessageAuthenticator);
            }
            msg_auth = Some(at);
        }
    }
    let at = msg_auth.ok_or(DecodeError::MissingMessageAuthenticator)?;
    let zero = [0u8; 16];
    let mac = hmac_md5(secret, &[&pkt[..at], &zero, &pkt[at + 16..]]);
    if !constant_time_eq(&mac, &pkt[at..at + 16]) {
        return Err(DecodeError::BadMessageAuthenticator);
    }
    Ok(StatusServer { identifier: pkt[1] })
}

/// Writes into `out` (cleared first) the Accounting-Response to `request`, a datagram that
/// decoded (an Accounting-Request or a Status-Server): the request's Identifier, each of
/// its `Proxy-State` attributes copied unmodified and in order (RFC 2865 §5.33, RFC 2866
/// §4.1), for a Status-Server a Message-Authenticator (RFC 5997 §3, computed over the reply
/// with the Request Authenticator in place, RFC 3579 §3.2), and the Response Authenticator
/// MD5(Code + Identifier + Length + Request Authenticator + attributes + secret).
/// A reply is never longer than its request, so it stays within 4096 octets.
pub fn write_response(out: &mut Vec<u8>, request: &[u8], secret: &[u8]) {
    write_reply(out, CODE_ACCOUNTING_RESPONSE, request, secret);
}

/// [`write_response`] with reply code `code`: on an authorization port a Status-Server is
/// answered with an Access-Accept (code 2, RFC 5997 §3), built the same way.
pub fn write_reply(out: &mut Vec<u8>, code: u8, request: &[u8], secret: &[u8]) {
    out.clear();
    let Ok(pkt) = frame(request) else {
        return;
    };
    let request_authenticator = &pkt[4..20];
    out.extend_from_slice(&[code, pkt[1], 0, 0]);
    out.extend_from_slice(&[0u8; 16]);
    // A request that decoded has well-formed attributes; a malformed tail ends the copy.
    for (typ, v, _) in attributes(pkt).map_while(Result::ok) {
        if typ == ATTR_PROXY_STATE {
            out.push(ATTR_PROXY_STATE);
            out.push((v.len() + 2) as u8);
            out.extend_from_slice(v);
        }
    }
    let mut msg_auth = None;
    if pkt[0] == CODE_STATUS_SERVER {
        out.extend_from_slice(&[ATTR_MESSAGE_AUTHENTICATOR, 18]);
        msg_auth = Some(out.len());
        out.extend_from_slice(&[0u8; 16]);
    }
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    if let Some(at) = msg_auth {
        let mac = hmac_md5(secret, &[&out[..4], request_authenticator, &out[20..]]);
        out[at..at + 16].copy_from_slice(&mac);
    }
    let auth = md5_parts(&[&out[..4], request_authenticator, &out[20..], secret]);
    out[4..20].copy_from_slice(&auth);
}

/// Builds a signed Accounting-Request (for tests, the load generator and tools).
pub fn encode_request(identifier: u8, attrs: &[(u8, &[u8])], secret: &[u8]) -> Vec<u8> {
    let mut p = vec![CODE_ACCOUNTING_REQUEST, identifier, 0, 0];
    p.extend_from_slice(&[0u8; 16]);
    for (t, v) in attrs {
        p.push(*t);
        p.push((v.len() + 2) as u8);
        p.extend_from_slice(v);
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let auth = md5_parts(&[&p, secret]);
    p[4..20].copy_from_slice(&auth);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: &[u8]) -> Vec<u8> {
        encode_request(
            7,
            &[
                (40, &1u32.to_be_bytes()),
                (1, b"alice"),
                (44, b"sess-1"),
                (46, &30u32.to_be_bytes()),
                (42, &100u32.to_be_bytes()),
                (52, &1u32.to_be_bytes()),
                (4, &[10, 0, 0, 1]),
            ],
            secret,
        )
    }

    #[test]
    fn decodes_and_verifies() {
        let p = sample(b"s3cret");
        let r = decode(&p, b"s3cret").unwrap();
        assert_eq!(r.status_type(), StatusType::Start);
        assert_eq!(r.user_name, b"alice");
        assert_eq!(r.session_time, Some(30));
        assert_eq!(r.octets_in(), (1u64 << 32) + 100);
        assert_eq!(r.nas_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(decode(&p, b"wrong"), Err(DecodeError::BadAuthenticator));
    }

    #[test]
    fn padding_is_ignored_and_truncation_rejected() {
        let mut p = sample(b"k");
        let n = p.len();
        p.extend_from_slice(&[0xAA; 13]);
        assert!(
            decode(&p, b"k").is_ok(),
            "padded datagram must verify on its Length bytes"
        );
        assert_eq!(decode(&p[..n - 1], b"k"), Err(DecodeError::Truncated));
        assert_eq!(decode(&p[..10], b"k"), Err(DecodeError::Truncated));
    }

    #[test]
    fn hostile_attribute_lengths() {
        for bad_len in [0u8, 1, 200] {
            let mut p = sample(b"k");
            p[21] = bad_len; // first attribute's length
            assert_eq!(
                decode(&p, b"k"),
                Err(DecodeError::BadAttribute),
                "len {bad_len}"
            );
        }
        let mut p = sample(b"k");
        p[2..4].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(decode(&p, b"k"), Err(DecodeError::BadLength));
        let mut p = sample(b"k");
        p[0] = 1;
        assert_eq!(decode(&p, b"k"), Err(DecodeError::NotAccountingRequest(1)));
    }

    #[test]
    fn message_authenticator_checked() {
        let secret = b"k";
        // Build with a zeroed Message-Authenticator, fill in the HMAC, then sign.
        let mut p = encode_request(
            9,
            &[(40, &2u32.to_be_bytes()), (80, &[0u8; 16]), (1, b"bob")],
            secret,
        );
        let at = 20 + 6 + 2;
        let zero = [0u8; 16];
        let mac = hmac_md5(secret, &[&p[..4], &zero, &p[20..at], &zero, &p[at + 16..]]);
        p[at..at + 16].copy_from_slice(&mac);
        let auth = md5_parts(&[&p[..4], &zero, &p[20..], secret]);
        p[4..20].copy_from_slice(&auth);
        assert!(decode(&p, secret).is_ok());
        p[at] ^= 1;
        let auth = md5_parts(&[&p[..4], &zero, &p[20..], secret]);
        p[4..20].copy_from_slice(&auth);
        assert_eq!(
            decode(&p, secret),
            Err(DecodeError::BadMessageAuthenticator)
        );
    }

    #[test]
    fn hmac_md5_rfc2202_vector() {
        // RFC 2202 test case 2.
        let mac = hmac_md5(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "750c783e6ab0b503eaa86e310a5db738"
        );
    }

    #[test]
    fn response_authenticator() {
        let p = sample(b"k");
        let r = decode(&p, b"k").unwrap();
        let resp = response(r.identifier, &r.authenticator, b"k");
        let want = md5_parts(&[&[5, 7, 0, 20], &r.authenticator, b"k"]);
        assert_eq!(&resp[4..], &want);
        assert_eq!(resp[..4], [5, 7, 0, 20]);
    }

    /// The reply a proxy must get, built by hand from the RFCs: code 5, the identifier,
    /// each Proxy-State in order, MD5 over it with the request's authenticator and the secret.
    fn expected_reply(ident: u8, req_auth: &[u8], states: &[&[u8]], secret: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        for st in states {
            attrs.push(33u8);
            attrs.push(st.len() as u8 + 2);
            attrs.extend_from_slice(st);
        }
        let len = (20 + attrs.len()) as u16;
        let mut signed = vec![5u8, ident];
        signed.extend_from_slice(&len.to_be_bytes());
        signed.extend_from_slice(req_auth);
        signed.extend_from_slice(&attrs);
        signed.extend_from_slice(secret);
        let mut out = vec![5u8, ident];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&md5::compute(&signed).0);
        out.extend_from_slice(&attrs);
        out
    }

    /// Issue 21 item 1: every Proxy-State of the request is copied into the reply,
    /// unmodified (binary, with zero bytes and 253-byte values) and in order, other
    /// attributes are not, and the Response Authenticator covers them (checked against a
    /// hand computation).
    #[test]
    fn replies_copy_every_proxy_state_in_order() {
        let long = [0xA5u8; 253];
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![],
            vec![b"\x00"],
            vec![b"fr-proxy-1", b"\x00\xff\x00\x01binary", b"third"],
            vec![&long, b"", &long, b"\x7f"],
        ];
        for (k, states) in cases.iter().enumerate() {
            let secret = b"testing123";
            // Proxy-States interleaved with other attributes, as a proxy chain appends them.
            let mut attrs: Vec<(u8, &[u8])> = vec![(40, &[0, 0, 0, 3]), (1, b"alice")];
            for (i, st) in states.iter().enumerate() {
                attrs.push((33, st));
                if i % 2 == 0 {
                    attrs.push((44, b"sess"));
                }
            }
            let req = encode_request(k as u8 + 40, &attrs, secret);
            let r = decode(&req, secret).expect("request decodes");
            let mut out = Vec::new();
            write_response(&mut out, &req, secret);
            assert_eq!(
                out,
                expected_reply(r.identifier, &r.authenticator, states, secret),
                "case {k}"
            );
            if states.is_empty() {
                assert_eq!(out, response(r.identifier, &r.authenticator, secret));
            }
        }
    }

    /// Issue 21 item 5: a Status-Server is verified by its (mandatory) Message-Authenticator
    /// over the packet with its own random Request Authenticator; its reply is an
    /// Accounting-Response with a Message-Authenticator computed with the request's
    /// authenticator, and the Response Authenticator over both.
    #[test]
    fn status_server_needs_a_message_authenticator_and_is_answered_with_one() {
        let secret = b"s3cret";
        let auth = [7u8; 16];
        let build = |attrs: &[(u8, &[u8])], sign: bool| {
            let mut p = vec![12u8, 99, 0, 0];
            p.extend_from_slice(&auth);
            for (t, v) in attrs {
                p.push(*t);
                p.push(v.len() as u8 + 2);
                p.extend_from_slice(v);
            }
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            if sign {
                let at = p.windows(2).position(|w| w == [80, 18]).unwrap() + 2;
                let mac = hmac_md5(secret, &[&p]);
                p[at..at + 16].copy_from_slice(&mac);
            }
            p
        };
        let good = build(&[(33, b"ps"), (80, &[0; 16]), (32, b"proxy")], true);
        assert_eq!(
            decode_status_server(&good, secret),
            Ok(StatusServer { identifier: 99 })
        );
        assert_eq!(
            decode_status_server(&good, b"other"),
            Err(DecodeError::BadMessageAuthenticator)
        );
        let unsigned = build(&[(32, b"proxy")], false);
        assert_eq!(
            decode_status_server(&unsigned, secret),
            Err(DecodeError::MissingMessageAuthenticator)
        );
        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_status_server(&tampered, secret),
            Err(DecodeError::BadMessageAuthenticator)
        );
        assert_eq!(
            decode(&good, secret),
            Err(DecodeError::NotAccountingRequest(12))
        );

        let mut out = Vec::new();
        write_response(&mut out, &good, secret);
        // Proxy-State (4 bytes) then Message-Authenticator (18): 42 bytes.
        assert_eq!(out[..4], [5, 99, 0, 42]);
        assert_eq!(out[20..24], [33, 4, b'p', b's']);
        assert_eq!(out[24..26], [80, 18]);
        let mut zeroed = out.clone();
        zeroed[4..20].copy_from_slice(&auth);
        zeroed[26..42].fill(0);
        assert_eq!(out[26..42], hmac_md5(secret, &[&zeroed]));
        let mut signed = out.clone();
        signed[4..20].copy_from_slice(&auth);
        signed.extend_from_slice(secret);
        assert_eq!(out[4..20], md5::compute(&signed).0);
    }

    /// On an authorization port a Status-Server gets an Access-Accept built the same way.
    #[test]
    fn status_server_reply_code_is_the_callers() {
        let secret = b"k";
        let mut p = vec![12u8, 5, 0, 38];
        p.extend_from_slice(&[3u8; 16]);
        p.extend_from_slice(&[80, 18]);
        p.extend_from_slice(&[0u8; 16]);
        let mac = hmac_md5(secret, &[&p]);
        p[22..38].copy_from_slice(&mac);
        assert!(decode_status_server(&p, secret).is_ok());
        let (mut acct, mut auth) = (Vec::new(), Vec::new());
        write_response(&mut acct, &p, secret);
        write_reply(&mut auth, 2, &p, secret);
        assert_eq!((acct[0], auth[0]), (5, 2));
        assert_eq!(acct[1..4], auth[1..4]);
        let mut signed = auth.clone();
        signed[4..20].copy_from_slice(&[3u8; 16]);
        signed.extend_from_slice(secret);
        assert_eq!(auth[4..20], md5::compute(&signed).0);
    }

    #[test]
    fn nas_ipv6_address_is_decoded() {
        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let p = encode_request(1, &[(40, &[0, 0, 0, 1]), (95, &v6.octets())], b"k");
        assert_eq!(decode(&p, b"k").unwrap().nas_ipv6, Some(v6));
    }
}
