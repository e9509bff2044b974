//! The SQL the engine runs against one synced table, built once when the replica opens.

use ferry_core::{Affinity, Table};
use ferry_schema::{DIRTY_COLUMN, SYNCED_AT_COLUMN, VERSION_COLUMN, quote_ident};

use super::ApplyMode;

/// A synced table and the SQL the engine runs against it.
///
/// Pull-side statements number their parameters by column position (`?1` is the first column,
/// `?n+1` the sync time, `?n+2` the version), so one binding routine serves all of them.
/// Push-side statements number key columns in key order.
#[derive(Debug)]
pub(super) struct TableSql {
    pub(super) name: String,
    pub(super) columns: Vec<String>,
    pub(super) affinities: Vec<Affinity>,
    pub(super) is_key: Vec<bool>,
    /// Positions of the key columns, in key order.
    pub(super) key: Vec<usize>,
    pub(super) upsert_lww: String,
    pub(super) upsert_force: String,
    pub(super) overwrite: String,
    pub(super) lookup: String,
    pub(super) select_data: String,
    pub(super) delete: String,
    pub(super) dirty_first: String,
    pub(super) dirty_after: String,
    pub(super) dirty_one: String,
    pub(super) count_dirty: String,
    pub(super) stamp: String,
}

impl TableSql {
    pub(super) fn new(table: &Table) -> TableSql {
        let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let is_key: Vec<bool> = columns
            .iter()
            .map(|c| table.primary_key.contains(c))
            .collect();
        let key: Vec<usize> = table
            .primary_key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .expect("key columns exist")
            })
            .collect();
        let name = quote_ident(&table.name);
        let all = vec![true; columns.len()];
        let by_position = |positions: &[usize]| {
            positions
                .iter()
                .map(|&p| format!("{} = ?{}", quote_ident(&columns[p]), p + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let by_key_index = |first: usize| {
            table
                .primary_key
                .iter()
                .enumerate()
                .map(|(j, c)| format!("{} = ?{}", quote_ident(c), first + j))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let key_list = table
            .primary_key
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let key_params = (1..=key.len())
            .map(|j| format!("?{j}"))
            .collect::<Vec<_>>()
            .join(", ");
        let data_list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let dirty = quote_ident(DIRTY_COLUMN);
        let version = quote_ident(VERSION_COLUMN);
        let synced_at = quote_ident(SYNCED_AT_COLUMN);
        let limit = key.len() + 1;
        let mut sql = TableSql {
            upsert_lww: String::new(),
            upsert_force: String::new(),
            overwrite: String::new(),
            lookup: format!(
                "SELECT {version}, {dirty} FROM {name} WHERE {}",
                by_position(&key)
            ),
            select_data: format!("SELECT {data_list} FROM {name} WHERE {}", by_position(&key)),
            delete: format!("DELETE FROM {name} WHERE {}", by_position(&key)),
            dirty_first: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 \
                 ORDER BY {key_list} LIMIT ?1"
            ),
            dirty_after: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 \
                 AND ({key_list}) > ({key_params}) ORDER BY {key_list} LIMIT ?{limit}"
            ),
            dirty_one: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 AND {}",
                by_key_index(1)
            ),
            count_dirty: format!("SELECT count(*) FROM {name} WHERE {dirty} = 1"),
            stamp: format!(
                "UPDATE {name} SET {dirty} = 0, {synced_at} = ?1 WHERE {version} = ?2 AND {}",
                by_key_index(3)
            ),
            name: table.name.clone(),
            columns,
            affinities: table.columns.iter().map(|c| c.affinity).collect(),
            is_key,
            key,
        };
        sql.upsert_lww = sql.upsert_sql(&all, ApplyMode::LastWriteWins);
        sql.upsert_force = sql.upsert_sql(&all, ApplyMode::CloudWins);
        sql.overwrite = sql.overwrite_sql(&all);
        sql
    }

    /// Inserts a pulled row, or updates the local one when it is clean (and, under last write
    /// wins, older). Zero changes means the local row needs a closer look.
    pub(super) fn upsert_sql(&self, present: &[bool], mode: ApplyMode) -> String {
        let n = self.columns.len();
        let (dirty, synced_at, version) = ferry_columns();
        let mut names = Vec::new();
        let mut params = Vec::new();
        let mut sets = Vec::new();
        for (i, column) in self.columns.iter().enumerate().filter(|(i, _)| present[*i]) {
            let column = quote_ident(column);
            params.push(format!("?{}", i + 1));
            if !self.is_key[i] {
                sets.push(format!("{column} = excluded.{column}"));
            }
            names.push(column);
        }
        let guard = match mode {
            ApplyMode::LastWriteWins => {
                format!(" AND ({version} IS NULL OR {version} < excluded.{version})")
            }
            ApplyMode::CloudWins => String::new(),
        };
        format!(
            "INSERT INTO {table} ({names}, {dirty}, {synced_at}, {version}) \
             VALUES ({params}, 0, ?{s}, ?{v}) \
             ON CONFLICT ({key}) DO UPDATE SET {sets}{dirty} = 0, \
             {synced_at} = excluded.{synced_at}, {version} = excluded.{version} \
             WHERE {dirty} = 0{guard}",
            table = quote_ident(&self.name),
            names = names.join(", "),
            params = params.join(", "),
            s = n + 1,
            v = n + 2,
            key = self.key_list(),
            sets = sets.iter().map(|s| format!("{s}, ")).collect::<String>(),
        )
    }

    /// Overwrites a local row unconditionally (after the engine decided the pulled one wins).
    pub(super) fn overwrite_sql(&self, present: &[bool]) -> String {
        let n = self.columns.len();
        let (dirty, synced_at, version) = ferry_columns();
        let sets: String = self
            .columns
            .iter()
            .enumerate()
            .filter(|&(i, _)| present[i] && !self.is_key[i])
            .map(|(i, c)| format!("{} = ?{}, ", quote_ident(c), i + 1))
            .collect();
        let key = self
            .key
            .iter()
            .map(|&p| format!("{} = ?{}", quote_ident(&self.columns[p]), p + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "UPDATE {} SET {sets}{dirty} = 0, {synced_at} = ?{}, {version} = ?{} WHERE {key}",
            quote_ident(&self.name),
            n + 1,
            n + 2
        )
    }

    /// The position of a column by name.
    pub(super) fn position(&self, column: &[u8]) -> Option<usize> {
        self.columns.iter().position(|c| c.as_bytes() == column)
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|&p| quote_ident(&self.columns[p]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ferry_columns() -> (String, String, String) {
    (
        quote_ident(DIRTY_COLUMN),
        quote_ident(SYNCED_AT_COLUMN),
        quote_ident(VERSION_COLUMN),
    )
}
