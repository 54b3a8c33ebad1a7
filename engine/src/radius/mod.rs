//! RADIUS accounting (RFC 2866): the zero-copy codec and the session state machine.

pub mod accounting;
pub mod codec;
