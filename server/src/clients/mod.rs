//! Clients of the external services more than one layer dials: where they are and how to
//! connect (addresses, credentials, TLS). No policy: retries and timeouts stay with the callers.

pub mod postgres;
pub mod redis;
