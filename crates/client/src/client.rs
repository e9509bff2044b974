//! The public client: pairing, opening a paired file, and running cycles.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::local::{CycleReport, CycleTrigger};
use ferry_proto::{PairRequest, SyncDevicesResponse};

use crate::changes::ChangeStream;
use crate::cycle::{self, Progress};
use crate::error::{Error, Result};
use crate::http::Http;
use crate::replica::{LocalConflict, Pairing, PushLimit, Replica, ReplicaOptions};

/// How the client talks to the server and shares the file with the app.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Most changes in one push request. Rows that reference each other in a cycle go in one
    /// request, however many they are. (A server takes 10,000 by default; a batch over its
    /// limit is split, as `push_batch_bytes` says.)
    pub push_batch: usize,
    /// Most bytes of change JSON in one push request; a row larger than this goes on its own,
    /// and so do rows that must go together. Half the server's default body limit (16 MiB),
    /// so a batch of the default size is always taken; a server with a smaller limit refuses
    /// a larger one (`413`), and the cycle splits it and sends the pieces.
    pub push_batch_bytes: usize,
    /// The `limit` of each pull request (the server may cap it).
    pub pull_limit: u32,
    /// How long the health check may take before the device counts as offline.
    pub health_timeout: Duration,
    /// How long any other request may take.
    pub request_timeout: Duration,
    /// How the engine shares the file with the app while it writes.
    pub replica: ReplicaOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            push_batch: 1_000,
            push_batch_bytes: 8 * 1024 * 1024,
            pull_limit: 10_000,
            health_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            replica: ReplicaOptions::default(),
        }
    }
}

impl ClientOptions {
    /// The size of the cycle's push batches.
    pub(crate) fn push_limit(&self) -> PushLimit {
        PushLimit {
            rows: self.push_batch.max(1),
            bytes: self.push_batch_bytes.max(1),
        }
    }

    fn replica(&self) -> ReplicaOptions {
        ReplicaOptions {
            apply_max_rows: self.replica.apply_max_rows.max(1),
            ..self.replica.clone()
        }
    }
}

/// The outcome of pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    pub device_id: String,
    pub tenant: String,
}

/// Pairs the app's database at `db_path` with a server: checks that the file can take the
/// server's schema, redeems the one-time `code`, and installs change tracking (creating missing
/// tables, adopting existing rows as dirty).
///
/// A pairing that cannot succeed on this file (an existing table's schema differs from the
/// server's, naming the tables; the file or its directory cannot be written) fails before the
/// code is redeemed, so the code stays good for another try and the server gets no device. A
/// file that is already paired is refused ([`Error::AlreadyPaired`]) unless `force`: then the
/// old identity is revoked on its server once the new one is in place, and the file's
/// unsynced changes sync under the new one ([`pair_again`]).
pub async fn pair(
    server_url: &str,
    code: &str,
    db_path: &Path,
    name: &str,
    platform: &str,
    options: ClientOptions,
) -> Result<Paired> {
    let force = false;
    let device = NewDevice {
        name,
        platform,
        force,
    };
    pair_file(server_url, code, db_path, device, options).await
}

/// [`pair`] for a file that may be paired already: its old identity is revoked once the new
/// one is in place.
pub async fn pair_again(
    server_url: &str,
    code: &str,
    db_path: &Path,
    name: &str,
    platform: &str,
    options: ClientOptions,
) -> Result<Paired> {
    let force = true;
    let device = NewDevice {
        name,
        platform,
        force,
    };
    pair_file(server_url, code, db_path, device, options).await
}

/// What a pairing names the device, and whether it may replace the file's pairing.
struct NewDevice<'a> {
    name: &'a str,
    platform: &'a str,
    force: bool,
}

async fn pair_file(
    server_url: &str,
    code: &str,
    db_path: &Path,
    device: NewDevice<'_>,
    options: ClientOptions,
) -> Result<Paired> {
    let NewDevice {
        name,
        platform,
        force,
    } = device;
    let anonymous = Http::new(server_url, None, options.request_timeout)?;
    let schema = anonymous.schema_with_code(code).await?;
    let replica_options = options.replica();
    let previous = {
        let (path, ddl, replica_options) = (
            db_path.to_path_buf(),
            schema.ddl.clone(),
            replica_options.clone(),
        );
        tokio::task::spawn_blocking(move || Replica::preflight(&path, &ddl, &replica_options))
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    if let Some(previous) = &previous
        && !force
    {
        return Err(Error::AlreadyPaired {
            path: db_path.to_path_buf(),
            device_id: previous.device_id.clone(),
            server_url: previous.server_url.clone(),
        });
    }
    let paired = anonymous
        .pair(&PairRequest {
            code: code.to_string(),
            name: name.to_string(),
            platform: Some(platform.to_string()),
        })
        .await?;
    let device = Http::new(
        server_url,
        Some(paired.token.clone()),
        options.request_timeout,
    )?;
    let pairing = Pairing {
        server_url: device.base().to_string(),
        device_id: paired.device_id.clone(),
        tenant: paired.tenant.clone(),
        token: paired.token,
    };
    let path = db_path.to_path_buf();
    let ddl = schema.ddl.clone();
    tokio::task::spawn_blocking(move || {
        let mut replica = Replica::install(&path, &ddl, &pairing.device_id, replica_options)?;
        let local_hash = ferry_schema::hash(replica.schema());
        if !local_hash.eq_ignore_ascii_case(&schema.schema_hash) {
            tracing::warn!(
                device = %local_hash,
                server = %schema.schema_hash,
                "The server's schema DDL hashes differently here than on the server."
            );
        }
        replica.save_pairing(&pairing)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    tracing::info!(device_id = %paired.device_id, tenant = %paired.tenant, "The device is paired.");
    if let Some(previous) = previous {
        revoke_previous(&previous, options.request_timeout).await;
    }
    Ok(Paired {
        device_id: paired.device_id,
        tenant: paired.tenant,
    })
}

/// Revokes the identity a file held before it was paired again. Its server may be gone or
/// may already have revoked it; the new pairing stands either way, and an admin can revoke
/// the old device from the devices list.
async fn revoke_previous(previous: &Pairing, timeout: Duration) {
    let outcome = match Http::new(&previous.server_url, Some(previous.token.clone()), timeout) {
        Ok(http) => http.revoke_self().await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) | Err(Error::Unauthorized { .. }) => {
            tracing::info!(device_id = %previous.device_id, "The file's previous identity is revoked.");
        }
        Err(error) => tracing::warn!(
            device_id = %previous.device_id,
            server = %previous.server_url,
            %error,
            "The file's previous identity could not be revoked; an admin can revoke it."
        ),
    }
}

/// A paired device database and its server. Cheap to clone (clones share one engine
/// connection and run one cycle at a time); `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What clones of a client share.
pub(crate) struct Inner {
    pub(crate) replica: Mutex<Replica>,
    pub(crate) http: Http,
    pub(crate) device_id: String,
    pub(crate) options: ClientOptions,
    /// Held for the whole of a cycle: cycles of one client never overlap.
    pub(crate) cycle: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.inner.device_id)
            .field("server_url", &self.inner.http.base())
            .finish()
    }
}

impl Client {
    /// Opens a paired database. Fails with [`Error::NotPaired`] when the file was never paired.
    pub fn open(db_path: &Path, options: ClientOptions) -> Result<Client> {
        let replica = Replica::open(db_path, options.replica())?;
        let pairing = replica
            .pairing()?
            .ok_or_else(|| Error::NotPaired(db_path.to_path_buf()))?;
        let http = Http::new(
            &pairing.server_url,
            Some(pairing.token),
            options.request_timeout,
        )?;
        Ok(Client {
            inner: Arc::new(Inner {
                replica: Mutex::new(replica),
                http,
                device_id: pairing.device_id,
                options,
                cycle: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Runs one full cycle (health, push, pull) and returns its report, which is also logged.
    /// Never fails: errors go into the report (`ok: false`, `error`); see
    /// [`is_offline_error`](crate::is_offline_error). A cycle started while another runs waits
    /// for it.
    pub async fn sync(
        &self,
        trigger: CycleTrigger,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> CycleReport {
        cycle::sync(&self.inner, trigger, progress).await
    }

    /// Pulls everything from the beginning with the cloud authoritative: every pulled row
    /// (this device's own included) overwrites the local one, and each unpushed local change
    /// it overwrites is kept in the local conflict record. Nothing is pushed; local rows the
    /// cloud does not have stay as they are (dirty ones are pushed by the next cycle). The
    /// report's trigger is `force_pull`.
    ///
    /// This is the remedy for a file restored from a backup: its normal cycles pull
    /// incrementally from the cursor the backup holds and leave out rows this device pushed
    /// after it, which a force pull brings back.
    pub async fn force_pull(&self, progress: &(dyn Fn(Progress) + Send + Sync)) -> CycleReport {
        cycle::force_pull(&self.inner, progress).await
    }

    /// The devices of this device's tenant, as the server lists them (`GET /api/sync/devices`),
    /// this one marked: what a Devices panel shows. Asks the server every time, within the
    /// health check's timeout (someone is looking at the panel); [`Error::Offline`] when the
    /// server cannot be reached. Runs beside a cycle, never waits for one.
    pub async fn devices(&self) -> Result<SyncDevicesResponse> {
        let timeout = self.inner.options.health_timeout;
        self.inner.http.devices(timeout).await
    }

    /// Opens the device's change stream (`GET /api/sync/stream`): the cursors of changes
    /// other devices committed. A cursor this device has not pulled to
    /// ([`Client::has_pulled`]) is worth a cycle now. [`Error::Offline`] when the server
    /// cannot be reached; a server too old to stream answers with a `404` [`Error::Server`].
    pub async fn changes(&self) -> Result<ChangeStream> {
        self.inner.http.changes().await
    }

    /// Whether this device's pulls have reached `cursor` (a cursor from [`Client::changes`]):
    /// its saved cursor is that one.
    pub fn has_pulled(&self, cursor: &str) -> Result<bool> {
        self.replica(|r| Ok(r.cursor()?.as_deref() == Some(cursor)))
    }

    /// The device the file is paired as now, when that is no longer this client's device:
    /// the file was paired again (`ferry agent pair --force`) while this client had it open,
    /// and this client's identity is revoked. `None` while the file is still this device's.
    pub fn replaced_by(&self) -> Result<Option<String>> {
        let now = self.replica(|r| r.pairing())?;
        Ok(match now {
            Some(pairing) if pairing.device_id == self.inner.device_id => None,
            Some(pairing) => Some(pairing.device_id),
            None => Some("no device".to_owned()),
        })
    }

    /// Changes waiting to be pushed: dirty rows plus dirty tombstones.
    pub fn pending(&self) -> Result<u64> {
        self.replica(|r| r.pending())
    }

    /// When the last cycle that got through push and pull finished.
    pub fn last_synced_at(&self) -> Result<Option<String>> {
        self.replica(|r| r.last_synced_at())
    }

    /// The newest `limit` cycle reports, newest first.
    pub fn log(&self, limit: usize) -> Result<Vec<CycleReport>> {
        self.replica(|r| r.log(limit))
    }

    /// Local changes that pulls overwrote before they were pushed, oldest first.
    pub fn conflicts(&self) -> Result<Vec<LocalConflict>> {
        self.replica(|r| r.conflicts())
    }

    pub fn device_id(&self) -> &str {
        &self.inner.device_id
    }

    pub fn server_url(&self) -> &str {
        self.inner.http.base()
    }

    /// Quick reads on the calling thread (they wait at most for one short engine transaction).
    fn replica<T>(&self, read: impl FnOnce(&Replica) -> Result<T>) -> Result<T> {
        let replica = self
            .inner
            .replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read(&replica)
    }
}
