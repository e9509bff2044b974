//! End-to-end tests: real servers on real sockets, devices on real SQLite files, and the
//! `ferry` binary itself.

mod admin;
mod agent;
mod billing;
mod cli;
mod console;
mod crash;
mod limits;
mod migrate_store;
mod panel;
mod panel_browser;
mod readme;
mod support;
mod sync;
mod worker;
