//! The billing job's durable state (`BillingStore`) on real stores, one module per area.
//!
//! This suite runs twice: as `billing` on SQLite files and as `billing_postgres` on a fresh
//! PostgreSQL database per test (see `tests/billing_postgres.rs`).

pub(crate) mod support;

mod ledger;
mod mappings;
mod migration;
mod review;
mod sessions;
mod settle;
