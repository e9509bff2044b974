//! The billing job end to end: the real clients, the StEvE and Lago emulators over real
//! sockets, and a real store (a SQLite file here; PostgreSQL in `job_postgres`, which
//! includes the same modules).

mod faults;
mod flow;
mod simulation;
mod support;
