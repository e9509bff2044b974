//! The HTTP API end to end: real sockets, real SQLite files, one module per area.

pub(crate) mod support;

mod admin;
mod bad_input;
mod billing;
mod concurrency;
mod console;
mod devices;
pub(crate) mod events;
mod health;
mod keys;
mod lifecycle;
mod limits;
mod openapi;
mod ops;
mod pairing;
mod pull;
mod push;
mod stream;
mod tenants;
mod worker;
