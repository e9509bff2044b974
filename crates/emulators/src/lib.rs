//! Emulators of the two HTTP APIs Ferry's billing job talks to: [StEvE](steve), an OCPP central
//! system that records charging sessions, and [Lago](lago), a billing platform that receives
//! usage events. Ferry's tests, its benchmark and `ferry emulate` (a new user's first try) run
//! against them instead of the real servers.
//!
//! Each emulator answers the endpoints Ferry uses with the real server's paths, fields, status
//! codes and error bodies, keeps its data in memory, and can be driven from outside: a Rust handle
//! (and the same actions over HTTP under `/_emulator/`) adds data, simulates what the real
//! system's other users would do, and injects faults. Each module's documentation lists what it
//! covers and what it leaves out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let steve = ferry_emulators::steve::spawn(Default::default()).await?;
//! let lago = ferry_emulators::lago::spawn(Default::default()).await?;
//! let demo = ferry_emulators::demo::seed(steve.handle(), steve.url(), lago.handle(), lago.url())?;
//! println!("{demo}");
//! # Ok(())
//! # }
//! ```

pub mod demo;
pub mod lago;
mod server;
pub mod steve;
mod time;

pub use server::Running;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The answer of an `/_emulator` route that could not do what it was asked.
#[derive(Debug)]
struct ControlError {
    status: StatusCode,
    message: String,
}

impl ControlError {
    fn new(status: StatusCode, error: &impl std::fmt::Display) -> Self {
        ControlError {
            status,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// Uses up one of `count` armed occurrences of a fault; false when none is left.
fn take_one(count: &mut u32) -> bool {
    let armed = *count > 0;
    *count = count.saturating_sub(1);
    armed
}
