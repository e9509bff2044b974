//! `GET /api/sync/devices`: the devices list a device reads for its own Devices panel.

use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

async fn sync_devices(server: &Server, device: &Device) -> Value {
    let (status, body) = server
        .call(Method::GET, "/api/sync/devices", Some(&device.token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_device_reads_its_tenant_s_devices_as_the_admin_list_has_them() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let desk = server.pair("Desktop A").await;
    let tablet = server.pair("Tablet B").await;
    let theirs = server.pair_in("acme", "Their till").await;
    server
        .push_ok(&tablet, json!([product("p1", "Cola", &v(1, "t"))]))
        .await;

    let body = sync_devices(&server, &desk).await;
    let listed = body["devices"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{body}");
    let admin = server.devices().await;
    for entry in listed {
        let id = entry["device_id"].as_str().unwrap();
        assert_eq!(entry["this_device"], id == desk.id, "{body}");
        // Everything else is the admin list's entry, field for field.
        let mut rest = entry.clone();
        rest.as_object_mut().unwrap().remove("this_device");
        let expected = admin.iter().find(|d| d.device_id == id).unwrap();
        assert_eq!(rest, serde_json::to_value(expected).unwrap(), "{body}");
    }
    let tablet_entry = listed.iter().find(|d| d["device_id"] == tablet.id.as_str());
    let tablet_entry = tablet_entry.unwrap();
    assert_eq!(tablet_entry["name"], "Tablet B");
    assert!(tablet_entry["last_push_at"].is_string(), "{body}");
    // Asking is a check-in: the asking device was seen just now.
    let desk_entry = listed.iter().find(|d| d["this_device"] == true).unwrap();
    assert!(desk_entry["last_seen_at"].is_string(), "{body}");

    let text = body.to_string();
    for secret in [&desk.token, &tablet.token, &theirs.token, &server.admin] {
        assert!(!text.contains(secret.as_str()), "no token in {text}");
    }
    assert!(
        !text.contains(&theirs.id),
        "nothing of another tenant: {text}"
    );

    let body = sync_devices(&server, &theirs).await;
    assert_eq!(
        body["devices"],
        json!([{
            "device_id": theirs.id, "name": "Their till",
            "last_seen_at": body["devices"][0]["last_seen_at"],
            "last_push_at": null, "last_pull_at": null, "pending": 0,
            "version": null, "this_device": true,
        }]),
        "{body}"
    );
}

#[tokio::test]
async fn only_a_device_token_of_a_live_device_reads_the_devices_list() {
    let server = Server::start().await;
    let lost = server.pair("Lost tablet").await;
    let keeper = server.pair("Keeper").await;
    assert_error(
        &server
            .call(Method::GET, "/api/sync/devices", None, None)
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        &server
            .call(Method::GET, "/api/sync/devices", Some(&server.admin), None)
            .await,
        403,
        "forbidden",
    );

    let path = format!("/api/admin/devices/{}", lost.id);
    let (status, _) = server
        .call(Method::DELETE, &path, Some(&server.admin), None)
        .await;
    assert_eq!(status, 204);
    assert_error(
        &server
            .call(Method::GET, "/api/sync/devices", Some(&lost.token), None)
            .await,
        401,
        "unauthorized",
    );
    // The others still see it, revoked, as the admin list shows it.
    let body = sync_devices(&server, &keeper).await;
    let entry = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == lost.id.as_str())
        .cloned()
        .unwrap();
    assert!(entry["revoked_at"].is_string(), "{body}");
    assert_eq!(entry["this_device"], false);
}
