//! Integration tests of the device client: real SQLite files in a temporary directory, with a
//! second plain rusqlite connection playing the app. Most need no Ferry server; the cycle tests
//! run a tiny fake server for the offline and schema-mismatch paths, and `cloud` runs the real
//! server (testkit) for what only its answers can show: a force pull's cloud view.

#[path = "client/support.rs"]
mod support;

#[path = "client/cloud.rs"]
mod cloud;
#[path = "client/cycle.rs"]
mod cycle;
#[path = "client/install.rs"]
mod install;
#[path = "client/pull.rs"]
mod pull;
#[path = "client/push.rs"]
mod push;
#[path = "client/tracking.rs"]
mod tracking;
