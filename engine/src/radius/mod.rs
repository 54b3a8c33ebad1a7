//! RADIUS: accounting (RFC 2866: the zero-copy codec and the session state machine),
//! authorization (RFC 2865) and Disconnect-Requests (RFC 5176).

pub mod accounting;
pub mod auth;
pub mod auth_server;
pub mod codec;
pub mod disconnect;
pub mod state;
