//! Tag mappings: one at a time, and imports that write all of theirs or none.

use ferry_store::billing::{MappingRecord, NewMapping};

use super::support::Fixture;

fn mapping(id_tag: &str, customer: &str, subscription: Option<&str>) -> NewMapping {
    NewMapping {
        id_tag: id_tag.into(),
        customer: customer.into(),
        subscription: subscription.map(str::to_owned),
    }
}

fn summary(mappings: &[MappingRecord]) -> Vec<(&str, &str, Option<&str>)> {
    mappings
        .iter()
        .map(|m| {
            (
                m.id_tag.as_str(),
                m.customer.as_str(),
                m.subscription.as_deref(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_mapping_is_created_replaced_listed_by_tag_and_deleted() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    assert_eq!(store.mappings().await.unwrap(), []);

    let second = store
        .put_mapping(&mapping("TAG-B", "cust-b", None))
        .await
        .unwrap();
    let first = store
        .put_mapping(&mapping("TAG-A", "cust-a", None))
        .await
        .unwrap();
    assert_eq!(
        summary(std::slice::from_ref(&first)),
        [("TAG-A", "cust-a", None)]
    );
    let replaced = store
        .put_mapping(&mapping("TAG-A", "cust-c", Some("sub-9")))
        .await
        .unwrap();
    assert!(replaced.updated_at_ms >= first.updated_at_ms);

    // By tag, as stored (times included).
    assert_eq!(store.mappings().await.unwrap(), [replaced, second.clone()]);

    assert!(store.delete_mapping("TAG-A").await.unwrap());
    assert!(!store.delete_mapping("TAG-A").await.unwrap());
    assert!(!store.delete_mapping("TAG-NONE").await.unwrap());
    assert_eq!(store.mappings().await.unwrap(), [second]);
}

#[tokio::test]
async fn an_import_writes_every_mapping_or_none() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    store
        .put_mapping(&mapping("T0", "cust-0", None))
        .await
        .unwrap();

    // The last line has no customer: the lines before it are not kept either.
    let failing = [
        mapping("T1", "cust-1", None),
        mapping("T0", "cust-replaced", None),
        mapping("T2", "", None),
    ];
    assert!(store.import_mappings(&failing).await.is_err());
    assert_eq!(
        summary(&store.mappings().await.unwrap()),
        [("T0", "cust-0", None)]
    );

    // A tag named twice keeps its later line, as if the lines were stored one by one.
    let lines = [
        mapping("T1", "cust-1", Some("sub-1")),
        mapping("T0", "cust-replaced", None),
        mapping("T1", "cust-1b", None),
    ];
    assert_eq!(store.import_mappings(&lines).await.unwrap(), 2);
    assert_eq!(
        summary(&store.mappings().await.unwrap()),
        [("T0", "cust-replaced", None), ("T1", "cust-1b", None)]
    );
    assert_eq!(store.import_mappings(&[]).await.unwrap(), 0);
}

/// Tags are listed in byte order on both stores (PostgreSQL's locale would put `a` first).
#[tokio::test]
async fn mappings_are_listed_in_byte_order_of_their_tags() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let tags = ["a1", "B2", "_3", "b0", "A9"];
    let lines: Vec<NewMapping> = tags.iter().map(|tag| mapping(tag, "c", None)).collect();
    store.import_mappings(&lines).await.unwrap();
    let mut expected: Vec<&str> = tags.to_vec();
    expected.sort_unstable();
    let listed: Vec<String> = store
        .mappings()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id_tag)
        .collect();
    assert_eq!(listed, expected);
}
