//! Moving a tenant from one store to another (`ferry migrate-store`), in backend-neutral
//! records.
//!
//! A source backend exports a tenant as a [`TenantExport`]: a [`TenantHeader`] with everything
//! small (the tenant, the schema DDL, devices, tokens, pairing codes and the counts), then its
//! rows in sequence order and its conflict log in log order, in batches, so that a million rows
//! never have to be in memory at once. A target backend imports it in one transaction.
//!
//! Devices keep syncing after a move because everything they hold stays valid: their tokens
//! (only hashes move, but the same hashes), their device ids, and their pull cursors, which
//! are sequence numbers: every row keeps its sequence number, and the target's sequence for
//! the tenant continues from [`TenantRecord::last_seq`], never below a cursor the source
//! handed out.
//!
//! Timestamps are milliseconds since the Unix epoch, whatever the backends store.

use tokio::sync::mpsc;

use crate::{Result, Role, StoreError};

/// Rows (or conflicts) per batch of an export, unless the caller chooses otherwise.
pub const DEFAULT_BATCH: usize = 10_000;

/// The tenant itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub created_at_ms: i64,
    /// The highest sequence number any cursor of this tenant may hold: at least the sequence
    /// of every row, and (on a store with one sequence for all tenants) the store's last one.
    pub last_seq: u64,
}

/// One paired device, with its check-in times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub name: String,
    pub platform: Option<String>,
    pub created_at_ms: i64,
    pub last_seen_at_ms: Option<i64>,
    pub last_push_at_ms: Option<i64>,
    pub last_pull_at_ms: Option<i64>,
    /// Dirty rows the device reported still waiting after its last push.
    pub pending: i64,
    /// The device's client software version, as it announced itself.
    pub version: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

/// Whom a token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    Device { device_id: String },
    Operator { role: Role },
}

/// One token, as its hash: the token's text is never stored, so it cannot move either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 hex of the token's text.
    pub hash: String,
    pub owner: TokenOwner,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// An unused pairing code that had not expired when the export read it, as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingCodeRecord {
    pub hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// One synced row at its latest version, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRecord {
    pub table: String,
    /// Canonical key text ([`ferry_core::Table::key_of`]).
    pub pk_key: String,
    pub seq: i64,
    pub version: String,
    pub deleted: bool,
    pub origin_device: Option<String>,
    /// The row change's wire JSON, byte for byte: pulls send it as it is.
    pub change: String,
}

/// One entry of the conflict log. Its id is not kept: the target numbers entries itself, in
/// the order they come, which is the order they were logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictEntry {
    pub table: String,
    pub pk_key: String,
    /// The row's primary key as a JSON object text.
    pub pk: String,
    pub winner_version: String,
    pub winner_device: Option<String>,
    pub loser_version: String,
    pub loser_device: Option<String>,
    pub loser_deleted: bool,
    /// The losing row's data as a JSON object text; `None` for a losing delete.
    pub loser_data: Option<String>,
    pub recorded_at_ms: i64,
}

/// Everything of a tenant except its rows and conflicts, and how many of those follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantHeader {
    pub tenant: TenantRecord,
    /// The DDL of the schema the source store serves (a store-wide setting).
    pub schema_ddl: Option<String>,
    pub devices: Vec<DeviceRecord>,
    pub tokens: Vec<TokenRecord>,
    pub pairing_codes: Vec<PairingCodeRecord>,
    /// How many rows [`TenantExport::next_rows`] will yield.
    pub rows: u64,
    /// How many conflicts [`TenantExport::next_conflicts`] will yield.
    pub conflicts: u64,
}

/// What a source backend sends, in this order: rows, conflicts, the end.
#[derive(Debug)]
pub(crate) enum ExportPart {
    Rows(Vec<RowRecord>),
    Conflicts(Vec<ConflictEntry>),
    End,
}

/// One tenant on its way out of a store: the header, then rows and conflicts in batches.
///
/// The whole export is one consistent snapshot of the source. The source reads it while the
/// target consumes it; dropping the export stops the reading.
#[derive(Debug)]
pub struct TenantExport {
    header: TenantHeader,
    parts: mpsc::Receiver<Result<ExportPart>>,
    /// A conflicts batch that arrived while rows were asked for.
    peeked: Option<Vec<ConflictEntry>>,
    ended: bool,
}

impl TenantExport {
    /// An export whose parts a source backend sends on `parts`, ending with
    /// [`ExportPart::End`]; the channel closing before it is an error.
    pub(crate) fn new(
        header: TenantHeader,
        parts: mpsc::Receiver<Result<ExportPart>>,
    ) -> TenantExport {
        TenantExport {
            header,
            parts,
            peeked: None,
            ended: false,
        }
    }

    pub fn header(&self) -> &TenantHeader {
        &self.header
    }

    /// The next batch of rows, in sequence order; `None` once every row has come.
    pub async fn next_rows(&mut self) -> Result<Option<Vec<RowRecord>>> {
        if self.peeked.is_some() || self.ended {
            return Ok(None);
        }
        match self.receive().await? {
            ExportPart::Rows(rows) => Ok(Some(rows)),
            ExportPart::Conflicts(conflicts) => {
                self.peeked = Some(conflicts);
                Ok(None)
            }
            ExportPart::End => Ok(None),
        }
    }

    /// The next batch of conflicts, in the order they were logged; `None` at the end. Rows
    /// come first: a rows batch still waiting here is an error.
    pub async fn next_conflicts(&mut self) -> Result<Option<Vec<ConflictEntry>>> {
        if let Some(conflicts) = self.peeked.take() {
            return Ok(Some(conflicts));
        }
        if self.ended {
            return Ok(None);
        }
        match self.receive().await? {
            ExportPart::Conflicts(conflicts) => Ok(Some(conflicts)),
            ExportPart::End => Ok(None),
            ExportPart::Rows(_) => Err(StoreError::Internal(
                "the export sent rows after its conflicts were asked for".into(),
            )),
        }
    }

    async fn receive(&mut self) -> Result<ExportPart> {
        let part = self.parts.recv().await.unwrap_or_else(|| {
            Err(StoreError::Internal(
                "the export stopped before its end".into(),
            ))
        })?;
        if matches!(part, ExportPart::End) {
            self.ended = true;
        }
        Ok(part)
    }
}

/// How far an import has come, for progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    /// `done` of `total` rows are written.
    Rows { done: u64, total: u64 },
    /// `done` of `total` conflict-log entries are written.
    Conflicts { done: u64, total: u64 },
    /// Everything is written; the transaction is committing.
    Committing,
}

/// What an import moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSummary {
    pub tenant: String,
    pub rows: u64,
    pub devices: u64,
    pub tokens: u64,
    pub pairing_codes: u64,
    pub conflicts: u64,
    /// Where the tenant's sequence stands on the target.
    pub last_seq: u64,
}

/// Why an import did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The target already has data of this tenant; merging two histories is not a move.
    #[error(
        "the target already holds tenant {tenant:?} with {devices} devices, {rows} rows and \
         {conflicts} conflicts; a tenant can only be moved into a store where it has none"
    )]
    TenantInUse {
        tenant: String,
        devices: u64,
        rows: u64,
        conflicts: u64,
    },
    /// The target serves another schema than the source (the schema is store-wide).
    #[error(
        "the target serves a different schema than the source; devices of the moved tenant \
         would get schema_mismatch. Serve the target with the source's schema (or move into \
         an empty database)"
    )]
    SchemaDiffers,
    /// The export and the import disagree on what was moved.
    #[error("the export announced {announced} {what} but delivered {delivered}")]
    Incomplete {
        what: &'static str,
        announced: u64,
        delivered: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}
