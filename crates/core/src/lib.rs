//! Ferry's pure sync logic. Nothing here does IO or spawns a task, and no rule reads the clock:
//! callers pass the current time in (from [`time::now_ms`], the one clock reading), so every rule
//! can be tested exhaustively.
//!
//! - [`time`]: RFC 3339 UTC timestamps with milliseconds, the contract's only time format.
//! - [`version`]: hybrid logical clock stamps (`<timestamp>-<counter>-<node>`) and their order.
//! - [`schema`]: the synced tables, their keys and foreign keys, SQLite affinity rules.
//! - [`order`]: the order in which a batch of changes is applied (parents first), and the
//!   groups of rows whose references form a cycle.

pub mod order;
pub mod schema;
pub mod time;
pub mod version;

pub use schema::{Affinity, Column, ForeignKey, KeyError, Schema, Table};
pub use version::{Decision, Version, VersionError};
