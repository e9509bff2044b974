//! The invariants, checked once the devices are quiet:
//!
//! 1. Every device holds the server's rows: the same live rows, with the same values and
//!    versions, but for the rows it still has dirty.
//! 2. A row stays dirty only when the server rejected it with a reason: it references a row
//!    that the server does not hold live and that the device cannot send either (it does not
//!    have it, or that row is stuck in turn; rows that only reference each other are no
//!    reason, they go together), its device's last cycle reported exactly that many rejected
//!    rows with `fk_violation`, and it is the device's own latest write of the row, newer than
//!    what the server holds. No delete stays dirty.
//! 3. No write is lost unless a greater version of the same row won: for every row any app
//!    wrote, the server holds, values included (or as a tombstone), the write with the
//!    greatest version among those that must have reached it, or a greater one that may have
//!    (see `model::delivered`), and no row that no app wrote; and every write that must have
//!    reached it and lost is kept by a conflict record, the server's or its device's (but for
//!    one its own device wrote over, or a delete that lost to a delete).
//! 4. A fresh device's full pull is the server's live rows, all clean.
//! 5. No two writes got the same version.

use std::collections::{BTreeMap, BTreeSet};

use ferry_client::CycleReport;
use ferry_proto::RowChange;
use ferry_store::{ConflictQuery, Cursor, DEFAULT_TENANT, DeviceKey, PageLimit};
use ferry_testkit::{TestDevice, TestServer};
use serde_json::Value;

use super::app::{self, TABLES, shape};
use super::model::{Data, Model, RowId, delivered};

/// A row as the server holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerRow {
    version: String,
    /// `None` for a tombstone.
    data: Option<Data>,
}

/// A live row in a device's file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceRow {
    version: Option<String>,
    dirty: bool,
    data: Data,
}

/// One device's file after the run.
#[derive(Debug)]
pub(crate) struct DeviceState {
    name: String,
    rows: BTreeMap<RowId, DeviceRow>,
    /// Keys of deletes not confirmed yet.
    dirty_tombstones: Vec<String>,
    pending: u64,
    last_report: CycleReport,
}

impl DeviceState {
    pub(crate) fn dirty_rows(&self) -> usize {
        self.rows.values().filter(|r| r.dirty).count()
    }
}

/// Everything the checks look at.
pub(crate) struct Observed {
    pub(crate) server: BTreeMap<RowId, ServerRow>,
    pub(crate) devices: Vec<DeviceState>,
    pub(crate) fresh: DeviceState,
    /// Losing versions kept by the server's conflict log and the devices' local conflict
    /// records, by row.
    pub(crate) recorded: BTreeSet<(RowId, String)>,
}

/// Whether a report failed only because the server rejected rows (which stay dirty).
pub(crate) fn only_rejections(report: &CycleReport) -> bool {
    !report.ok
        && report.rejected > 0
        && report
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("The server rejected"))
}

/// Every row the server holds, tombstones included, read from the store itself (a pull from
/// the beginning in the name of `observer`, a device of the tenant).
pub(crate) async fn server_rows(server: &TestServer, observer: &str) -> BTreeMap<RowId, ServerRow> {
    let key = DeviceKey {
        tenant: DEFAULT_TENANT.to_owned(),
        device_id: observer.to_owned(),
    };
    let mut rows = BTreeMap::new();
    let mut since = Cursor::START;
    loop {
        let page = server
            .store
            .pull(&key, since, PageLimit::rows(1_000))
            .await
            .expect("the store's rows");
        let changes: Vec<RowChange> =
            serde_json::from_str(&page.changes_json).expect("the store's changes");
        for change in changes {
            let id = id_of(&change.pk);
            let data = (!change.deleted).then(|| change.data.expect("a live row's data"));
            rows.insert(
                (change.table, id),
                ServerRow {
                    version: change.version,
                    data,
                },
            );
        }
        if !page.has_more {
            return rows;
        }
        since = page.cursor;
    }
}

/// The losing versions the server's conflict log keeps.
pub(crate) async fn server_conflicts(server: &TestServer) -> BTreeSet<(RowId, String)> {
    let query = ConflictQuery {
        limit: 1_000_000,
        ..ConflictQuery::default()
    };
    let conflicts = server
        .store
        .conflicts(DEFAULT_TENANT, query)
        .await
        .expect("the conflict log");
    conflicts
        .into_iter()
        .map(|c| ((c.table, id_of(&c.pk)), c.loser_version))
        .collect()
}

/// The local changes a device's pulls overwrote, as its conflict record keeps them.
pub(crate) fn local_conflicts(device: &TestDevice) -> BTreeSet<(RowId, String)> {
    let conflicts = device
        .client
        .conflicts()
        .expect("the local conflict record");
    conflicts
        .into_iter()
        .filter_map(|c| Some(((c.table, id_of(&c.pk)), c.local_version?)))
        .collect()
}

fn id_of(pk: &Data) -> String {
    match pk.get("id") {
        Some(Value::String(id)) => id.clone(),
        other => panic!("a key {other:?}"),
    }
}

/// A device's rows and what it still has to push.
pub(crate) fn device_state(
    name: &str,
    device: &TestDevice,
    last_report: CycleReport,
) -> DeviceState {
    let app = device.app();
    let mut rows = BTreeMap::new();
    for table in TABLES {
        let shape = shape(table);
        let sql = format!(
            "SELECT {}, _ferryVersion, _isDirty FROM {table}",
            shape.columns.join(", ")
        );
        let mut stmt = app.prepare(&sql).expect("read the device's rows");
        let mut found = stmt.query([]).expect("read the device's rows");
        while let Some(r) = found.next().expect("read the device's rows") {
            let mut data = Data::new();
            for (i, column) in shape.columns.iter().enumerate() {
                data.insert(column.clone(), app::to_json(r.get_ref(i).expect("a value")));
            }
            let id = data["id"].as_str().expect("a text id").to_owned();
            let row = DeviceRow {
                version: r.get(shape.columns.len()).expect("a version"),
                dirty: r.get::<_, i64>(shape.columns.len() + 1).expect("a flag") != 0,
                data,
            };
            rows.insert((table.to_owned(), id), row);
        }
    }
    let mut stmt = app
        .prepare("SELECT tbl || ' ' || pk FROM _ferry_tombstones WHERE _isDirty = 1")
        .expect("read the device's tombstones");
    let dirty_tombstones = stmt
        .query_map([], |r| r.get(0))
        .expect("read the device's tombstones")
        .collect::<Result<_, _>>()
        .expect("read the device's tombstones");
    DeviceState {
        name: format!("{name} ({})", device.client.device_id()),
        rows,
        dirty_tombstones,
        pending: device.client.pending().expect("pending changes"),
        last_report,
    }
}

/// How many live categories on the server are their own ancestor: the rows of reference
/// loops, which reach the server only in one batch.
pub(crate) fn categories_in_loops(server: &BTreeMap<RowId, ServerRow>) -> usize {
    let parent = |id: &str| {
        let row = server.get(&("categories".to_owned(), id.to_owned()))?;
        row.data.as_ref()?.get("parent_id")?.as_str()
    };
    let categories: Vec<&RowId> = server
        .keys()
        .filter(|(table, _)| table == "categories")
        .collect();
    categories
        .iter()
        .filter(|(_, id)| {
            let mut at = id.as_str();
            // A loop is no longer than the list of categories.
            (0..categories.len()).any(|_| match parent(at) {
                Some(next) => {
                    at = next;
                    at == id
                }
                None => false,
            })
        })
        .count()
}

/// Every broken invariant, as sentences.
pub(crate) fn check(model: &Model, observed: &Observed) -> Vec<String> {
    let mut problems = model.equal_versions.clone();
    let server = &observed.server;
    // Writes still waiting, rejected, on their device, by row.
    let mut withheld: BTreeMap<&RowId, Vec<String>> = BTreeMap::new();
    for (index, device) in observed.devices.iter().enumerate() {
        for (row, local) in device.rows.iter().filter(|(_, r)| r.dirty) {
            problems.extend(check_rejected(model, server, index, device, row, local));
            withheld
                .entry(row)
                .or_default()
                .extend(local.version.clone());
        }
        problems.extend(check_rejections_reported(device));
        problems.extend(compare_with_server(device, server));
    }
    problems.extend(check_writes(model, server, &withheld, &observed.recorded));

    let fresh = &observed.fresh;
    if fresh.pending > 0 || !fresh.last_report.ok {
        problems.push(format!(
            "a fresh device has {} changes pending after its first cycle ({:?})",
            fresh.pending, fresh.last_report
        ));
    }
    problems.extend(compare_with_server(fresh, server));
    problems
}

/// A dirty row must be the device's own latest write, newer than the server's, and rejected
/// for a reason (see [`stuck_parent`]).
fn check_rejected(
    model: &Model,
    server: &BTreeMap<RowId, ServerRow>,
    index: usize,
    device: &DeviceState,
    row: &RowId,
    local: &DeviceRow,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (table, id) = row;
    if stuck_parent(server, device, row, &mut Vec::new()).is_none() {
        problems.push(format!(
            "{}: {table} {id} stays dirty, though every row it references is on the server or \
             could go there with it",
            device.name
        ));
    }
    let own_latest = model
        .writes(row)
        .iter()
        .filter(|w| w.device == index)
        .max_by(|a, b| a.version.cmp(&b.version));
    let matches = own_latest.is_some_and(|w| {
        Some(&w.version) == local.version.as_ref() && w.data.as_ref() == Some(&local.data)
    });
    if !matches {
        problems.push(format!(
            "{}: {table} {id} is dirty at {:?} with {:?}, which is not the app's latest write \
             there ({own_latest:?})",
            device.name, local.version, local.data
        ));
    }
    if let Some(stored) = server.get(row)
        && local.version.as_ref() <= Some(&stored.version)
    {
        problems.push(format!(
            "{}: {table} {id} is dirty at {:?}, not newer than the server's {}: the pull \
                 should have replaced it",
            device.name, local.version, stored.version
        ));
    }
    problems
}

/// Why the server cannot take a dirty row: the row it names through a reference that the
/// server does not hold live and the device cannot send either, because the device does not
/// have it (another device deleted it) or has it stuck in turn. Rows that only wait for each
/// other (two categories that are each other's parent) have no such reason: the device can
/// send them together. `path` holds the rows being looked at, to find those loops.
fn stuck_parent(
    server: &BTreeMap<RowId, ServerRow>,
    device: &DeviceState,
    row: &RowId,
    path: &mut Vec<RowId>,
) -> Option<RowId> {
    let local = device.rows.get(row)?;
    path.push(row.clone());
    let stuck = shape(&row.0).refs.iter().find_map(|r| {
        let Value::String(id) = &local.data[&r.column] else {
            return None; // No reference.
        };
        let parent = (r.parent.clone(), id.clone());
        if server.get(&parent).is_some_and(|p| p.data.is_some()) || path.contains(&parent) {
            return None;
        }
        let here = device.rows.get(&parent);
        let stuck = match here {
            None => true,
            Some(p) => p.dirty && stuck_parent(server, device, &parent, path).is_some(),
        };
        stuck.then_some(parent)
    });
    path.pop();
    stuck
}

/// A device with rows left dirty says so in its last report: that many rejected, for missing
/// parents; a device with none reports success. Deletes are never left.
fn check_rejections_reported(device: &DeviceState) -> Vec<String> {
    let mut problems = Vec::new();
    let dirty = device.dirty_rows();
    if !device.dirty_tombstones.is_empty() {
        problems.push(format!(
            "{}: deletes still dirty: {:?}",
            device.name, device.dirty_tombstones
        ));
    }
    if device.pending != (dirty + device.dirty_tombstones.len()) as u64 {
        problems.push(format!(
            "{}: {} changes pending, but {dirty} dirty rows and {} dirty deletes",
            device.name,
            device.pending,
            device.dirty_tombstones.len()
        ));
    }
    let report = &device.last_report;
    let reported = if dirty == 0 {
        report.ok
    } else {
        only_rejections(report)
            && report.rejected == dirty as u64
            && report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("fk_violation"))
    };
    if !reported {
        problems.push(format!(
            "{}: {dirty} rows stay dirty, but its last cycle reported {report:?}",
            device.name
        ));
    }
    problems
}

/// The device's clean rows are the server's live rows, values and versions alike.
fn compare_with_server(device: &DeviceState, server: &BTreeMap<RowId, ServerRow>) -> Vec<String> {
    let mut problems = Vec::new();
    let live: BTreeMap<&RowId, (&String, &Data)> = server
        .iter()
        .filter_map(|(row, s)| s.data.as_ref().map(|data| (row, (&s.version, data))))
        .collect();
    let keys: BTreeSet<&RowId> = live.keys().copied().chain(device.rows.keys()).collect();
    for row in keys {
        let local = device.rows.get(row);
        if local.is_some_and(|l| l.dirty) {
            continue; // Checked as a rejection.
        }
        let local = local.map(|l| (l.version.as_ref(), &l.data));
        let stored = live.get(row).map(|&(version, data)| (Some(version), data));
        if local != stored {
            problems.push(format!(
                "{}: {} {} is {local:?} there but {stored:?} on the server",
                device.name, row.0, row.1
            ));
        }
    }
    problems
}

/// For every row, the server holds one of the writes that may have reached it, at a version
/// at least as great as every write that must have (see [`delivered`]): the greatest of
/// those, or one its own device wrote over later. Each write that must have reached it and
/// lost is in a conflict record, the server's or its device's, unless its own device wrote
/// over it or it was a delete that lost to a later delete.
fn check_writes(
    model: &Model,
    server: &BTreeMap<RowId, ServerRow>,
    withheld: &BTreeMap<&RowId, Vec<String>>,
    recorded: &BTreeSet<(RowId, String)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let rows: BTreeSet<&RowId> = model.rows().chain(server.keys()).collect();
    for row in rows {
        let writes = model.writes(row);
        let waiting = withheld.get(row).map_or(&[][..], Vec::as_slice);
        let delivered = delivered(writes, waiting);
        let newest = delivered.iter().max_by(|a, b| a.version.cmp(&b.version));
        let stored = server.get(row);
        let holds = match stored {
            None => newest.is_none(),
            Some(stored) => {
                let written = writes.iter().any(|w| {
                    w.version == stored.version
                        && w.data == stored.data
                        && !waiting.contains(&w.version)
                });
                written && newest.is_none_or(|w| w.version <= stored.version)
            }
        };
        if !holds {
            problems.push(format!(
                "{} {}: the server holds {stored:?}, but the newest write that must have \
                 reached it is {newest:?} (writes: {writes:?}; waiting on devices: {waiting:?})",
                row.0, row.1
            ));
        }
        let unrecorded = delivered.iter().filter(|w| {
            let lost = stored.is_none_or(|s| s.version != w.version);
            let overwritten_by_itself = writes
                .iter()
                .any(|later| later.device == w.device && later.version > w.version);
            let deleted_anyway = w.data.is_none()
                && writes
                    .iter()
                    .any(|later| later.data.is_none() && later.version > w.version);
            lost && !overwritten_by_itself
                && !deleted_anyway
                && !recorded.contains(&(row.clone(), w.version.clone()))
        });
        for write in unrecorded {
            problems.push(format!(
                "{} {}: {write:?} lost to {stored:?}, and no conflict record keeps it",
                row.0, row.1
            ));
        }
    }
    problems
}
