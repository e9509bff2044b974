//! What only the PostgreSQL store has to show: pulls against late commits, several server
//! instances on one database, migrations racing, and faults of the database itself (killed
//! connections, a database that goes away, pool exhaustion, statement timeouts).

mod faults;
mod instances;
mod late_commit;
mod migrations;
mod proxy;
mod worker;

use ferry_testkit::TestDatabase;

use crate::api::support::wait_for;

/// A transaction on `client` that holds the row locks `statement` takes, until it ends.
async fn holding<'a>(
    client: &'a mut tokio_postgres::Client,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> tokio_postgres::Transaction<'a> {
    let hold = client.transaction().await.unwrap();
    hold.execute(statement, params).await.unwrap();
    hold
}

/// Claims the key of one synced row of the default tenant (`$1` the table, `$2` the key
/// text, such as `["p1"]`) without committing. A push that writes that row stops inside its
/// transaction: it has taken its tenant's lock and its sequence numbers, and its insert waits
/// on the claimed key. (Locking the device's row would not do: every request checks its
/// device in first, so the push would stop before it began.)
const ROW_KEY: &str = "INSERT INTO ferry.rows (tenant, tbl, pk_key, seq, version, deleted, change)
                       VALUES ('default', $1, $2, 9223372036854775807, 'held', false, '{}')";
/// Locks every tenant's row: pushes wait before taking sequence numbers.
const TENANT_ROWS: &str = "SELECT 1 FROM ferry.tenants FOR UPDATE";

/// The number of synced rows the database holds.
async fn stored_rows(database: &TestDatabase) -> i64 {
    database
        .connect()
        .await
        .query_one("SELECT count(*) FROM ferry.rows", &[])
        .await
        .unwrap()
        .get(0)
}
