//! `--only trace`: where the time of one non-stream request goes, seen from outside.
//!
//! A passive NATS subscriber on `>` (on its own thread, so the client does not delay its
//! timestamps) sees every message the job path sends through nats-server: the api's job
//! publish, JetStream's publish ack, the worker's events and its ack. (JetStream's delivery of
//! the job to the worker's pull request does not reach a `>` subscriber, so that hop shows
//! only as the gap between the publish and the worker's first event.) With one request in flight at a time, each message belongs to the request whose
//! window it falls in, so the median offset of each stage from the moment the client sent
//! the request shows which hop costs what. The monitor doubles nats-server's fan-out, so
//! the end-to-end figure here is a little above the plain (a) latency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use hyper::{Method, StatusCode};

use crate::client::{Conn, Target};

struct Seen {
    at: Instant,
    subject: String,
    reply: Option<String>,
    head: Bytes,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    JobPublished,
    Delivered,
    PublishAck,
    FirstEvent,
    LastEvent,
    Response,
    WorkerAck,
}

const STAGES: [(Stage, &str); 7] = [
    (Stage::JobPublished, "api publishes the job (sy.job.…) — HTTP parse, auth, validate, encode"),
    (Stage::Delivered, "JetStream delivers it to the worker's pull (_INBOX…, reply $JS.ACK…)"),
    (Stage::PublishAck, "JetStream's publish ack reaches the api's inbox"),
    (Stage::FirstEvent, "worker's first event (Started) on sy.reply.… — decode, Redis cancel check, spawns"),
    (Stage::LastEvent, "worker's last event (Done)"),
    (Stage::Response, "client has the whole HTTP response"),
    (Stage::WorkerAck, "worker acks the job ($JS.ACK…)"),
];

pub struct TraceReport {
    pub requests: usize,
    /// (stage description, p50 offset, p90 offset, found in how many requests)
    pub stages: Vec<(&'static str, Duration, Duration, usize)>,
    /// Median count per request of messages of each kind, for the curious.
    pub events_per_request: f64,
    pub other_messages: Vec<(String, usize)>,
}

pub async fn trace(target: &Target, nats_url: &str, body: &Bytes, warmup: usize, n: usize) -> anyhow::Result<TraceReport> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::with_capacity(n * 12)));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let monitor = {
        let seen = seen.clone();
        let nats_url = nats_url.to_string();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let client = match async_nats::connect(&nats_url).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("connecting the monitor to {nats_url}: {e}")));
                        return;
                    }
                };
                let mut all = match client.subscribe(">").await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("subscribing to >: {e}")));
                        return;
                    }
                };
                let _ = client.flush().await;
                let _ = ready_tx.send(Ok(()));
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        message = all.next() => {
                            let Some(message) = message else { break };
                            let at = Instant::now();
                            let head = message.payload.slice(..message.payload.len().min(32));
                            seen.lock().unwrap().push(Seen { at, subject: message.subject.to_string(), reply: message.reply.map(|r| r.to_string()), head });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
            });
        })
    };
    ready_rx.await.context("the monitor thread died")??;

    let mut conn = Conn::open(target).await?;
    let mut windows = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        let (status, response) = conn.call(Method::POST, "/v1/chat/completions", body).await?;
        let t1 = Instant::now();
        anyhow::ensure!(status == StatusCode::OK, "answered {status}: {}", String::from_utf8_lossy(&response));
        if i >= warmup {
            windows.push((t0, t1));
        }
        // A gap so the worker's ack lands in this request's window, not the next one's.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stop_tx.send(());
    let _ = monitor.join();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    let mut offsets: Vec<Vec<Duration>> = vec![Vec::new(); STAGES.len()];
    let mut events = Vec::new();
    let mut others: std::collections::BTreeMap<String, usize> = Default::default();
    let mut cursor = 0;
    for (i, &(t0, t1)) in windows.iter().enumerate() {
        let end = windows.get(i + 1).map_or(Instant::now(), |w| w.0);
        while cursor < seen.len() && seen[cursor].at < t0 {
            cursor += 1;
        }
        let mut found = [None::<Duration>; STAGES.len()];
        let mut set = |stage: Stage, at: Duration, last: bool| {
            let index = STAGES.iter().position(|(s, _)| *s == stage).unwrap();
            if last || found[index].is_none() {
                found[index] = Some(at);
            }
        };
        set(Stage::Response, t1 - t0, false);
        let mut n_events = 0;
        let mut j = cursor;
        while j < seen.len() && seen[j].at < end {
            let m = &seen[j];
            let at = m.at - t0;
            if m.subject.starts_with("sy.job.") {
                set(Stage::JobPublished, at, false);
            } else if m.reply.as_deref().is_some_and(|r| r.starts_with("$JS.ACK.")) {
                set(Stage::Delivered, at, false);
            } else if m.head.starts_with(b"{\"stream\":") {
                set(Stage::PublishAck, at, false);
            } else if m.subject.starts_with("sy.reply.") {
                n_events += 1;
                set(Stage::FirstEvent, at, false);
                set(Stage::LastEvent, at, true);
            } else if m.subject.starts_with("$JS.ACK.") {
                set(Stage::WorkerAck, at, false);
            } else {
                // Pull requests, heartbeats and the like, named without their unique parts.
                let name: Vec<&str> = m.subject.split('.').take(4).collect();
                *others.entry(name.join(".")).or_default() += 1;
            }
            j += 1;
        }
        events.push(n_events as f64);
        for (index, at) in found.iter().enumerate() {
            if let Some(at) = at {
                offsets[index].push(*at);
            }
        }
    }
    let quantile = |v: &mut Vec<Duration>, q: f64| -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let stages = STAGES.iter().zip(offsets.iter_mut()).map(|((_, name), v)| (*name, quantile(v, 0.5), quantile(v, 0.9), v.len())).collect();
    events.sort_by(f64::total_cmp);
    Ok(TraceReport {
        requests: windows.len(),
        stages,
        events_per_request: events.get(events.len() / 2).copied().unwrap_or(0.0),
        other_messages: others.into_iter().collect(),
    })
}

impl TraceReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "\n### Trace of one non-stream request (concurrency 1, n={}, seen by a NATS monitor on `>`)\n\n",
            self.requests
        ));
        out.push_str("| stage (offset from the client sending the request) | p50 | p90 | seen in |\n|---|---|---|---|\n");
        let mut rows: Vec<_> = self.stages.iter().filter(|s| s.3 > 0).collect();
        rows.sort_by_key(|s| s.1);
        for (name, p50, p90, count) in rows {
            out.push_str(&format!("| {name} | {:.3} ms | {:.3} ms | {count} |\n", p50.as_secs_f64() * 1e3, p90.as_secs_f64() * 1e3));
        }
        out.push_str(&format!("\nevents per request (median): {}", self.events_per_request));
        if !self.other_messages.is_empty() {
            let per: Vec<String> = self
                .other_messages
                .iter()
                .map(|(name, count)| format!("{name}: {:.2}/request", *count as f64 / self.requests.max(1) as f64))
                .collect();
            out.push_str(&format!("; other messages: {}", per.join(", ")));
        }
        out.push('\n');
        out
    }
}
