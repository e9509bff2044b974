//! The API suite of `tests/api`, unchanged, on PostgreSQL: `support::backend` reads this
//! binary's name.

#[path = "api/main.rs"]
mod api;
