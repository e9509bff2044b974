//! Change tracking installed into the app's SQLite file, in plain SQL.
//!
//! The app keeps writing through any driver, in any process or language, so tracking cannot live
//! in Ferry's code: triggers mark every app write dirty and stamp it with a hybrid logical clock
//! version taken *at write time*. Everything here must run on old SQLite libraries too (the
//! app's writer may link one), so the triggers avoid `unixepoch('subsec')`, `UPDATE ... FROM`,
//! upserts and JSON functions.
//!
//! While the sync engine writes (applying pulled rows, stamping pushed ones), it holds a row in
//! `_ferry_apply`; every trigger is disabled by its `WHEN NOT EXISTS (SELECT 1 FROM _ferry_apply)`.
//! The engine adds that row after `BEGIN IMMEDIATE` and removes it before `COMMIT`, so no other
//! connection ever sees it, and SQLite's single writer guarantees no app write runs inside.
//! (When the file has no triggers but Ferry's, the engine's own connection also runs with
//! triggers off, which spares it their per-row cost; the flag is what makes that safe either
//! way.)

use ferry_core::Table;
use ferry_schema::{DIRTY_COLUMN, SYNCED_AT_COLUMN, VERSION_COLUMN, quote_ident};

/// Ferry's own tables, created once per file.
pub(crate) const INTERNAL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS _ferry_clock (
  id      INTEGER PRIMARY KEY CHECK (id = 1),
  ms      INTEGER NOT NULL,
  counter INTEGER NOT NULL,
  node    TEXT NOT NULL
);
-- Holds one row only inside the sync engine's own write transactions; never committed.
CREATE TABLE IF NOT EXISTS _ferry_apply (engine INTEGER);
CREATE TABLE IF NOT EXISTS _ferry_tombstones (
  tbl           TEXT NOT NULL,
  pk            TEXT NOT NULL,
  version       TEXT NOT NULL,
  _isDirty      INTEGER NOT NULL DEFAULT 1,
  _lastSyncedAt TEXT,
  PRIMARY KEY (tbl, pk)
);
CREATE INDEX IF NOT EXISTS _ferry_tombstones_dirty ON _ferry_tombstones (tbl, pk)
  WHERE _isDirty = 1;
CREATE TABLE IF NOT EXISTS _ferry_state (
  key   TEXT PRIMARY KEY NOT NULL,
  value TEXT
);
CREATE TABLE IF NOT EXISTS _ferry_conflicts (
  id             INTEGER PRIMARY KEY,
  tbl            TEXT NOT NULL,
  pk             TEXT NOT NULL,
  local_version  TEXT,
  local_deleted  INTEGER NOT NULL,
  local_data     TEXT,
  remote_version TEXT NOT NULL,
  remote_deleted INTEGER NOT NULL,
  recorded_at    TEXT NOT NULL,
  reason         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _ferry_log (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  started_at  TEXT NOT NULL,
  trigger     TEXT NOT NULL,
  duration_ms INTEGER NOT NULL,
  pushed      INTEGER NOT NULL,
  pulled      INTEGER NOT NULL,
  rejected    INTEGER NOT NULL,
  conflicts   INTEGER NOT NULL,
  ok          INTEGER NOT NULL,
  error       TEXT
);
";

/// The wall clock in milliseconds since the Unix epoch, in SQL every SQLite 3 understands.
pub(crate) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Advances the clock row: to the wall clock when it is ahead, otherwise by one counter step (and
/// past the millisecond when the counter is full), so each version is greater than the last even
/// when the device's clock goes backwards. SET expressions all see the row's old values.
pub(crate) fn tick_clock() -> String {
    format!(
        "UPDATE _ferry_clock SET \
         counter = CASE WHEN {NOW_MS} > ms THEN 0 WHEN counter >= 65535 THEN 0 ELSE counter + 1 END, \
         ms = CASE WHEN {NOW_MS} > ms THEN {NOW_MS} WHEN counter >= 65535 THEN ms + 1 ELSE ms END \
         WHERE id = 1"
    )
}

/// The clock row as a version, exactly as `ferry_core::version::format` writes it. Division and
/// remainder are floored so that instants before 1970 format as they do in Rust.
pub(crate) const CURRENT_VERSION: &str = "(SELECT \
     strftime('%Y-%m-%dT%H:%M:%S', (ms - ((ms % 1000) + 1000) % 1000) / 1000, 'unixepoch') \
     || printf('.%03dZ-%04x-', ((ms % 1000) + 1000) % 1000, counter) || node \
     FROM _ferry_clock WHERE id = 1)";

/// Statements that install tracking on one synced table (idempotent; triggers are recreated so
/// that they follow the table's current columns).
pub(crate) fn install_table(table: &Table, existing_columns: &[String]) -> Vec<String> {
    let name = quote_ident(&table.name);
    let mut out = Vec::new();
    let has = |c: &str| existing_columns.iter().any(|e| e == c);
    if !has(DIRTY_COLUMN) {
        out.push(format!(
            "ALTER TABLE {name} ADD COLUMN {} INTEGER NOT NULL DEFAULT 0",
            quote_ident(DIRTY_COLUMN)
        ));
    }
    if !has(SYNCED_AT_COLUMN) {
        out.push(format!(
            "ALTER TABLE {name} ADD COLUMN {} TEXT",
            quote_ident(SYNCED_AT_COLUMN)
        ));
    }
    if !has(VERSION_COLUMN) {
        out.push(format!(
            "ALTER TABLE {name} ADD COLUMN {} TEXT",
            quote_ident(VERSION_COLUMN)
        ));
    }
    // Finding dirty rows must stay cheap in a table of a million clean ones.
    out.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {name} ({}) WHERE {} = 1",
        quote_ident(&format!("_ferry_{}_dirty", table.name)),
        column_list(&table.primary_key),
        quote_ident(DIRTY_COLUMN),
    ));
    for suffix in ["ins", "upd", "del", "pk"] {
        out.push(format!(
            "DROP TRIGGER IF EXISTS {}",
            trigger_name(&table.name, suffix)
        ));
    }
    out.extend(triggers(table));
    out
}

/// Statements that remove tracking from one table (its columns and rows stay).
pub(crate) fn uninstall_table(table_name: &str) -> Vec<String> {
    let mut out: Vec<String> = ["ins", "upd", "del", "pk"]
        .iter()
        .map(|s| format!("DROP TRIGGER IF EXISTS {}", trigger_name(table_name, s)))
        .collect();
    out.push(format!(
        "DROP INDEX IF EXISTS {}",
        quote_ident(&format!("_ferry_{table_name}_dirty"))
    ));
    out
}

fn trigger_name(table: &str, suffix: &str) -> String {
    quote_ident(&format!("_ferry_{table}_{suffix}"))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"a" IS NEW."a" AND "b" IS NEW."b"`: the row a trigger fired for.
fn same_key(table: &Table, row: &str) -> String {
    table
        .primary_key
        .iter()
        .map(|c| format!("{0} IS {row}.{0}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The key text of the trigger's OLD or NEW row: `quote()` of each key column, joined by `,`.
/// `quote()` renders BLOBs as `X'..'`, so BLOB keys work too.
fn key_text(table: &Table, row: &str) -> String {
    table
        .primary_key
        .iter()
        .map(|c| format!("quote({row}.{})", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" || ',' || ")
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn triggers(table: &Table) -> Vec<String> {
    let name = quote_ident(&table.name);
    let tbl = sql_string(&table.name);
    let tick = tick_clock();
    let dirty = quote_ident(DIRTY_COLUMN);
    let version = quote_ident(VERSION_COLUMN);
    let not_applying = "NOT EXISTS (SELECT 1 FROM _ferry_apply)";
    let data_columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let mark_new_row = format!(
        "UPDATE {name} SET {dirty} = 1, {version} = {CURRENT_VERSION} WHERE {};",
        same_key(table, "NEW")
    );
    // Tombstones are replaced by delete + insert rather than INSERT OR REPLACE: an outer
    // statement's conflict clause (say, UPDATE OR IGNORE) would override the trigger's.
    let tombstone = |row: &str| {
        format!(
            "DELETE FROM _ferry_tombstones WHERE tbl = {tbl} AND pk = {key};
  INSERT INTO _ferry_tombstones (tbl, pk, version, _isDirty, _lastSyncedAt)
    VALUES ({tbl}, {key}, {CURRENT_VERSION}, 1, NULL);",
            key = key_text(table, row)
        )
    };
    let forget_tombstone = |row: &str| {
        format!(
            "DELETE FROM _ferry_tombstones WHERE tbl = {tbl} AND pk = {};",
            key_text(table, row)
        )
    };
    let key_changed = table
        .primary_key
        .iter()
        .map(|c| format!("OLD.{0} IS NOT NEW.{0}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ");

    vec![
        // A new row is dirty; it also revives a row deleted earlier, so its tombstone goes.
        format!(
            "CREATE TRIGGER {trigger} AFTER INSERT ON {name}
WHEN {not_applying}
BEGIN
  {tick};
  {mark_new_row}
  {forget}
END",
            trigger = trigger_name(&table.name, "ins"),
            forget = forget_tombstone("NEW"),
        ),
        // Only data columns fire it, so the trigger's own UPDATE of the Ferry columns does not;
        // the version guard makes sure of it even with recursive_triggers on.
        format!(
            "CREATE TRIGGER {trigger} AFTER UPDATE OF {columns} ON {name}
WHEN {not_applying} AND NEW.{version} IS OLD.{version}
BEGIN
  {tick};
  {mark_new_row}
END",
            trigger = trigger_name(&table.name, "upd"),
            columns = column_list(&data_columns),
        ),
        format!(
            "CREATE TRIGGER {trigger} AFTER DELETE ON {name}
WHEN {not_applying}
BEGIN
  {tick};
  {tombstone}
END",
            trigger = trigger_name(&table.name, "del"),
            tombstone = tombstone("OLD"),
        ),
        // A changed key is a delete of the old row (the `upd` trigger marks the new one).
        format!(
            "CREATE TRIGGER {trigger} AFTER UPDATE OF {columns} ON {name}
WHEN {not_applying} AND ({key_changed})
BEGIN
  {tick};
  {tombstone}
  {forget}
END",
            trigger = trigger_name(&table.name, "pk"),
            columns = column_list(&table.primary_key),
            tombstone = tombstone("OLD"),
            forget = forget_tombstone("NEW"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::version;
    use rusqlite::Connection;

    fn clock_db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(INTERNAL_TABLES).unwrap();
        conn.execute(
            "INSERT INTO _ferry_clock (id, ms, counter, node) VALUES (1, 0, 0, 'dev_4f2a')",
            [],
        )
        .unwrap();
        conn
    }

    /// The SQL rendering of a version must be byte-for-byte the Rust one: versions compare as
    /// strings across devices and the server.
    #[test]
    fn sql_versions_equal_rust_versions() {
        let conn = clock_db();
        let instants = [
            0,
            1,
            999,
            1_000,
            1_001,
            59_999,
            60_000,
            86_399_999,
            86_400_000,
            951_782_399_999, // the last millisecond before a leap day
            951_782_400_000,
            1_795_262_400_123,
            1_795_262_399_999,
            4_102_444_799_999, // 2099-12-31T23:59:59.999Z
            -1,
            -999,
            -1_000,
            -1_001,
            -86_400_001,
        ];
        for ms in instants {
            for counter in [0_u16, 1, 0x00ff, 0x0a0b, 65_535] {
                conn.execute(
                    "UPDATE _ferry_clock SET ms = ?1, counter = ?2",
                    (ms, counter),
                )
                .unwrap();
                let sql: String = conn
                    .query_row(&format!("SELECT {CURRENT_VERSION}"), [], |r| r.get(0))
                    .unwrap();
                assert_eq!(
                    sql,
                    version::format(ms, counter, "dev_4f2a"),
                    "{ms} {counter}"
                );
                if ms >= 0 {
                    assert!(version::Version::parse(&sql).is_ok(), "{sql}");
                }
            }
        }
    }

    #[test]
    fn now_is_the_wall_clock_in_milliseconds() {
        let conn = clock_db();
        let sql: i64 = conn
            .query_row(&format!("SELECT {NOW_MS}"), [], |r| r.get(0))
            .unwrap();
        let rust = ferry_core::time::now_ms();
        assert!((sql - rust).abs() < 5_000, "{sql} vs {rust}");
    }

    #[test]
    fn the_clock_ticks_forward_even_when_the_wall_clock_is_behind() {
        let conn = clock_db();
        let far_future = 32_503_680_000_000_i64; // year 3000
        conn.execute(
            "UPDATE _ferry_clock SET ms = ?1, counter = 65534",
            [far_future],
        )
        .unwrap();
        let read = |conn: &Connection| -> (i64, i64) {
            conn.execute(&tick_clock(), []).unwrap();
            conn.query_row("SELECT ms, counter FROM _ferry_clock", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        };
        assert_eq!(read(&conn), (far_future, 65_535));
        assert_eq!(read(&conn), (far_future + 1, 0), "a full counter moves on");
        assert_eq!(read(&conn), (far_future + 1, 1));
        conn.execute("UPDATE _ferry_clock SET ms = 5, counter = 9", [])
            .unwrap();
        let (ms, counter) = read(&conn);
        assert!(ms > 1_600_000_000_000 && counter == 0, "{ms} {counter}");
    }
}
