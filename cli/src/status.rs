//! `switchyard status`: the api's status page in a terminal. Reads `GET /status/data` (which
//! needs an admin key, `switchyard keys create --admin`) and prints the page's tables aligned;
//! `--watch` redraws them every 2 s.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use switchyard_api::routes::status::StatusData;

use crate::local_key::{DEV_KEY_FILE, resolve_key};
use tokio_util::sync::CancellationToken;

/// The file `switchyard dev` writes its dev user's key to (as `switchyard batch` reads it).
/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct StatusCommand {
    /// Base URL of the Switchyard api (without `/v1`).
    #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin API key (sent as `Authorization: Bearer`); without one, and only when --url is on
    /// this machine (localhost, 127.0.0.0/8, ::1), `.switchyard/dev-api-key` is read if it
    /// exists; else no key is sent (enough for an api run with --no-auth).
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Redraw every 2 s until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Print the api's JSON instead of tables.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
}

pub async fn run(command: StatusCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    // reqwest is built with rustls but no provider: use ring, which async-nats already links.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}/status/data", command.url.trim_end_matches('/'));
    let key = resolve_key(command.api_key, &command.url, Path::new(DEV_KEY_FILE), "SWITCHYARD_API_KEY");
    if command.json {
        let data = fetch(&http, &url, key.as_deref()).await?;
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    if !command.watch {
        print!("{}", render(&command.url, &fetch(&http, &url, key.as_deref()).await?));
        return Ok(());
    }
    loop {
        let screen = match fetch(&http, &url, key.as_deref()).await {
            Ok(data) => render(&command.url, &data),
            Err(e) => format!("{e:#}\n(retrying every {} s)\n", WATCH_EVERY.as_secs()),
        };
        // Clear the screen, then draw from its top.
        print!("\x1b[2J\x1b[H{screen}");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

async fn fetch(http: &reqwest::Client, url: &str, key: Option<&str>) -> anyhow::Result<StatusData> {
    let mut request = http.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.with_context(|| {
        format!("could not reach {url} (is the api running there? `switchyard dev` starts one; set --url or SWITCHYARD_URL)")
    })?;
    let status = response.status();
    let body = response.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let hint = match status.as_u16() {
            401 => " (pass an admin key with --api-key or SWITCHYARD_API_KEY)",
            403 => " (create one with `switchyard keys create --admin`)",
            _ => "",
        };
        bail!("GET {url} failed: HTTP {status}: {message}{hint}");
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: the answer is not the api's status data"))
}

/// The tables of the status page, aligned for a terminal.
fn render(url: &str, data: &StatusData) -> String {
    let mut text = format!("Switchyard at {url} (api replica {})\n", data.replica);
    for error in &data.errors {
        text.push_str(&format!("could not read {error}\n"));
    }
    for table in data.tables() {
        text.push('\n');
        text.push_str(&table.to_text());
    }
    text
}
