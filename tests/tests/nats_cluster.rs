//! Switchyard on a three-node NATS cluster (`broker-config/cluster/`) with R3 streams: one
//! node SIGKILLed under load and restarted, no job lost, none answered twice; a killed worker's
//! job resumed and a left stream cancelled while a node is down and after it returns; and R3
//! asked of a single server, refused at start with a message that says why.
//!
//! What a client may see when a node dies (broker-config/cluster/README.md, "What a node loss
//! costs"): a request whose job could not be queued while JetStream elected a new leader for
//! the jobs stream (the publish is retried for 12 s) gets a 503 (`service_unavailable`, "The job
//! queue did not accept the job"), and a stream whose events were lost with the api's or the
//! worker's connection ends with an error event (`stream_gap`, "Lost messages … between worker
//! and api") instead of wrong text — or, when the first events were lost, a 502 with that error.
//! Never a wrong or doubled answer, never a request left hanging.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};
use switchyard_schemas::{EventBody, FinishReason, subject};
use switchyard_tests::cluster::ClusterStack;
use switchyard_tests::sse::SseReader;
use switchyard_tests::{Servers, StackOptions, eventually, switchyard_bin, workspace_root};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// Concurrent streamed chat requests to the echo workers, each client one after another.
const ECHO_CLIENTS: usize = 24;
/// Concurrent streamed completions to the torch worker.
const TORCH_CLIENTS: usize = 2;
/// How long one request may take before it counts as lost.
const REQUEST_LIMIT: Duration = Duration::from_secs(20);
/// `--idle-timeout` of the api.
const IDLE_TIMEOUT: &str = "3s";
/// How long after the kill errors may be seen: JetStream elects a new leader for the jobs stream
/// when its followers' election timers run out (4 to 9 s in nats-server), and the idle timeout
/// ends streams whose last events were lost.
const ERROR_WINDOW: Duration = Duration::from_secs(14);

/// How one request ended.
#[derive(Debug, Clone)]
enum Outcome {
    /// The whole answer, as expected.
    Answered,
    /// A documented error: (kind, message).
    Refused(String, String),
    /// Anything else: a wrong or doubled text, an undocumented error, no answer in time.
    Broken(String),
}

#[derive(Debug, Clone)]
struct Record {
    client: String,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

/// The echo answer to `text` is `text`, word by word; each request's words are its own.
fn echo_text(client: usize, n: usize) -> String {
    (0..12).map(|w| format!("c{client}r{n}w{w}")).collect::<Vec<_>>().join(" ")
}

/// Reads a streamed response to its end and says how it went against `expected`.
async fn judge(response: reqwest::Result<reqwest::Response>, expected: &str, endpoint: &str) -> Outcome {
    let response = match response {
        Ok(response) => response,
        Err(e) => return Outcome::Broken(format!("no response from the api: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => return Outcome::Broken(format!("status {status}, body cut: {e}")),
    };
    if status != 200 {
        let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let code = error["error"]["code"].as_str().unwrap_or("").to_string();
        let message = error["error"]["message"].as_str().unwrap_or(&body).to_string();
        // A job whose first events were lost ends before the stream starts: the same `stream_gap`
        // error, as the status of the response.
        return if (status == 503 && code == "service_unavailable") || (status == 502 && code == "stream_gap") {
            Outcome::Refused(format!("{status} {code}"), message)
        } else {
            Outcome::Broken(format!("status {status}: {body}"))
        };
    }
    let mut text = String::new();
    let mut done = false;
    for line in body.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(event) = serde_json::from_str::<Value>(line) else { return Outcome::Broken(format!("not JSON: {line}")) };
        if let Some(error) = event.get("error") {
            let code = error["code"].as_str().unwrap_or("").to_string();
            let message = error["message"].as_str().unwrap_or("").to_string();
            return if code == "stream_gap" {
                Outcome::Refused(format!("stream error {code}"), message)
            } else if message.contains("went silent") {
                Outcome::Refused("stream error: the worker went silent".into(), message)
            } else {
                Outcome::Broken(format!("undocumented stream error after {text:?}: {error}"))
            };
        }
        let choice = &event["choices"][0];
        let piece = if endpoint == CHAT { choice["delta"]["content"].as_str() } else { choice["text"].as_str() };
        text.push_str(piece.unwrap_or(""));
    }
    match (done, text == expected) {
        (true, true) => Outcome::Answered,
        (false, _) => Outcome::Broken(format!("stream without [DONE] after {text:?}")),
        (true, false) => Outcome::Broken(format!("wrong answer: {text:?}, expected {expected:?}")),
    }
}

/// A client sending `body_of(n)` one request after another until `stop`, recording each.
async fn client(
    stack: Arc<ClusterStack>,
    name: String,
    endpoint: &'static str,
    body_of: impl Fn(usize) -> (Value, String),
    stop: Arc<AtomicBool>,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (body, expected) = body_of(n);
        let sent = Instant::now();
        let request = stack.http().post(stack.api_url(endpoint)).json(&body).send();
        let outcome = match tokio::time::timeout(REQUEST_LIMIT, async { judge(request.await, &expected, endpoint).await }).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Broken(format!("no answer within {REQUEST_LIMIT:?}: a lost job")),
        };
        let refused = matches!(outcome, Outcome::Refused(..));
        records.push(Record { client: name.clone(), sent, done: Instant::now(), outcome });
        n += 1;
        if refused {
            // As a client would: a moment before trying again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    records
}

/// The reference prompts of `models/tiny-llama/expected.json`: (prompt, greedy text of 24 tokens).
fn tiny_llama_prompts() -> Vec<(String, String)> {
    let path = workspace_root().join("models/tiny-llama/expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("reading expected.json")).unwrap();
    expected["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| (p["text"].as_str().unwrap().to_string(), p["greedy_new_text"].as_str().unwrap().to_string()))
        .collect()
}

/// Every stream and bucket Switchyard's api and workers make (the scheduler's batch results
/// stream is made in scheduler/, see broker-config/cluster/README.md).
const REPLICATED: [&str; 6] = ["SY_JOBS", "SY_DEAD", "SY_EVENTS", "KV_SY_ASYNC_JOBS", "KV_SY_BATCHES", "OBJ_SY_FILES"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_job_and_answers_none_twice() {
    let test = async {
        // A stream whose last events were lost with its worker's connection ends after the
        // idle timeout (the worker went silent), not after the default two minutes.
        let options = StackOptions {
            queue_timeout: Duration::from_secs(15),
            api_args: vec!["--idle-timeout".into(), IDLE_TIMEOUT.into()],
            ..Default::default()
        };
        let stack = Arc::new(ClusterStack::start(options).await);
        let echo_args = ["echo", "--delay", "3ms", "--slots", "64"];
        let _echo_1 = stack.ready_worker(&echo_args, "echo").await;
        let _echo_2 = stack.ready_worker(&echo_args, "echo").await;
        let llama = workspace_root().join("models/tiny-llama");
        let _torch = stack.ready_worker(&["torch", "--model-path", llama.to_str().unwrap(), "--slots", "4"], "tiny-llama").await;

        // R3 everywhere, placed on all three nodes.
        let js = jetstream::new(stack.nats_client().await);
        for name in REPLICATED {
            let mut stream = js.get_stream(name).await.unwrap_or_else(|e| panic!("stream {name}: {e}"));
            let info = stream.info().await.unwrap();
            assert_eq!(info.config.num_replicas, 3, "{name} is not R3: {:?}", info.config);
            let cluster = info.cluster.as_ref().unwrap_or_else(|| panic!("{name} has no cluster info"));
            assert_eq!(cluster.replicas.len(), 2, "{name} has a leader and two replicas: {cluster:?}");
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..ECHO_CLIENTS {
            let body_of = move |n: usize| {
                let text = echo_text(c, n);
                (json!({ "model": "echo", "stream": true, "messages": [{ "role": "user", "content": text }] }), text)
            };
            clients.push(tokio::spawn(client(stack.clone(), format!("echo-{c}"), CHAT, body_of, stop.clone())));
        }
        let prompts = Arc::new(tiny_llama_prompts());
        for c in 0..TORCH_CLIENTS {
            let prompts = prompts.clone();
            let body_of = move |n: usize| {
                let (prompt, greedy) = &prompts[(c + n) % prompts.len()];
                (json!({ "model": "tiny-llama", "prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": true }), greedy.clone())
            };
            clients.push(tokio::spawn(client(stack.clone(), format!("torch-{c}"), COMPLETIONS, body_of, stop.clone())));
        }

        // Load, then the jobs stream's leader dies: the node JetStream must replace first.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let leader = js.get_stream(subject::JOBS_STREAM).await.unwrap().info().await.unwrap().cluster.clone().unwrap().leader.unwrap();
        let victim = stack.cluster().node_index(&leader).expect("the leader is one of the nodes");
        let killed = Instant::now();
        stack.cluster().kill(victim);
        eprintln!("[test] SIGKILLed {leader} (leader of {})", subject::JOBS_STREAM);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stack.cluster().restart(victim).await;
        let restarted = Instant::now();
        eprintln!("[test] restarted {leader} after {:.1?}", restarted - killed);
        tokio::time::sleep((killed + ERROR_WINDOW + Duration::from_secs(3)).saturating_duration_since(Instant::now())).await;
        stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        for client in clients {
            records.extend(client.await.expect("a client task"));
        }
        stack.cluster().wait_healthy(Duration::from_secs(20)).await;

        // What the clients saw, by phase.
        let phase = |record: &Record| {
            if record.done < killed {
                "1 before the kill"
            } else if record.sent < restarted {
                "2 node down"
            } else if record.sent < killed + ERROR_WINDOW {
                "3 restarted, within the error window"
            } else {
                "4 after the error window"
            }
        };
        let mut table: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for record in &records {
            let kind = match &record.outcome {
                Outcome::Answered => "answered".to_string(),
                Outcome::Refused(kind, _) => kind.clone(),
                Outcome::Broken(_) => "BROKEN".to_string(),
            };
            *table.entry((phase(record), kind)).or_default() += 1;
        }
        eprintln!("| phase | outcome | requests |\n|---|---|---|");
        for ((phase, kind), count) in &table {
            eprintln!("| {phase} | {kind} | {count} |");
        }
        let mut messages: BTreeMap<&str, (usize, &Record)> = BTreeMap::new();
        for record in &records {
            if let Outcome::Refused(_, message) | Outcome::Broken(message) = &record.outcome {
                messages.entry(message.get(..60).unwrap_or(message)).or_insert((0, record)).0 += 1;
            }
        }
        for (count, record) in messages.values() {
            let at =
                record.sent.saturating_duration_since(killed).as_secs_f64() - killed.saturating_duration_since(record.sent).as_secs_f64();
            eprintln!("[test] {count} × e.g. {} sent at {at:+.2} s from the kill: {:?}", record.client, record.outcome);
        }

        let broken: Vec<&Record> = records.iter().filter(|r| matches!(r.outcome, Outcome::Broken(_))).collect();
        assert!(broken.is_empty(), "{} requests broken, e.g. {:?}", broken.len(), &broken[..broken.len().min(5)]);
        // Errors only while the cluster replaces what the node led (and for what was in flight).
        let late: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Refused(..)) && (r.done < killed || r.sent > killed + ERROR_WINDOW))
            .collect();
        assert!(late.is_empty(), "errors outside the node's loss: {late:?}");
        let answered = |from: &str| records.iter().filter(|r| phase(r) == from && matches!(r.outcome, Outcome::Answered)).count();
        assert!(answered("1 before the kill") > 50, "too little load before the kill: {table:?}");
        assert!(answered("4 after the error window") > 50, "requests must go on after the restart: {table:?}");
        let after = records.iter().filter(|r| r.sent > killed + ERROR_WINDOW).count();
        assert_eq!(answered("4 after the error window"), after, "every request after the error window is answered: {table:?}");
        for client in ["torch-0", "torch-1"] {
            assert!(
                records.iter().any(|r| r.client == client && r.sent > killed && matches!(r.outcome, Outcome::Answered)),
                "{client} got no answer after the kill"
            );
        }

        // No job left behind: the work queue empties, nothing is pending or dead-lettered.
        eventually(Duration::from_secs(15), "the jobs stream to empty and its consumers to settle", || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream(subject::JOBS_STREAM).await.ok()?;
                let info = stream.info().await.ok()?.clone();
                if info.state.messages != 0 {
                    return None;
                }
                let mut names = stream.consumer_names();
                use futures::StreamExt;
                while let Some(name) = names.next().await {
                    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name.ok()?).await.ok()?;
                    let consumer_info = consumer.cached_info();
                    if consumer_info.num_ack_pending != 0 || consumer_info.num_pending != 0 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        let dead = js.get_stream(subject::DEAD_LETTER_STREAM).await.unwrap().info().await.unwrap().state.messages;
        assert_eq!(dead, 0, "no job may be dead-lettered by a node's loss");
        // The restarted node is a full replica again.
        eventually(Duration::from_secs(15), "the restarted node to catch up on every stream", || {
            let js = js.clone();
            async move {
                for name in REPLICATED {
                    let info = js.get_stream(name).await.ok()?.info().await.ok()?.clone();
                    let cluster = info.cluster?;
                    let members = cluster.leader.iter().count() + cluster.replicas.iter().filter(|p| p.current && !p.offline).count();
                    if members != 3 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        // And serves: a request through a client on the restarted node alone.
        let (status, _) = {
            let response = stack
                .http()
                .post(stack.api_url(CHAT))
                .json(&json!({ "model": "echo", "messages": [{ "role": "user", "content": "after all that" }] }))
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        };
        assert_eq!(status, 200);
        let single =
            switchyard_broker::connect_nats(&stack.cluster().node_url(victim), "restarted-node", &Default::default()).await.unwrap();
        let info = jetstream::new(single).get_stream(subject::JOBS_STREAM).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3);
        stack
    };
    let stack = tokio::time::timeout(Duration::from_secs(120), test).await.expect("the cluster test is bounded");
    drop(stack);
}

#[tokio::test]
async fn three_replicas_on_a_single_server_fail_at_start_saying_why() {
    let servers = Servers::start().await;
    let auth = switchyard_broker::BrokerAuth { stream_replicas: Some(3), ..Default::default() };
    let nats = switchyard_broker::connect_nats(&servers.nats_url(), "r3-on-one", &auth).await.unwrap();
    let started = Instant::now();
    let error = switchyard_broker::jobs::ensure_streams(&jetstream::new(nats)).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "a single server's refusal is final: no waiting ({:?})", started.elapsed());
    for needle in ["3 replicas of stream SY_JOBS", "--stream-replicas", "the server said", "non-clustered"] {
        assert!(error.contains(needle), "{needle:?} missing from: {error}");
    }

    // The same through a part's flag: the scheduler exits at start with the message.
    let mut command = std::process::Command::new(switchyard_bin());
    command.args(["scheduler", "--nats-url", &servers.nats_url(), "--redis-url", &servers.redis_url(), "--listen", "127.0.0.1:0"]);
    command.args(["--stream-replicas", "3"]);
    let scheduler = servers.spawn("scheduler-r3", command);
    let status = scheduler.wait_exit(Duration::from_secs(20)).await.expect("the scheduler exits at start");
    assert!(!status.success());
    let log = scheduler.log();
    assert!(log.contains("3 replicas of stream SY_JOBS") && log.contains("--stream-replicas"), "{log}");
}

async fn open_stream(stack: &ClusterStack, prompt: &str) -> SseReader {
    let body = json!({ "model": "echo", "stream": true, "messages": [{ "role": "user", "content": prompt }] });
    let response = stack.http().post(stack.api_url(CHAT)).json(&body).send().await.expect("the api answers");
    assert_eq!(response.status(), 200, "a stream opens");
    SseReader::new(response)
}

/// A worker SIGKILLed mid-stream: another one continues the job from what the client had,
/// and the client's text is the whole answer exactly once.
async fn a_killed_workers_job_is_resumed(stack: &ClusterStack, when: &str) {
    let args = ["echo", "--delay", "100ms", "--ack-wait", "1s"];
    let first = stack.ready_worker(&args, "echo").await;
    let prompt = (0..40).map(|w| format!("resume{w}")).collect::<Vec<_>>().join(" ");
    let mut reader = open_stream(stack, &prompt).await;
    let mut text = reader.read_text_chunks(&mut Vec::new(), 3).await;
    let _second = stack.ready_worker(&args, "echo").await;
    first.sigkill();
    let rest = tokio::time::timeout(Duration::from_secs(60), reader.rest()).await.expect("the stream finishes within 60 s");
    for chunk in &rest {
        assert!(chunk.get("error").is_none(), "{when}: the resumed stream ended with an error: {chunk}");
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(text, prompt, "{when}: nothing lost, nothing repeated");
}

/// A client that leaves mid-stream cancels its job: the worker ends it as cancelled at once.
async fn a_left_stream_is_cancelled(stack: &ClusterStack, when: &str) {
    let _worker = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;
    let mut tap = stack.tap_replies().await;
    let prompt = (0..60).map(|w| format!("cancel{w}")).collect::<Vec<_>>().join(" ");
    let mut reader = open_stream(stack, &prompt).await;
    reader.read_text_chunks(&mut Vec::new(), 2).await;
    let job_id =
        tap.wait_for(Duration::from_secs(5), |e| matches!(e.body, EventBody::Started { .. })).await.expect("a started event").job_id;
    drop(reader);
    let done = tap
        .wait_for(Duration::from_secs(10), |e| e.job_id == job_id && e.body.is_terminal())
        .await
        .unwrap_or_else(|| panic!("{when}: the worker never ended the cancelled job"));
    match done.body {
        EventBody::Done { finish_reason, usage } => {
            assert_eq!(finish_reason, FinishReason::Cancelled, "{when}: the job ends as cancelled");
            assert!(usage.completion_tokens < 40, "{when}: generation went on after the client left: {usage:?}");
        }
        other => panic!("{when}: expected Done {{ Cancelled }}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_cancel_work_while_a_node_is_down_and_after_it_returns() {
    let test = async {
        let stack = ClusterStack::start(StackOptions::default()).await;
        let js = jetstream::new(stack.nats_client().await);
        let leader = js.get_stream(subject::JOBS_STREAM).await.unwrap().info().await.unwrap().cluster.clone().unwrap().leader.unwrap();
        let victim = stack.cluster().node_index(&leader).expect("the leader is one of the nodes");
        stack.cluster().kill(victim);
        eventually(Duration::from_secs(30), "a new leader of the jobs stream", || {
            let js = js.clone();
            let leader = leader.clone();
            async move {
                let info = js.get_stream(subject::JOBS_STREAM).await.ok()?.info().await.ok()?.clone();
                info.cluster?.leader.filter(|new| *new != leader).map(|_| ())
            }
        })
        .await;
        a_killed_workers_job_is_resumed(&stack, "node down").await;
        a_left_stream_is_cancelled(&stack, "node down").await;

        stack.cluster().restart(victim).await;
        stack.cluster().wait_healthy(Duration::from_secs(20)).await;
        a_killed_workers_job_is_resumed(&stack, "node back").await;
        a_left_stream_is_cancelled(&stack, "node back").await;
        stack
    };
    let stack = tokio::time::timeout(Duration::from_secs(150), test).await.expect("the cluster test is bounded");
    drop(stack);
}
