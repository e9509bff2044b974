//! The client's errors.

use std::path::PathBuf;

/// Everything that can go wrong in the client. Messages are sentence fragments in Rust's usual
/// style; a cycle report turns one into a sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is not paired with a Ferry server; pair the device first", .0.display())]
    NotPaired(PathBuf),
    #[error(
        "the database already has table(s) {tables} whose schema differs from the server's; \
         migrate them to the server's schema (or remove them) and pair again"
    )]
    TablesDiffer { tables: String },
    #[error(
        "the device's schema hash {device} differs from the server's {server}; the app's \
         database and the server must declare the same synced tables"
    )]
    SchemaMismatch { device: String, server: String },
    #[error("the schema is not usable: {0}")]
    Schema(#[from] ferry_schema::SchemaError),
    #[error(
        "the server's schema does not only add to this device's, so the device cannot adopt it \
         by itself: {reasons}; pair the device again"
    )]
    SchemaNotAdditive { reasons: String },
    #[error("device id {0:?} cannot be a clock node (use letters, digits, '_', '-', '.', ':')")]
    InvalidDeviceId(String),
    #[error("the local database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error(
        "{} is already paired, as device {device_id} with {server_url}; pair it again with \
         --force, which revokes that identity (its unsynced changes stay and sync under the new \
         one)", path.display()
    )]
    AlreadyPaired {
        path: PathBuf,
        device_id: String,
        server_url: String,
    },
    /// The server could not be reached, or its health check failed: the device is offline.
    #[error("the server at {url} cannot be reached ({reason})")]
    Offline { url: String, reason: String },
    #[error("the pairing code was refused: it is wrong, already used or expired")]
    InvalidPairingCode,
    #[error(
        "the server refused the device's token ({message}); the device may have been revoked, \
         pair it again"
    )]
    Unauthorized { message: String },
    /// The server, or a proxy in front of it, refused a request as too large (`413`). The
    /// server's answer names the limit it met: bytes of body, or changes in one push (a proxy's
    /// names neither).
    #[error("the server refused the request as too large: {message}")]
    TooLarge {
        limit_bytes: Option<u64>,
        limit_changes: Option<u64>,
        message: String,
    },
    /// Any other error answer from the server.
    #[error("the server answered {status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The server's answer does not follow the wire contract.
    #[error("the server's answer to {what} could not be understood: {reason}")]
    Protocol { what: String, reason: String },
    #[error("a background task failed: {0}")]
    Task(String),
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error means the device is offline (rather than that something is wrong).
    pub fn is_offline(&self) -> bool {
        matches!(self, Error::Offline { .. })
    }
}
