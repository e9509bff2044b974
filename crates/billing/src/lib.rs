//! The billing job: finished charging sessions of a StEvE OCPP server become usage events in
//! Lago, each session's energy exactly once.
//!
//! - [`steve`] and [`lago`]: HTTP clients of the two public APIs.
//! - [`plan`]: pure planning: what StEvE reports, the ledger, the mappings and Lago's
//!   subscriptions in; sessions to write and events to send out.
//! - [`job`]: the [`ferry_worker::job::SyncJob`] that reads, plans, stores and sends;
//!   `outbox` drains the ledger's pending events into Lago.

pub mod job;
pub mod lago;
mod outbox;
pub mod plan;
pub mod steve;
