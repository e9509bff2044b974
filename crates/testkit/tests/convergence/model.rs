//! What the apps wrote: every write of every row, with the version Ferry's triggers gave it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A row's columns and values.
pub(crate) type Data = Map<String, Value>;

/// A row: its table and its key (every table of the point-of-sale schema has a text `id`).
pub(crate) type RowId = (String, String);

/// One write of a row, made by the app of one device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub(crate) device: usize,
    pub(crate) version: String,
    /// The row as the write left it; `None` for a delete.
    pub(crate) data: Option<Data>,
}

/// Every write the apps made, by row.
#[derive(Debug, Default)]
pub(crate) struct Model {
    writes: BTreeMap<RowId, Vec<Write>>,
    /// Two writes that got the same version: a broken clock (checked with the rest).
    pub(crate) equal_versions: Vec<String>,
}

impl Model {
    pub(crate) fn record(&mut self, row: RowId, write: Write) {
        let writes = self.writes.entry(row.clone()).or_default();
        if writes.iter().any(|w| w.version == write.version) {
            self.equal_versions.push(format!(
                "{} {}: two writes got version {}",
                row.0, row.1, write.version
            ));
        }
        writes.push(write);
    }

    pub(crate) fn rows(&self) -> impl Iterator<Item = &RowId> {
        self.writes.keys()
    }

    pub(crate) fn writes(&self, row: &RowId) -> &[Write] {
        self.writes.get(row).map_or(&[], Vec::as_slice)
    }

    /// How many writes were made in all.
    pub(crate) fn len(&self) -> usize {
        self.writes.values().map(Vec::len).sum()
    }
}

/// The writes that must have reached the server: all but those still waiting, rejected, on
/// their device (`withheld` versions), and those their own device wrote over (greater version)
/// with a write that is waiting: a device pushes a row as it is, so the writes it made over
/// before a push never leave it, and only a later one that got through shows that they did.
pub(crate) fn delivered<'a>(writes: &'a [Write], withheld: &[String]) -> Vec<&'a Write> {
    let waiting: Vec<&Write> = writes
        .iter()
        .filter(|w| withheld.contains(&w.version))
        .collect();
    writes
        .iter()
        .filter(|w| {
            !waiting
                .iter()
                .any(|later| later.device == w.device && later.version >= w.version)
        })
        .collect()
}
