//! Integration tests of the device client: real SQLite files in a temporary directory, with a
//! second plain rusqlite connection playing the app. Most need no Ferry server; the cycle tests
//! run a tiny fake server for the offline, schema-mismatch and proxy paths, and `cloud` and
//! `limits` run the real server (testkit) for what only its answers can show: a force pull's
//! cloud view, and what its limits refuse.

#[path = "client/support.rs"]
mod support;

#[path = "client/cloud.rs"]
mod cloud;
#[path = "client/cycle.rs"]
mod cycle;
#[path = "client/install.rs"]
mod install;
#[path = "client/limits.rs"]
mod limits;
#[path = "client/pull.rs"]
mod pull;
#[path = "client/push.rs"]
mod push;
#[path = "client/tracking.rs"]
mod tracking;
