//! The translators between what a client speaks and what the runtime serves, one module each.

pub mod passthrough;
pub mod portforward;
pub mod remotecommand;
