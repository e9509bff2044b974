//! The API suite of `tests/api`, unchanged, on PostgreSQL (`support::backend` reads this
//! binary's name), and the behaviour only PostgreSQL has: faults, pools, several instances.

#[path = "api/main.rs"]
mod api;
#[path = "postgres/mod.rs"]
mod postgres;
