//! PostgreSQL migrations and what the store keeps in the database.

use ferry_store::{PgOptions, PgStore, Role, Store, StoreError};
use ferry_testkit::TestDatabase;

#[tokio::test]
async fn instances_starting_at_once_migrate_the_database_exactly_once() {
    let database = TestDatabase::create().await;
    let starts = (0..4).map(|_| {
        let url = database.url.clone();
        tokio::spawn(async move {
            let store = PgStore::open(&url, &PgOptions::default()).unwrap();
            store.migrate().await.unwrap()
        })
    });
    let mut applied = Vec::new();
    for start in starts {
        applied.push(start.await.unwrap());
    }
    let migrated: Vec<&Vec<usize>> = applied.iter().filter(|a| !a.is_empty()).collect();
    assert_eq!(migrated.len(), 1, "{applied:?}");
    let client = database.connect().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM ferry.migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions.len(), migrated[0].len());
    assert_eq!(
        versions.last().copied(),
        migrated[0].last().map(|&v| v as i32)
    );
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_ferry_is_refused() {
    let database = TestDatabase::create().await;
    PgStore::connect(&database.url, &PgOptions::default())
        .await
        .unwrap();
    database
        .connect()
        .await
        .execute("INSERT INTO ferry.migrations (version) VALUES (999)", &[])
        .await
        .unwrap();
    let refused = PgStore::connect(&database.url, &PgOptions::default()).await;
    assert!(
        matches!(&refused, Err(StoreError::Internal(m)) if m.contains("999")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_malformed_url_is_a_configuration_error_and_an_unreachable_one_is_unavailable() {
    assert!(matches!(
        PgStore::open("postgres://[nope", &PgOptions::default()),
        Err(StoreError::Config(_))
    ));
    let options = PgOptions {
        connect_timeout: std::time::Duration::from_secs(2),
        ..PgOptions::default()
    };
    // Port 1 on loopback refuses connections.
    let unreachable = PgStore::connect("postgres://postgres@127.0.0.1:1/x", &options).await;
    assert!(
        matches!(unreachable, Err(StoreError::Unavailable(_))),
        "{unreachable:?}"
    );
}

#[tokio::test]
async fn tokens_and_pairing_codes_are_kept_only_as_hashes() {
    let database = TestDatabase::create().await;
    let store = PgStore::connect(&database.url, &PgOptions::default())
        .await
        .unwrap();
    store.create_tenant("t").await.unwrap();
    let token = store
        .create_operator_token("t", Role::Viewer, None)
        .await
        .unwrap();
    let code = store
        .create_pairing_code("t", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let client = database.connect().await;
    let dump: String = client
        .query_one(
            "SELECT string_agg(t::text, ' ') FROM (
               SELECT hash FROM ferry.tokens UNION ALL SELECT hash FROM ferry.pairing_codes) AS t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(&token), "{dump}");
    assert!(!dump.contains(&code.code.replace('-', "")), "{dump}");
    assert!(dump.contains(&ferry_store::secret::hash(&token)));
}
