//! Dirty rows that can only be pushed together: rows whose references form a cycle, such as two
//! categories that are each other's parent (valid in the app's file, where foreign keys may be
//! off or deferred). The server accepts a row only when its parents are stored or in the same
//! batch, so no order of separate batches delivers any of them: each such group goes whole into
//! one batch.

use std::collections::HashMap;

use ferry_core::order::strongly_connected;
use ferry_core::{ForeignKey, Schema};
use ferry_proto::RowChange;
use ferry_schema::{DIRTY_COLUMN, quote_ident};
use rusqlite::types::Value as SqlValue;
use serde_json::Map;

use super::Replica;
use crate::error::Result;
use crate::values;

/// The groups of one push pass: the strongly connected components, of two rows or more, of the
/// references among the dirty rows as they were when the pass began.
#[derive(Debug, Clone, Default)]
pub(super) struct Groups {
    groups: Vec<Group>,
    /// Each member's group, by table and key text.
    by_row: HashMap<(usize, String), usize>,
    /// The tables that have members: rows of the others are not looked up.
    tables: Vec<bool>,
}

#[derive(Debug, Clone)]
struct Group {
    members: Vec<Member>,
    /// Whether the group went into a batch of this pass already.
    sent: bool,
}

/// A row of a group: its table and key values.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) table: usize,
    pub(super) key: Vec<SqlValue>,
}

impl Groups {
    /// The group of a row read for push, if it is in one.
    pub(super) fn of(&self, schema: &Schema, table: usize, change: &RowChange) -> Option<usize> {
        if !self.tables.get(table).copied().unwrap_or(false) {
            return None;
        }
        let key = schema.tables.get(table)?.key_of(&change.pk).ok()?;
        self.by_row.get(&(table, key)).copied()
    }

    pub(super) fn members(&self, group: usize) -> &[Member] {
        &self.groups[group].members
    }

    pub(super) fn is_sent(&self, group: usize) -> bool {
        self.groups[group].sent
    }

    pub(super) fn mark_sent(&mut self, group: usize) {
        self.groups[group].sent = true;
    }
}

/// A dirty row of a table on a cycle of the schema, as the search for groups sees it.
struct Node {
    member: Member,
    key_text: String,
    /// The rows it references through foreign keys that stay on its table's cycle, by table
    /// and key text (itself left out).
    references: Vec<(usize, String)>,
}

impl Replica {
    /// Finds the groups among the dirty rows as they are now. Only tables whose foreign keys
    /// form a cycle in the schema (a self-reference included) can hold one, so only their dirty
    /// rows are read, and of them only the key and the references that stay on that cycle.
    pub(super) fn find_groups(&self) -> Result<Groups> {
        let tables = self.schema.tables.len();
        let parents: Vec<Vec<usize>> = self
            .schema
            .tables
            .iter()
            .map(|t| {
                t.foreign_keys
                    .iter()
                    .filter_map(|fk| self.by_name.get(&fk.parent).copied())
                    .collect()
            })
            .collect();
        let mut cycle_of: Vec<Option<usize>> = vec![None; tables];
        for (cycle, component) in strongly_connected(&parents).into_iter().enumerate() {
            let on_cycle = component.len() > 1 || parents[component[0]].contains(&component[0]);
            if on_cycle {
                for &table in &component {
                    cycle_of[table] = Some(cycle);
                }
            }
        }
        let mut groups = Groups {
            tables: vec![false; tables],
            ..Groups::default()
        };
        if cycle_of.iter().all(Option::is_none) {
            return Ok(groups);
        }

        let mut nodes = Vec::new();
        for (table, cycle) in cycle_of.iter().enumerate() {
            let Some(cycle) = cycle else {
                continue;
            };
            let on_cycle: Vec<(&ForeignKey, usize)> = self.schema.tables[table]
                .foreign_keys
                .iter()
                .filter_map(|fk| {
                    let parent = *self.by_name.get(&fk.parent)?;
                    (cycle_of[parent] == Some(*cycle)).then_some((fk, parent))
                })
                .collect();
            self.read_nodes(table, &on_cycle, &mut nodes)?;
        }
        let node_of: HashMap<(usize, &str), usize> = nodes
            .iter()
            .enumerate()
            .map(|(id, node)| ((node.member.table, node.key_text.as_str()), id))
            .collect();
        let successors: Vec<Vec<usize>> = nodes
            .iter()
            .map(|node| {
                node.references
                    .iter()
                    .filter_map(|(table, key)| node_of.get(&(*table, key.as_str())).copied())
                    .collect()
            })
            .collect();
        drop(node_of);

        let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        for component in strongly_connected(&successors) {
            if component.len() < 2 {
                continue;
            }
            let group = groups.groups.len();
            // In a stable order: by table, then key.
            let mut component: Vec<Node> = component
                .into_iter()
                .filter_map(|id| nodes[id].take())
                .collect();
            component
                .sort_by(|a, b| (a.member.table, &a.key_text).cmp(&(b.member.table, &b.key_text)));
            let mut members = Vec::with_capacity(component.len());
            for node in component {
                groups.tables[node.member.table] = true;
                groups
                    .by_row
                    .insert((node.member.table, node.key_text), group);
                members.push(node.member);
            }
            groups.groups.push(Group {
                members,
                sent: false,
            });
        }
        Ok(groups)
    }

    /// Reads the dirty rows of `table`, a table on a cycle of the schema, as nodes: each with
    /// the rows it references through `on_cycle`, its foreign keys that stay on the cycle (each
    /// with its parent table).
    fn read_nodes(
        &self,
        table: usize,
        on_cycle: &[(&ForeignKey, usize)],
        nodes: &mut Vec<Node>,
    ) -> Result<()> {
        let t = &self.schema.tables[table];
        // The key's columns, then those of the references, each once.
        let mut columns: Vec<&str> = t.primary_key.iter().map(String::as_str).collect();
        for (fk, _) in on_cycle {
            for column in &fk.columns {
                if !columns.contains(&column.as_str()) {
                    columns.push(column);
                }
            }
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = 1",
            columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            quote_ident(&t.name),
            quote_ident(DIRTY_COLUMN)
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        let key_columns = t.primary_key.len();
        while let Some(row) = rows.next()? {
            let mut key = Vec::with_capacity(key_columns);
            let mut pk = Map::new();
            let mut data = Map::new();
            for (i, column) in columns.iter().enumerate() {
                let value = row.get_ref(i)?;
                if i < key_columns {
                    key.push(SqlValue::from(value));
                    pk.insert((*column).to_owned(), values::to_json(value));
                }
                data.insert((*column).to_owned(), values::to_json(value));
            }
            // A key the server would refuse anyway puts the row in no group.
            let Ok(key_text) = t.key_of(&pk) else {
                continue;
            };
            let references = on_cycle
                .iter()
                .filter_map(|&(fk, parent)| {
                    let parent_key = t
                        .parent_key_of(fk, &self.schema.tables[parent], &data)
                        .ok()??;
                    // A row that references itself needs no other row.
                    (parent != table || parent_key != key_text).then_some((parent, parent_key))
                })
                .collect();
            nodes.push(Node {
                member: Member { table, key },
                key_text,
                references,
            });
        }
        Ok(())
    }
}
