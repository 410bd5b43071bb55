//! Spinwire: a real-time messaging server, wire-compatible with Centrifugo v6.
//!
//! # Layout
//! Commands flow one way: transport → [`protocol`] (codec, no IO) → [`session`] → [`node`] →
//! [`engine`]. Pushes come back engine → node → [`hub`] (encode once per protocol) → session
//! queue → transport. The server API ([`api`]) drives the same [`node`] as sessions do.
//! `server/ARCHITECTURE.md` has the code map and the invariants.

pub mod api;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod clients;
pub mod common;
pub mod config;
pub mod consumer;
pub mod engine;
pub mod errors;
pub mod filter;
pub mod hub;
pub mod jwks;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod track;
pub mod transport;

/// Version reported to clients and by `spinwire version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version as Centrifugo reports its own in the connect reply and `info`: `<version> OSS`.
pub fn product_version() -> String {
    format!("{VERSION} OSS")
}
