//! The conflict log on real stores: what a push logs, and the migration that keys the log on
//! the losing write.
//!
//! This suite runs twice: as `conflicts` on SQLite files and as `conflicts_postgres` on a fresh
//! PostgreSQL database per test (see `tests/conflicts_postgres.rs`).

/// The helpers every store suite shares.
#[path = "../support/mod.rs"]
pub(crate) mod shared;
pub(crate) mod support;

mod log;
mod migration;
