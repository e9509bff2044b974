//! The physical reference on PostgreSQL: `COPY` of the very rows a PostgreSQL store holds into
//! a plain table shaped like its `ferry.rows`, in a database of its own.

use std::pin::pin;
use std::time::Instant;

use anyhow::{Context, ensure};
use bytes::{BufMut, BytesMut};
use ferry_testkit::{TestDatabase, TestServer};
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::median;

/// One record of `ferry.rows`, as the store wrote it.
pub(crate) struct StoredRow {
    tenant: String,
    tbl: String,
    pk_key: String,
    seq: i64,
    version: String,
    deleted: bool,
    origin_device: Option<String>,
    change: String,
}

/// `ferry.rows` as the store's migrations leave it (its foreign key to `tenants` is long gone):
/// the same columns, primary key and `(tenant, seq)` index.
const TABLE_DDL: &str = "
DROP TABLE IF EXISTS copy_rows;
CREATE TABLE copy_rows (
  tenant        text NOT NULL,
  tbl           text NOT NULL,
  pk_key        text NOT NULL,
  seq           bigint NOT NULL,
  version       text NOT NULL,
  deleted       boolean NOT NULL,
  origin_device text,
  change        text NOT NULL,
  PRIMARY KEY (pk_key, tbl, tenant)
);
CREATE UNIQUE INDEX copy_rows_by_seq ON copy_rows (tenant, seq);";

const COLUMNS: &str = "tenant, tbl, pk_key, seq, version, deleted, origin_device, change";

const TYPES: [Type; 8] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
];

/// The server's version and the settings that bear on write and read rates.
pub(crate) async fn describe_server(server: &TestServer) -> anyhow::Result<String> {
    describe(&connect(server).await?).await
}

/// The version and settings of the server `client` is connected to.
pub(crate) async fn describe(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for setting in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "wal_level",
        "max_wal_size",
    ] {
        let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
        let value: String = row.get(0);
        parts.push(if setting == "server_version" {
            value
        } else {
            format!("`{setting}={value}`")
        });
    }
    Ok(parts.join(", "))
}

async fn connect(server: &TestServer) -> anyhow::Result<tokio_postgres::Client> {
    let database = server
        .storage
        .database
        .as_ref()
        .context("the server is not on PostgreSQL")?;
    Ok(database.connect().await)
}

/// The rows stored by `server`, a server on PostgreSQL, in sequence order: all of them, or
/// those last written by device `origin`.
pub(crate) async fn stored_rows(
    server: &TestServer,
    origin: Option<&str>,
) -> anyhow::Result<Vec<StoredRow>> {
    let client = connect(server).await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM ferry.rows
                 WHERE $1::text IS NULL OR origin_device = $1 ORDER BY seq"
            ),
            &[&origin],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredRow {
            tenant: r.get(0),
            tbl: r.get(1),
            pk_key: r.get(2),
            seq: r.get(3),
            version: r.get(4),
            deleted: r.get(5),
            origin_device: r.get(6),
            change: r.get(7),
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CopyFormat {
    Text,
    Binary,
}

impl CopyFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CopyFormat::Text => "text",
            CopyFormat::Binary => "binary",
        }
    }
}

/// COPY rates of one set of rows, per run, in both formats.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct CopyFigures {
    pub(crate) rows: u64,
    pub(crate) text_rows_per_s: Vec<f64>,
    pub(crate) binary_rows_per_s: Vec<f64>,
}

impl CopyFigures {
    /// The faster format by its median rate, and that rate.
    pub(crate) fn best(&self) -> (CopyFormat, f64) {
        let text = median(&self.text_rows_per_s);
        let binary = median(&self.binary_rows_per_s);
        if binary >= text || text.is_nan() {
            (CopyFormat::Binary, binary)
        } else {
            (CopyFormat::Text, text)
        }
    }

    pub(crate) fn runs(&self) -> usize {
        self.text_rows_per_s.len().min(self.binary_rows_per_s.len())
    }
}

/// COPYs `rows` into a fresh table `runs` times in each format; see [`CopyReference`].
pub(crate) async fn copy_rates(rows: &[StoredRow], runs: usize) -> anyhow::Result<CopyFigures> {
    let mut reference = CopyReference::create(rows).await?;
    for _ in 0..runs {
        reference.round().await?;
    }
    reference.finish().await
}

/// The `COPY` reference, a round at a time, so that it can alternate with the measure it is
/// the reference of. Each round COPYs the rows into a fresh table in each format (binary, then
/// text, so that both see the same conditions), in a database of its own, dropped at the end.
/// A run is timed from `BEGIN` to `COMMIT` and includes encoding the rows; the table is
/// created before it.
pub(crate) struct CopyReference<'a> {
    rows: &'a [StoredRow],
    database: TestDatabase,
    client: tokio_postgres::Client,
    figures: CopyFigures,
}

impl<'a> CopyReference<'a> {
    pub(crate) async fn create(rows: &'a [StoredRow]) -> anyhow::Result<CopyReference<'a>> {
        let database = TestDatabase::create().await;
        let client = database.connect().await;
        Ok(CopyReference {
            rows,
            database,
            client,
            figures: CopyFigures {
                rows: rows.len() as u64,
                ..CopyFigures::default()
            },
        })
    }

    pub(crate) async fn round(&mut self) -> anyhow::Result<()> {
        let rows = self.rows;
        for format in [CopyFormat::Binary, CopyFormat::Text] {
            self.client.batch_execute(TABLE_DDL).await?;
            let start = Instant::now();
            let tx = self.client.transaction().await?;
            let copied = match format {
                CopyFormat::Text => copy_text(&tx, rows).await?,
                CopyFormat::Binary => copy_binary(&tx, rows).await?,
            };
            tx.commit().await?;
            let rate = rows.len() as f64 / start.elapsed().as_secs_f64();
            ensure!(
                copied == rows.len() as u64,
                "COPY wrote {copied} rows, expected {}",
                rows.len()
            );
            match format {
                CopyFormat::Text => self.figures.text_rows_per_s.push(rate),
                CopyFormat::Binary => self.figures.binary_rows_per_s.push(rate),
            }
        }
        Ok(())
    }

    /// The rates of every round; drops the table and the database.
    pub(crate) async fn finish(self) -> anyhow::Result<CopyFigures> {
        self.client
            .batch_execute("DROP TABLE IF EXISTS copy_rows")
            .await?;
        drop(self.client);
        drop(self.database);
        Ok(self.figures)
    }
}

async fn copy_binary(tx: &Transaction<'_>, rows: &[StoredRow]) -> anyhow::Result<u64> {
    let sink = tx
        .copy_in(&format!(
            "COPY copy_rows ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for r in rows {
        let values: [&(dyn ToSql + Sync); 8] = [
            &r.tenant,
            &r.tbl,
            &r.pk_key,
            &r.seq,
            &r.version,
            &r.deleted,
            &r.origin_device,
            &r.change,
        ];
        writer.as_mut().write(&values).await?;
    }
    Ok(writer.finish().await?)
}

/// How much text to gather before handing it to the connection.
const TEXT_CHUNK: usize = 256 * 1024;

async fn copy_text(tx: &Transaction<'_>, rows: &[StoredRow]) -> anyhow::Result<u64> {
    let mut sink = pin!(
        tx.copy_in(&format!("COPY copy_rows ({COLUMNS}) FROM STDIN"))
            .await?
    );
    let mut buf = BytesMut::with_capacity(TEXT_CHUNK + 4096);
    for r in rows {
        for text in [&r.tenant, &r.tbl, &r.pk_key] {
            put_text(&mut buf, text);
            buf.put_u8(b'\t');
        }
        buf.put_slice(r.seq.to_string().as_bytes());
        buf.put_u8(b'\t');
        put_text(&mut buf, &r.version);
        buf.put_slice(if r.deleted { b"\tt\t" } else { b"\tf\t" });
        match &r.origin_device {
            Some(device) => put_text(&mut buf, device),
            None => buf.put_slice(b"\\N"),
        }
        buf.put_u8(b'\t');
        put_text(&mut buf, &r.change);
        buf.put_u8(b'\n');
        if buf.len() >= TEXT_CHUNK {
            sink.feed(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.split().freeze()).await?;
    }
    Ok(sink.as_mut().finish().await?)
}

/// `text` escaped for COPY's text format: backslash, tab, newline and carriage return.
fn put_text(buf: &mut BytesMut, text: &str) {
    let mut rest = text.as_bytes();
    while let Some(at) = rest
        .iter()
        .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        buf.put_slice(&rest[..at]);
        buf.put_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    buf.put_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_escapes_what_copy_would_misread() {
        let mut buf = BytesMut::new();
        put_text(&mut buf, "{\"a\":\"x\\\"y\"}\tz\n\r");
        assert_eq!(&buf[..], b"{\"a\":\"x\\\\\"y\"}\\tz\\n\\r");
    }
}
