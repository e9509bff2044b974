//! The sync worker's durable state (`JobStore`, `TriggerListener`) on real stores, one module
//! per area.
//!
//! This suite runs twice: as `jobs` on SQLite files and as `jobs_postgres` on a fresh
//! PostgreSQL database per test (see `tests/jobs_postgres.rs`, which also adds what only
//! PostgreSQL has).

pub(crate) mod support;

mod cadence;
mod history;
mod listener;
mod runs;
mod triggers;
