//! The `BillingStore` suite of `tests/billing`, unchanged, on PostgreSQL (`support::backend`
//! reads this binary's name).

#[path = "billing/main.rs"]
mod billing;
