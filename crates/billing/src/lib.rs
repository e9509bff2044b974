//! The billing job: finished charging sessions of a StEvE OCPP server become usage events in
//! Lago, each session's energy exactly once.
//!
//! - [`steve`] and [`lago`]: HTTP clients of the two public APIs.
//! - [`plan`]: pure planning: what StEvE reports, the ledger, the mappings and Lago's
//!   subscriptions in; sessions to write and events to send out.
//! - [`job`]: the [`ferry_worker::job::SyncJob`] that reads, plans, stores and sends;
//!   `outbox` drains the ledger's pending events into Lago.

pub mod job;
pub mod lago;
mod outbox;
pub mod plan;
pub mod steve;

/// The HTTP client both API clients use. Redirects are not followed: from an API path one
/// means a wrong base URL (StEvE sends browsers to its sign-in page; a redirected POST to Lago
/// would become a GET elsewhere), and the error should say so rather than decode a page.
fn http_client(
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("ferry-billing/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}
