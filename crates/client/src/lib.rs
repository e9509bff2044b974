//! Ferry's device library: change tracking inside the app's own SQLite file, and the four-step
//! sync cycle (health, push, pull, report) against a Ferry server.
//!
//! The app owns its SQLite file and writes to it through any driver, in any process. Pairing
//! installs tracking *into the file*, in plain SQL: every app write marks its row dirty with a
//! hybrid-logical-clock version taken at write time, and deletes leave tombstones. A cycle
//! pushes dirty rows, stamps the confirmed ones clean, and applies pulled rows by
//! last-write-wins in short transactions that never mark anything dirty and leave the app the
//! write lock between them.
//!
//! Code map:
//! - `client`: [`pair`], [`Client`] and [`ClientOptions`], the API the agent and the CLI use.
//! - `cycle`: the async cycle; [`Progress`] and [`is_offline_error`].
//! - `http`: the device sync API over reqwest; failures to reach the server become offline.
//! - `changes`: the change stream ([`ChangeStream`]), which tells a device to pull now.
//! - [`replica`]: the synchronous SQLite layer (install, dirty batches, stamping, applying
//!   pulled pages, state, log, conflict record), usable and tested without a server.
//! - `tracking`: the SQL installed into the app's file (Ferry's tables, the HLC clock, triggers).
//! - `values`: JSON wire values and SQLite values, key texts of tombstones, base64.
//!
//! A cycle never fails its caller: errors go into its [`CycleReport`]. A report whose error
//! starts with [`OFFLINE_PREFIX`] means the device was offline (health check or connection
//! failed); [`is_offline_error`] tells.
//!
//! ```no_run
//! # async fn example() -> ferry_client::Result<()> {
//! use ferry_client::{Client, ClientOptions, CycleTrigger};
//! let client = Client::open("app.db".as_ref(), ClientOptions::default())?;
//! let report = client.sync(CycleTrigger::Manual, &|_progress| {}).await;
//! if ferry_client::is_offline_error(&report) {
//!     println!("offline; {} changes wait", client.pending()?);
//! }
//! # Ok(()) }
//! ```

mod changes;
mod client;
mod cycle;
mod error;
mod http;
pub mod replica;
mod tracking;
mod values;

pub use changes::ChangeStream;
pub use client::{Client, ClientOptions, Paired, pair, pair_again};
pub use cycle::{OFFLINE_PREFIX, Phase, Progress, is_offline_error};
pub use error::{Error, Result};
pub use ferry_proto::local::{CycleReport, CycleTrigger};
pub use replica::{ConflictReason, LocalConflict, Replica};
