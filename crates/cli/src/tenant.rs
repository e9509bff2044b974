//! `ferry tenant create` and `ferry tenant list`: tenants are made in the store, as pairing
//! codes and tokens are, since no API token may make another tenant.

use std::process::ExitCode;

use anyhow::{Context, bail};
use ferry_store::{Role, TenantInfo};
use serde::Serialize;

use crate::args::{TenantCreateArgs, TenantListArgs};

pub(crate) async fn create(args: TenantCreateArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    crate::serve::require_existing(&location)?;
    let store = ferry_server::init::open_store(&location)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let name = &args.name;
    // The insert decides, so two creates at once cannot both mint a first admin token.
    if !store
        .create_tenant(name)
        .await
        .context("creating the tenant")?
    {
        bail!(
            "the store {} has a tenant {name:?} already; nothing was changed. `ferry tenant \
             list` names the tenants, and `ferry token create --role admin --tenant {name}` mints \
             another admin token for it",
            location.describe()
        );
    }
    let token = store
        .create_operator_token(name, Role::Admin, None)
        .await
        .with_context(|| {
            format!(
                "creating tenant {name}'s admin token (the tenant itself was created: mint its \
                 token with `ferry token create --role admin --tenant {name}`)"
            )
        })?;
    // The token alone on stdout, so `FERRY_TOKEN=$(ferry tenant create acme)` works.
    eprintln!(
        "Created tenant {name}; its admin token (shown once) follows. Pair its devices with \
         codes from `ferry pair-code --tenant {name}`; `ferry devices --token TOKEN` lists them."
    );
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `ferry tenant list --json`: `{"tenants": [...]}`, like the API's lists.
#[derive(Serialize)]
struct Tenants<'a> {
    tenants: Vec<Tenant<'a>>,
}

#[derive(Serialize)]
struct Tenant<'a> {
    id: &'a str,
    created_at: &'a str,
    devices: u64,
    revoked_devices: u64,
}

impl<'a> From<&'a TenantInfo> for Tenant<'a> {
    fn from(tenant: &'a TenantInfo) -> Tenant<'a> {
        Tenant {
            id: &tenant.id,
            created_at: &tenant.created_at,
            devices: tenant.devices,
            revoked_devices: tenant.revoked_devices,
        }
    }
}

pub(crate) async fn list(args: TenantListArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    crate::serve::require_existing(&location)?;
    let store = ferry_server::init::open_store(&location)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let tenants = store.list_tenants().await.context("listing the tenants")?;
    if args.json {
        let body = Tenants {
            tenants: tenants.iter().map(Tenant::from).collect(),
        };
        outln!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    if tenants.is_empty() {
        outln!(
            "No tenants yet: `ferry serve` creates the default one on its first start, and \
             `ferry tenant create NAME` another."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 4]> = tenants
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.devices.to_string(),
                t.revoked_devices.to_string(),
                t.created_at.clone(),
            ]
        })
        .collect();
    crate::output::table(["TENANT", "DEVICES", "REVOKED", "CREATED"], &rows);
    Ok(ExitCode::SUCCESS)
}
