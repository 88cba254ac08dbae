//! The status page for operators: `GET /status` (HTML) and `GET /status/data` (JSON, or the
//! page's tables as an HTML fragment with `?format=html`). Both need an admin key
//! (`switchyard keys create --admin`); under `--no-auth` they are open, as everything is.
//!
//! The key comes from the `Authorization: Bearer` header, or, for a browser, once as
//! `GET /status?key=…`: the api checks it, keeps it in an HttpOnly cookie scoped to `/status`
//! ([`COOKIE`]) and redirects to `/status`, so the key leaves the address bar and the page's own
//! polls of `/status/data` carry the cookie. The page polls every 1.5 s and swaps in the fresh
//! tables, which the server renders ([`render_tables`]): one renderer, escaping every string
//! in one place, and the same [`Table`]s that `switchyard status` prints in a terminal.
//!
//! One [`StatusData`] is read fresh on every call: the registry from Redis (every known model,
//! every live worker), each lane's JetStream consumer (pending and ack-pending), the batches
//! not finished yet, and this api replica's own last minute of interactive requests (time to
//! first token, error rate), which other replicas do not share.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use switchyard_broker::lanes::{LaneDepth, lane_depths};
use switchyard_broker::registry::Registry;
use switchyard_scheduler::batches::object::{BatchStatus, RequestCounts};
use switchyard_schemas::{JobKind, Lane, ModelCard, ModelKind, WorkerRecord, now_ms};
use switchyard_telemetry::jobs::{MinuteStats, last_minute};

use crate::error::ApiError;
use crate::policy::Caller;
use crate::state::AppState;

/// The cookie a browser keeps the admin key in after `GET /status?key=…`.
pub const COOKIE: &str = "switchyard_status_key";

/// The page: [`render_tables`] between the header and the polling script.
const PAGE: &str = include_str!("status.html");

/// Everything the status page shows, as `GET /status/data` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    /// When it was read (ms since the Unix epoch).
    pub generated_ms: u64,
    /// The api replica that answered (`host:pid`): the last-minute figures are its own.
    pub replica: String,
    /// Every model the registry knows (alive or not), and every model with a queue, by name.
    pub models: Vec<ModelStatus>,
    /// Every live worker, by id.
    pub workers: Vec<WorkerStatus>,
    /// Every lane's durable consumer, by model, kind and lane.
    pub lanes: Vec<LaneDepth>,
    /// Batches not yet in a terminal status, oldest first.
    pub batches: Vec<BatchSummary>,
    /// Parts that could not be read (Redis, JetStream, the batch store); the rest still shows.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    /// `None` for a model only its queue still knows (its card expired from the registry).
    pub kind: Option<ModelKind>,
    /// Ids of the live workers serving it.
    pub workers: Vec<String>,
    /// Slots of those workers, and how many are in use (a worker's slots are shared by all its
    /// models).
    pub slots: u32,
    pub busy: u32,
    /// This replica's interactive requests of the last minute, if it had any.
    pub last_minute: Option<MinuteStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub backend: String,
    pub host: String,
    pub pid: u32,
    pub slots: u32,
    /// Slots in use.
    pub busy: u32,
    pub models: Vec<String>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    pub id: String,
    pub status: BatchStatus,
    pub endpoint: String,
    /// The user who submitted it.
    pub user: String,
    pub request_counts: RequestCounts,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl StatusData {
    /// Reads everything at once; a part that fails is named in `errors` and left empty.
    pub async fn read(state: &AppState) -> StatusData {
        let registry = Registry::new(state.redis.clone());
        let js = async_nats::jetstream::new(state.nats.clone());
        let (known, live, lanes, batches) =
            tokio::join!(registry.known_models(), registry.live_workers(), lane_depths(&js), state.batches.unfinished());
        let mut errors = Vec::new();
        let known = or_note(known, "the model registry", &mut errors);
        let live = or_note(live, "the live workers", &mut errors);
        let lanes = or_note(lanes, "the queues (JetStream consumers)", &mut errors);
        let batches = or_note(batches, "the batches", &mut errors);
        let mut data = StatusData::assemble(now_ms(), known, live, lanes, last_minute());
        data.errors = errors;
        data.batches = summarize_batches(batches);
        data
    }

    /// Puts the parts together: one [`ModelStatus`] per model named by a card, a live worker, a
    /// queue or the last minute's requests.
    pub fn assemble(
        now: u64,
        known: Vec<ModelCard>,
        mut live: Vec<WorkerRecord>,
        lanes: Vec<LaneDepth>,
        minute: Vec<MinuteStats>,
    ) -> StatusData {
        fn entry<'a>(models: &'a mut BTreeMap<String, ModelStatus>, name: &str) -> &'a mut ModelStatus {
            models.entry(name.to_string()).or_insert_with(|| ModelStatus {
                name: name.to_string(),
                kind: None,
                workers: Vec::new(),
                slots: 0,
                busy: 0,
                last_minute: None,
            })
        }
        let mut models = BTreeMap::new();
        for card in &known {
            entry(&mut models, &card.name).kind = Some(card.kind);
        }
        live.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        for worker in &live {
            for card in &worker.models {
                let model = entry(&mut models, &card.name);
                model.kind.get_or_insert(card.kind);
                model.workers.push(worker.worker_id.clone());
                model.slots += worker.slots;
                model.busy += worker.busy;
            }
        }
        for lane in &lanes {
            entry(&mut models, &lane.model);
        }
        for stats in minute {
            let model = stats.model.clone();
            entry(&mut models, &model).last_minute = Some(stats);
        }
        let workers = live
            .into_iter()
            .map(|w| WorkerStatus {
                models: w.models.iter().map(|card| card.name.clone()).collect(),
                heartbeat_age_ms: now.saturating_sub(w.heartbeat_ms),
                id: w.worker_id,
                backend: w.backend,
                host: w.host,
                pid: w.pid,
                slots: w.slots,
                busy: w.busy,
                started_ms: w.started_ms,
            })
            .collect();
        StatusData {
            generated_ms: now,
            replica: replica_name(),
            models: models.into_values().collect(),
            workers,
            lanes,
            batches: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A lane's depth, if its consumer exists.
    pub fn lane(&self, model: &str, lane: Lane) -> Option<&LaneDepth> {
        self.lanes.iter().find(|depth| depth.model == model && depth.lane == lane)
    }

    /// The page's sections, as the page and `switchyard status` show them.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        let queue = |model: &ModelStatus, lane: Lane| match self.lane(&model.name, lane) {
            Some(depth) => format!("{} / {}", depth.pending, depth.ack_pending),
            None => "-".to_string(),
        };
        tables.push(Table {
            id: "models",
            title: "Models",
            note: "queues: pending / held by workers (JetStream); TTFT and errors: this api replica's interactive requests of the last minute",
            headers: vec!["model", "kind", "workers", "slots in use", "interactive queue", "batch queue", "TTFT p50", "TTFT p95", "errors (1 min)"],
            rows: self
                .models
                .iter()
                .map(|model| {
                    let minute = model.last_minute.as_ref();
                    vec![
                        model.name.clone(),
                        model.kind.map_or("-".to_string(), kind_name),
                        model.workers.len().to_string(),
                        format!("{} / {}", model.busy, model.slots),
                        queue(model, Lane::Interactive),
                        queue(model, Lane::Batch),
                        seconds(minute.and_then(|m| m.ttft_p50_s)),
                        seconds(minute.and_then(|m| m.ttft_p95_s)),
                        minute.map_or("-".to_string(), |m| format!("{} of {} ({:.1}%)", m.errors, m.finished, m.error_rate * 100.0)),
                    ]
                })
                .collect(),
        });
        tables.push(Table {
            id: "workers",
            title: "Workers",
            note: "live workers in the registry",
            headers: vec!["worker", "backend", "host", "pid", "models", "slots in use", "last heartbeat", "up"],
            rows: self
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        w.backend.clone(),
                        w.host.clone(),
                        w.pid.to_string(),
                        w.models.join(", "),
                        format!("{} / {}", w.busy, w.slots),
                        format!("{:.1} s ago", w.heartbeat_age_ms as f64 / 1000.0),
                        duration(self.generated_ms.saturating_sub(w.started_ms) / 1000),
                    ]
                })
                .collect(),
        });
        tables.push(Table {
            id: "queues",
            title: "Queues",
            note: "one durable JetStream consumer per model, kind and lane",
            headers: vec!["model", "kind", "lane", "pending", "held (ack pending)", "waiting pulls"],
            rows: self
                .lanes
                .iter()
                .map(|d| {
                    vec![
                        d.model.clone(),
                        job_kind_name(d.kind).to_string(),
                        d.lane.as_str().to_string(),
                        d.pending.to_string(),
                        d.ack_pending.to_string(),
                        d.waiting_pulls.to_string(),
                    ]
                })
                .collect(),
        });
        tables.push(Table {
            id: "batches",
            title: "Batches in progress",
            note: "batches not yet completed, failed, expired or cancelled",
            headers: vec!["batch", "status", "endpoint", "user", "requests", "completed", "failed", "age"],
            rows: self
                .batches
                .iter()
                .map(|b| {
                    vec![
                        b.id.clone(),
                        batch_status_name(b.status),
                        b.endpoint.clone(),
                        b.user.clone(),
                        b.request_counts.total.to_string(),
                        b.request_counts.completed.to_string(),
                        b.request_counts.failed.to_string(),
                        duration((self.generated_ms / 1000).saturating_sub(b.created_at)),
                    ]
                })
                .collect(),
        });
        tables
    }
}

/// One section of the status page: a titled table of text cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The HTML id of its section.
    pub id: &'static str,
    pub title: &'static str,
    /// What its figures mean.
    pub note: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The table as aligned text columns (for a terminal), `(none)` under the header when empty.
    pub fn to_text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, (cell, width)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let _ = write!(out, "{cell:<width$}");
            }
            out.trim_end().to_string()
        };
        let mut text = format!("{} ({})\n", self.title.to_uppercase(), self.note);
        text.push_str(&line(&mut self.headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>().iter().map(String::as_str)));
        text.push('\n');
        if self.rows.is_empty() {
            text.push_str("(none)\n");
        }
        for row in &self.rows {
            text.push_str(&line(&mut row.iter().map(String::as_str)));
            text.push('\n');
        }
        text
    }
}

/// The value, or an empty one and a note in `errors` of what could not be read.
fn or_note<T: Default, E: std::fmt::Display>(result: Result<T, E>, what: &str, errors: &mut Vec<String>) -> T {
    result.unwrap_or_else(|e| {
        errors.push(format!("{what}: {e}"));
        T::default()
    })
}

fn summarize_batches(records: Vec<switchyard_scheduler::batches::store::BatchRecord>) -> Vec<BatchSummary> {
    let mut batches: Vec<BatchSummary> = records
        .into_iter()
        .map(|record| BatchSummary {
            id: record.batch.id,
            status: record.batch.status,
            endpoint: record.batch.endpoint,
            user: record.owner.user,
            request_counts: record.batch.request_counts,
            created_at: record.batch.created_at,
        })
        .collect();
    batches.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    batches
}

fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}

fn kind_name(kind: ModelKind) -> String {
    job_kind_name(kind.job_kind()).to_string()
}

fn job_kind_name(kind: JobKind) -> &'static str {
    kind.as_str()
}

fn batch_status_name(status: BatchStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{status:?}"))
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(s) if s < 1.0 => format!("≤{:.0} ms", s * 1000.0),
        Some(s) => format!("≤{s:.2} s"),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// Escapes text for an HTML element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's sections as HTML (what the page swaps in on every poll), every string escaped.
pub fn render_tables(data: &StatusData) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<p class=\"meta\" id=\"meta\" data-generated-ms=\"{}\">Answered by api replica <code>{}</code>.</p>",
        data.generated_ms,
        escape(&data.replica)
    );
    for error in &data.errors {
        let _ = write!(html, "<p class=\"error\">Could not read {}</p>", escape(error));
    }
    for table in data.tables() {
        let _ = write!(
            html,
            "<section id=\"{id}\"><h2>{title} <span class=\"count\">({count})</span></h2><p class=\"note\">{note}</p><table><thead><tr>",
            id = table.id,
            title = escape(table.title),
            count = table.rows.len(),
            note = escape(table.note)
        );
        for header in &table.headers {
            let _ = write!(html, "<th>{}</th>", escape(header));
        }
        html.push_str("</tr></thead><tbody>");
        if table.rows.is_empty() {
            let _ = write!(html, "<tr><td class=\"none\" colspan=\"{}\">none</td></tr>", table.headers.len());
        }
        for row in &table.rows {
            html.push_str("<tr>");
            for cell in row {
                let _ = write!(html, "<td>{}</td>", escape(cell));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table></section>");
    }
    html
}

/// The admin key from the `Authorization` header, or else from the page's cookie, as an
/// `Authorization` value for the gate.
fn credentials(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return Some(value.clone());
    }
    let secret = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    HeaderValue::from_str(&format!("Bearer {secret}")).ok()
}

/// Authenticates the caller (as the `Caller` extractor does) and refuses a key without the
/// admin flag.
async fn admin(state: &AppState, authorization: Option<&HeaderValue>) -> Result<Caller, ApiError> {
    let caller = state.gate.authenticate(authorization).await?;
    match &caller.key {
        Some(key) if !key.admin => Err(ApiError::Forbidden(format!(
            "The API key {} is not an admin key; the status page needs one (`switchyard keys create --admin`).",
            key.hint
        ))),
        _ => Ok(caller),
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// An admin key, given once by a browser; kept in a cookie.
    key: Option<String>,
}

/// `GET /status`: the page, with the tables rendered in.
pub async fn page(State(state): State<AppState>, Query(query): Query<PageQuery>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(key) = query.key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
        let authorization = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ApiError::Unauthorized("The key parameter is not a valid API key.".into()))?;
        let caller = admin(&state, Some(&authorization)).await?;
        let mut response = Redirect::to("/status").into_response();
        if caller.key.is_some() {
            // A key the gate accepted is plain text: `sy-` and alphanumerics.
            let cookie = format!("{COOKIE}={key}; Path=/status; HttpOnly; SameSite=Strict");
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
        }
        return Ok(response);
    }
    admin(&state, credentials(&headers).as_ref()).await?;
    let data = StatusData::read(&state).await;
    let page = PAGE.replacen("<!--TABLES-->", &render_tables(&data), 1);
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct DataQuery {
    /// `html`: the page's tables as an HTML fragment instead of JSON.
    format: Option<String>,
}

/// `GET /status/data`: [`StatusData`] as JSON, or with `?format=html` the page's tables.
pub async fn data(State(state): State<AppState>, Query(query): Query<DataQuery>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&state, credentials(&headers).as_ref()).await?;
    let data = StatusData::read(&state).await;
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    Ok(match query.format.as_deref() {
        Some("html") => (no_store, Html(render_tables(&data))).into_response(),
        None | Some("json") => (no_store, axum::Json(data)).into_response(),
        Some(other) => return Err(ApiError::invalid("format", format!("Unknown format `{other}`: use `json` or `html`."))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::WIRE_VERSION;

    fn card(name: &str, kind: ModelKind) -> ModelCard {
        serde_json::from_value(serde_json::json!({"v": WIRE_VERSION, "name": name, "kind": kind, "backend": "echo", "created": 0}))
            .unwrap_or_else(|e| panic!("a minimal model card: {e}"))
    }

    #[test]
    fn models_come_from_cards_workers_queues_and_the_last_minute() {
        let worker = WorkerRecord {
            v: WIRE_VERSION,
            worker_id: "w1".into(),
            backend: "echo".into(),
            host: "h".into(),
            pid: 7,
            slots: 4,
            busy: 1,
            models: vec![card("a<b>", ModelKind::Chat)],
            started_ms: 1_000,
            heartbeat_ms: 9_000,
        };
        let lane =
            LaneDepth { model: "queued-only".into(), kind: JobKind::Chat, lane: Lane::Batch, pending: 3, ack_pending: 1, waiting_pulls: 0 };
        let data = StatusData::assemble(10_000, vec![card("gone", ModelKind::Embedding)], vec![worker], vec![lane], vec![]);
        let names: Vec<&str> = data.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a<b>", "gone", "queued-only"]);
        assert_eq!(data.models[0].workers, ["w1"]);
        assert_eq!((data.models[0].busy, data.models[0].slots), (1, 4));
        assert_eq!(data.models[1].kind, Some(ModelKind::Embedding));
        assert_eq!(data.models[2].kind, None);
        assert_eq!(data.workers[0].heartbeat_age_ms, 1_000);
        let html = render_tables(&data);
        assert!(html.contains("a&lt;b&gt;") && !html.contains("a<b>"), "{html}");
        assert!(data.tables()[0].to_text().contains("3 / 1"), "{}", data.tables()[0].to_text());
        let json = serde_json::to_string(&data).unwrap();
        assert_eq!(serde_json::from_str::<StatusData>(&json).unwrap(), data);
    }

    #[test]
    fn the_key_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert!(credentials(&headers).is_none());
        headers.insert(header::COOKIE, HeaderValue::from_static("other=1; switchyard_status_key=sy-abc"));
        assert_eq!(credentials(&headers).unwrap(), "Bearer sy-abc");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sy-header"));
        assert_eq!(credentials(&headers).unwrap(), "Bearer sy-header");
    }

    #[test]
    fn text_tables_are_aligned() {
        let table = Table { id: "t", title: "T", note: "n", headers: vec!["a", "bb"], rows: vec![vec!["long".into(), "x".into()]] };
        assert_eq!(table.to_text(), "T (n)\nA     BB\nlong  x\n");
    }
}
