//! The `JobStore` suite of `tests/jobs`, unchanged, on PostgreSQL (`support::backend` reads
//! this binary's name), and what only PostgreSQL has: a LISTEN connection that can break.

#[path = "jobs/main.rs"]
mod jobs;
#[path = "jobs/postgres.rs"]
mod postgres;
