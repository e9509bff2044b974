//! The billing job's configuration (`--billing` and its flags on `ferry serve` and `ferry
//! worker`) and the `ferry billing` commands, which talk to the server's billing API.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use ferry_billing::job::{BillingJob, BillingOptions};
use ferry_billing::lago::{LagoClient, LagoConfig};
use ferry_billing::plan::Rules;
use ferry_billing::steve::{SteveClient, SteveConfig};
use ferry_proto::billing::{Mapping, MappingsResponse, PutMapping, Session, SessionsResponse};
use ferry_store::BillingStore;
use serde::Deserialize;

use crate::api::{Api, path_segment};
use crate::args::{
    ApiOnly, BillingArgs, BillingCommand, ImportArgs, MapArgs, ReviewArgs, ReviewChoice,
    SessionArgs, SessionsArgs, UnmapArgs,
};

/// Where the API keys come from when no file is named.
const STEVE_KEY_VAR: &str = "FERRY_STEVE_API_KEY";
const LAGO_KEY_VAR: &str = "FERRY_LAGO_API_KEY";

/// The billing job's clients and options, checked before any store is opened (a bad flag
/// must not cost a first start its admin token); the job once given its ledger.
pub(crate) struct BillingSetup {
    steve: SteveClient,
    lago: LagoClient,
    options: BillingOptions,
}

impl BillingSetup {
    pub(crate) fn job(self, store: Arc<dyn BillingStore>) -> BillingJob {
        BillingJob::new(self.steve, self.lago, store, self.options)
    }
}

impl BillingArgs {
    /// The billing job these flags describe, checked, or `None` without `--billing`.
    pub(crate) fn setup(&self) -> anyhow::Result<Option<BillingSetup>> {
        if !self.billing {
            return Ok(None);
        }
        let steve_url = self
            .steve_url
            .clone()
            .context("--billing needs --steve-url (or FERRY_STEVE_URL): where StEvE is served")?;
        let lago_url = self
            .lago_url
            .clone()
            .context("--billing needs --lago-url (or FERRY_LAGO_URL): where Lago's API is")?;
        let steve_key = secret(STEVE_KEY_VAR, self.steve_api_key_file.as_deref(), "StEvE")?;
        let lago_key = secret(LAGO_KEY_VAR, self.lago_api_key_file.as_deref(), "Lago")?;
        let time_zone = jiff::tz::TimeZone::get(&self.steve_time_zone).with_context(|| {
            format!(
                "--steve-time-zone {:?} is not a time zone name such as UTC or Europe/Berlin",
                self.steve_time_zone
            )
        })?;
        let steve = SteveClient::new(SteveConfig {
            header_name: self.steve_api_key_header.clone(),
            time_zone,
            timeout: self.billing_http_timeout,
            ..SteveConfig::new(&steve_url, steve_key)
        })
        .context("setting up the StEvE client")?;
        let lago = LagoClient::new(LagoConfig {
            timeout: self.billing_http_timeout,
            ..LagoConfig::new(&lago_url, lago_key)
        })
        .context("setting up the Lago client")?;
        let since_ms = match &self.billing_since {
            None => None,
            Some(day) => Some(
                ferry_core::time::parse_ms(&format!("{day}T00:00:00.000Z")).with_context(|| {
                    format!("--billing-since {day:?} is not a day such as 2026-01-31")
                })?,
            ),
        };
        let options = BillingOptions {
            rules: Rules {
                metric_code: self.lago_metric_code.clone(),
                energy_property: self.lago_energy_property.clone(),
                max_session_wh: i64::from(self.billing_max_session_kwh) * 1000,
            },
            since_ms,
            idle_after: self.billing_idle_after,
            sweep_every: self.billing_sweep_every,
            sweep_span: self.billing_sweep_span,
            ..BillingOptions::default()
        };
        Ok(Some(BillingSetup {
            steve,
            lago,
            options,
        }))
    }
}

/// An API key from its file, else from the environment; never from a flag's value, so it
/// shows up in neither `ps` nor shell history.
fn secret(var: &str, file: Option<&Path>, service: &str) -> anyhow::Result<String> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {service}'s API key from {}", path.display()))?,
        None => std::env::var(var).with_context(|| {
            format!("--billing needs {service}'s API key in {var} (or in a file named by the --*-api-key-file flag)")
        })?,
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        bail!("{service}'s API key is empty");
    }
    Ok(key)
}

pub(crate) async fn command(command: BillingCommand) -> anyhow::Result<ExitCode> {
    match command {
        BillingCommand::Map(args) => map(args).await,
        BillingCommand::Unmap(args) => unmap(args).await,
        BillingCommand::Mappings(args) => mappings(args).await,
        BillingCommand::Import(args) => import(args).await,
        BillingCommand::Sessions(args) => sessions(args).await,
        BillingCommand::Session(args) => session(args).await,
        BillingCommand::Review(args) => review(args).await,
    }
}

async fn map(args: MapArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let body = PutMapping {
        external_customer_id: args.customer,
        external_subscription_id: args.subscription,
    };
    let path = format!("/api/admin/billing/mappings/{}", path_segment(&args.tag));
    let mapping: Mapping = api.send(api.http.put(api.url(&path)).json(&body)).await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&mapping)?);
    } else {
        outln!("Mapped {}.", mapping_line(&mapping));
    }
    Ok(ExitCode::SUCCESS)
}

async fn unmap(args: UnmapArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let path = format!("/api/admin/billing/mappings/{}", path_segment(&args.tag));
    api.send_no_content(api.http.delete(api.url(&path))).await?;
    if api.json {
        // The API answers 204 with no body: the tag whose mapping went.
        outln!("{}", serde_json::json!({ "id_tag": args.tag }));
    } else {
        outln!("Tag {} is no longer mapped.", args.tag);
    }
    Ok(ExitCode::SUCCESS)
}

async fn mappings(args: ApiOnly) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let answer: MappingsResponse = api
        .send(api.http.get(api.url("/api/admin/billing/mappings")))
        .await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else if answer.mappings.is_empty() {
        outln!("No mappings yet: `ferry billing map TAG --customer C` adds one.");
    } else {
        for mapping in &answer.mappings {
            outln!("{}", mapping_line(mapping));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `TAG → customer C (subscription S)`
fn mapping_line(mapping: &Mapping) -> String {
    let subscription = match &mapping.external_subscription_id {
        Some(s) => format!("subscription {s}"),
        None => "its subscription active at each session's stop".to_owned(),
    };
    format!(
        "{} → customer {}, {subscription}",
        mapping.id_tag, mapping.external_customer_id
    )
}

#[derive(Deserialize, serde::Serialize)]
struct Imported {
    imported: u64,
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let csv = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the CSV from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let answer: Imported = api
        .send(
            api.http
                .post(api.url("/api/admin/billing/mappings"))
                .header("content-type", "text/csv")
                .body(csv),
        )
        .await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        outln!("Imported {} mapping(s).", answer.imported);
    }
    Ok(ExitCode::SUCCESS)
}

async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut request = api
        .http
        .get(api.url("/api/admin/billing/sessions"))
        .query(&[("limit", args.limit.to_string())]);
    if let Some(state) = &args.state {
        request = request.query(&[("state", state)]);
    }
    if let Some(tag) = &args.tag {
        request = request.query(&[("id_tag", tag)]);
    }
    let answer: SessionsResponse = api.send(request).await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else if answer.sessions.is_empty() {
        outln!("No sessions match.");
    } else {
        for session in &answer.sessions {
            outln!("{}", session_line(session));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `#12 CB-1/1 TAG stopped 2026-… 12.345 kWh billed (12.345 kWh) reason`
fn session_line(session: &Session) -> String {
    let energy = match (session.start_wh, session.stop_wh) {
        (Some(start), Some(stop)) => format!("{:.3} kWh", (stop - start) / 1000.0),
        _ => "- kWh".to_owned(),
    };
    let when = session
        .stopped_at
        .as_deref()
        .map(|at| format!("stopped {at}"))
        .or_else(|| {
            session
                .started_at
                .as_deref()
                .map(|at| format!("started {at}"))
        })
        .unwrap_or_default();
    let mut line = format!(
        "#{} {}/{} {} {when} {energy} {}",
        session.steve_transaction_id,
        session.charge_box_id,
        session.connector_id,
        session.id_tag,
        session.state
    );
    if session.billed_wh != 0 {
        line.push_str(&format!(
            " ({:.3} kWh in Lago)",
            session.billed_wh as f64 / 1000.0
        ));
    }
    if let Some(reason) = &session.reason {
        line.push_str(&format!(": {reason}"));
    }
    line
}

async fn session(args: SessionArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let path = format!("/api/admin/billing/sessions/{}", args.id);
    let session: Session = api.send(api.http.get(api.url(&path))).await?;
    print_session(&api, &session)?;
    Ok(ExitCode::SUCCESS)
}

fn print_session(api: &Api, session: &Session) -> anyhow::Result<()> {
    if api.json {
        outln!("{}", serde_json::to_string_pretty(session)?);
        return Ok(());
    }
    outln!("{}", session_line(session));
    if session.events.is_empty() {
        outln!("No events.");
    }
    for event in &session.events {
        let mut line = format!(
            "  {} {} Wh → {} at {} {}",
            event.transaction_id,
            event.wh,
            event.external_subscription_id,
            event.timestamp,
            event.status
        );
        if let Some(run) = event.run_id {
            line.push_str(&format!(" (run #{run})"));
        }
        if let Some(error) = &event.error {
            line.push_str(&format!(": {error}"));
        }
        outln!("{line}");
    }
    Ok(())
}

async fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let action = match args.action {
        ReviewChoice::Bill => "bill",
        ReviewChoice::Ignore => "ignore",
    };
    let path = format!("/api/admin/billing/sessions/{}/review", args.id);
    let session: Session = api
        .send(
            api.http
                .post(api.url(&path))
                .json(&serde_json::json!({ "action": action })),
        )
        .await?;
    print_session(&api, &session)?;
    Ok(ExitCode::SUCCESS)
}
