//! Tariscope API tokens: JWTs (HS256, `jsonwebtoken`), valid [`TOKEN_LIFETIME_SECS`] and
//! bound to the IP they were issued to. The signing key is the ledger's (made once, so
//! tokens survive a restart). Time is an argument: expiry is tested with a fake clock.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Six hours, as the seed says.
pub const TOKEN_LIFETIME_SECS: i64 = 6 * 3600;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API user (an `[[admin]]` name).
    pub sub: String,
    /// The IP the token was issued to.
    pub ip: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token is refused (each a 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
    OtherIp,
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Invalid => "invalid token",
            TokenError::Expired => "token expired; get a new one from /api/auth",
            TokenError::OtherIp => "the token was issued to another IP address",
        }
    }
}

/// A token for `user` calling from `ip`, issued at `now`.
pub fn issue(key: &[u8], user: &str, ip: &str, now: i64) -> Result<String, String> {
    let claims = Claims {
        sub: user.to_string(),
        ip: ip.to_string(),
        iat: now,
        exp: now + TOKEN_LIFETIME_SECS,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| e.to_string())
}

/// The claims of a token presented from `ip` at `now`: signed with `key` (HS256 only),
/// not expired, issued to that IP.
pub fn verify(key: &[u8], token: &str, ip: &str, now: i64) -> Result<Claims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    // Expiry is checked here against the injected clock, without leeway.
    v.validate_exp = false;
    v.leeway = 0;
    v.required_spec_claims = ["exp".to_string(), "sub".to_string()].into_iter().collect();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &v)
        .map_err(|_| TokenError::Invalid)?;
    let c = data.claims;
    if now >= c.exp {
        return Err(TokenError::Expired);
    }
    if c.ip != ip {
        return Err(TokenError::OtherIp);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const T: i64 = 1_793_613_600;

    #[test]
    fn tokens_live_six_hours_from_one_ip() {
        let t = issue(KEY, "api", "10.0.0.1", T).unwrap();
        assert_eq!(t.split('.').count(), 3, "a JWT");
        let c = verify(KEY, &t, "10.0.0.1", T).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.exp - c.iat),
            ("api", TOKEN_LIFETIME_SECS)
        );
        assert!(verify(KEY, &t, "10.0.0.1", T + TOKEN_LIFETIME_SECS - 1).is_ok());
        assert_eq!(
            verify(KEY, &t, "10.0.0.1", T + TOKEN_LIFETIME_SECS),
            Err(TokenError::Expired)
        );
        assert_eq!(verify(KEY, &t, "10.0.0.2", T), Err(TokenError::OtherIp));
    }

    #[test]
    fn forged_tokens_are_invalid() {
        let t = issue(KEY, "api", "10.0.0.1", T).unwrap();
        // Another key.
        assert_eq!(
            verify(b"another key, same length.......!", &t, "10.0.0.1", T),
            Err(TokenError::Invalid)
        );
        // A changed payload with the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}x.{}", parts[0], parts[1], parts[2]);
        assert_eq!(
            verify(KEY, &forged, "10.0.0.1", T),
            Err(TokenError::Invalid)
        );
        // alg=none.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert_eq!(verify(KEY, &none, "10.0.0.1", T), Err(TokenError::Invalid));
        assert_eq!(
            verify(KEY, "garbage", "10.0.0.1", T),
            Err(TokenError::Invalid)
        );
    }
}
