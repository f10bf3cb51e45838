//! Operator control of the running daemon: the admin protocol ([`api`]), its Unix-socket server
//! and client, and the daemon-side state it acts on.

pub mod api;
pub mod client;
pub mod netset;
pub mod peer_rate;
pub mod replay_store;
pub mod roles;
pub mod server;
pub mod store;

use std::future::Future;

pub use self::api::{Request, Response};

/// Something that answers admin requests (the daemon's control state).
pub trait Handler: Send + Sync + 'static {
    /// Carries out `request` for the caller with uid `caller_uid`.
    fn handle(&self, request: Request, caller_uid: u32) -> impl Future<Output = Response> + Send;

    /// Called for each request refused because the caller's role does not allow it (for
    /// counters); the server has already answered and logged it.
    fn refused(&self) {}

    /// Called for each request refused because its caller is over the per-caller rate (for
    /// counters); the server has already answered it.
    fn rate_limited(&self) {}
}
