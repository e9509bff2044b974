//! End-to-end tests: real servers on real sockets, devices on real SQLite files, and the
//! `ferry` binary itself.

mod agent;
mod billing;
mod cli;
mod crash;
mod migrate_store;
mod support;
mod sync;
mod worker;
