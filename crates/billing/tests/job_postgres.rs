//! The billing job suite of `tests/job`, unchanged, on PostgreSQL (`support::backend` reads
//! this binary's name).

#[path = "job/main.rs"]
mod job;
