//! The job path under worker churn: sharing jobs between workers, a worker killed mid-job, a
//! client that goes away, and a worker that drains on SIGTERM. The worker side is watched on
//! NATS (`sy.reply.>`), where every event says which worker ran which job.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_schemas::{EventBody, FinishReason, StreamEvent, encode};
use switchyard_tests::openai::{Endpoint, assert_usage, chat_request, check_completion, check_stream, words};
use switchyard_tests::{Proc, ReplyTap, Stack, eventually};

const CHAT: &str = "/v1/chat/completions";

/// Reads chunks until at least `tokens` pieces of text arrived; returns the text so far.

#[tokio::test]
async fn two_workers_of_one_model_both_get_jobs() {
    let stack = Stack::start().await;
    // Two slots: the echo worker serves two models (chat and embedding), one pull each; see
    // `a_one_slot_worker_of_two_models_takes_queued_jobs_without_stalling` for --slots 1.
    let args = ["echo", "--slots", "2", "--delay", "20ms"];
    let a = stack.worker(&args);
    let b = stack.worker(&args);
    let (id_a, id_b) = (stack.worker_id(&a).await, stack.worker_id(&b).await);
    stack.wait_for_model("echo").await;
    let mut tap = stack.tap_replies().await;

    // Some one at a time, then a concurrent burst.
    let mut expected = Vec::new();
    for i in 0..6 {
        let prompt = format!("sequential request number {i}");
        let (status, body) = stack.post_json(CHAT, &chat_request("echo", &prompt)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(check_completion(Endpoint::Chat, &body, "echo").0, std::slice::from_ref(&prompt));
        expected.push(prompt);
    }
    let burst = (0..14).map(|i| {
        let stack = &stack;
        async move {
            let prompt = format!("concurrent request number {i} with a few words");
            let (status, body) = stack.post_json(CHAT, &chat_request("echo", &prompt)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(check_completion(Endpoint::Chat, &body, "echo").0, [prompt]);
        }
    });
    futures::future::join_all(burst).await;

    tap.drain(Duration::from_millis(500)).await;
    let started = tap.started_by();
    let jobs: HashSet<&String> = started.iter().map(|(job, _, _)| job).collect();
    assert_eq!(jobs.len(), 20, "one job per request: {started:?}");
    assert_eq!(started.len(), 20, "no job started twice: {started:?}");
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for (_, worker, _) in &started {
        *per_worker.entry(worker.as_str()).or_default() += 1;
    }
    assert!(per_worker.keys().all(|w| *w == id_a || *w == id_b), "jobs ran on unknown workers: {per_worker:?}");
    assert!(per_worker.get(id_a.as_str()).copied().unwrap_or(0) > 0, "worker A got no job: {per_worker:?}");
    assert!(per_worker.get(id_b.as_str()).copied().unwrap_or(0) > 0, "worker B got no job: {per_worker:?}");
    drop((a, b));
}

/// A worker with one slot that serves two models (echo: `echo` and `echo-embedding`) must not
/// leave its free slot parked in an idle pull for the other model while chat jobs wait.
/// Ten short requests in a row take well under a second when the slot goes straight back to
/// work; the bound is 5 s.
#[tokio::test]
async fn a_one_slot_worker_of_two_models_takes_queued_jobs_without_stalling() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "1"], "echo").await;
    let started = Instant::now();
    let mut each = Vec::new();
    for i in 0..10 {
        let sent = Instant::now();
        let prompt = format!("request {i}");
        let (status, body) = stack.post_json(CHAT, &chat_request("echo", &prompt)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(check_completion(Endpoint::Chat, &body, "echo").0, [prompt]);
        each.push(sent.elapsed());
    }
    let total = started.elapsed();
    assert!(total < Duration::from_secs(5), "10 two-token jobs took {total:?} on an idle worker; per request: {each:?}");
}

#[tokio::test]
async fn job_of_a_killed_worker_completes_on_another_without_loss_or_duplication() {
    let stack = Stack::start().await;
    let args = ["echo", "--delay", "100ms", "--ack-wait", "1s"];
    let a = stack.worker(&args);
    let id_a = stack.worker_id(&a).await;
    stack.wait_for_model("echo").await;
    let mut tap = stack.tap_replies().await;

    let prompt = words("resume", 50); // 5 s at 100 ms a token: time to start B before A finishes
    let request = json!({
        "model": "echo",
        "messages": [{ "role": "user", "content": prompt }],
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    let mut reader = stack.post_stream(CHAT, &request).await;
    let mut chunks = Vec::new();
    let before = reader.read_text_chunks(&mut chunks, 3).await;
    assert!(prompt.starts_with(&before), "text so far {before:?} is not a prefix of the prompt");

    let b_metrics = format!("127.0.0.1:{}", switchyard_tests::free_port());
    let b = stack.worker(&[&args[..], &["--metrics-listen", &b_metrics]].concat());
    let id_b = stack.worker_id(&b).await;
    a.sigkill();

    let rest = tokio::time::timeout(Duration::from_secs(60), reader.rest()).await.expect("the stream finishes within 60 s");
    chunks.extend(rest);
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", true);
    assert_eq!(summary.text(), prompt, "the client's text must be the prompt exactly: nothing lost, nothing repeated");
    assert_eq!(summary.finish(), "stop");
    assert_usage(summary.usage.as_ref().unwrap(), 50, 50);

    tap.drain(Duration::from_millis(300)).await;
    let started = tap.started_by();
    assert!(started.iter().any(|(_, w, attempt)| *w == id_a && *attempt == 1), "A started the job: {started:?}");
    assert!(started.iter().any(|(_, w, attempt)| *w == id_b && *attempt >= 2), "B continued it as a redelivery: {started:?}");
    assert_eq!(started.iter().map(|(job, _, _)| job).collect::<HashSet<_>>().len(), 1, "one job: {started:?}");
    let metrics = switchyard_tests::prometheus::Metrics::scrape(stack.http(), &format!("http://{b_metrics}/metrics")).await;
    assert_eq!(metrics.value(switchyard_telemetry::names::REDELIVERIES, &[("model", "echo")]), Some(1.0), "{}", metrics.text());
    drop(b);
}

/// Waits for `job_id`'s last event: it must end as cancelled, well before its 60 tokens.
async fn assert_stopped_early(tap: &mut ReplyTap, job_id: &str) {
    let done = tap
        .wait_for(Duration::from_secs(10), |e| e.job_id == job_id && e.body.is_terminal())
        .await
        .unwrap_or_else(|| panic!("the worker never ended the job: {:?}", tap.seen()));
    match done.body {
        EventBody::Done { finish_reason, usage } => {
            assert_eq!(finish_reason, FinishReason::Cancelled, "the job must end as cancelled");
            assert!(usage.completion_tokens < 40, "generation went on after the client left: {usage:?} of 60 tokens");
        }
        other => panic!("expected Done {{ Cancelled }}, got {other:?}"),
    }
}

#[tokio::test]
async fn client_disconnect_stops_generation_on_the_worker() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;
    let mut tap = stack.tap_replies().await;

    let prompt = words("cancel", 60); // 3 s of tokens if nobody stops it
    let mut reader =
        stack.post_stream(CHAT, &json!({ "model": "echo", "messages": [{ "role": "user", "content": prompt }], "stream": true })).await;
    let mut chunks = Vec::new();
    reader.read_text_chunks(&mut chunks, 2).await;
    let job_id = match tap.wait_for(Duration::from_secs(5), |e| matches!(e.body, EventBody::Started { .. })).await {
        Some(event) => event.job_id,
        None => panic!("no started event seen: {:?}", tap.seen()),
    };
    drop(reader);

    assert_stopped_early(&mut tap, &job_id).await;
}

/// Not only streams: a client that gives up on a non-streamed request cancels its job too.
#[tokio::test]
async fn client_disconnect_cancels_a_non_streamed_job() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;
    let mut tap = stack.tap_replies().await;

    let prompt = words("gone", 60); // 3 s of tokens if nobody stops it
    let request = stack.http().post(stack.api_url(CHAT)).json(&chat_request("echo", &prompt));
    let job_id = {
        // The request is dropped (connection closed) once the worker has started the job.
        let pending = request.send();
        tokio::pin!(pending);
        tokio::select! {
            response = &mut pending => panic!("the request finished before it was abandoned: {response:?}"),
            started = tap.wait_for(Duration::from_secs(30), |e| matches!(e.body, EventBody::Started { .. })) => {
                started.unwrap_or_else(|| panic!("no started event")).job_id
            }
        }
    };
    assert_stopped_early(&mut tap, &job_id).await;
}

#[tokio::test]
async fn sigterm_drains_the_running_stream_and_exits_zero() {
    let stack = Stack::start().await;
    let (worker, worker_id) = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;

    let prompt = words("drain", 30);
    let request = json!({ "model": "echo", "messages": [{ "role": "user", "content": prompt }], "stream": true });
    let mut reader = stack.post_stream(CHAT, &request).await;
    let mut chunks = Vec::new();
    reader.read_text_chunks(&mut chunks, 3).await;
    worker.sigterm();

    let rest = tokio::time::timeout(Duration::from_secs(60), reader.rest()).await.expect("the stream finishes within 60 s");
    chunks.extend(rest);
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", false);
    assert_eq!(summary.text(), prompt, "the in-flight stream completes in full");
    assert_eq!(summary.finish(), "stop");

    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap_or_else(|| panic!("the worker did not exit after SIGTERM"));
    assert!(status.success(), "the drained worker exits 0, got {}", Proc::describe_exit(status));
    // A drained worker leaves the registry itself.
    assert!(!stack.registered_worker_ids().await.contains(&worker_id), "the worker is still in sy:workers");
}

/// A client that gives up while its job is still queued: the worker that pulls the job later
/// skips it without running it — whether it heard the cancel announcement while busy with
/// another job, or started after the cancel and finds the flag in Redis.
#[tokio::test]
async fn a_job_cancelled_while_queued_is_skipped_when_pulled() {
    let stack = Stack::start().await;
    let (worker, _) = stack.ready_worker(&["echo", "--slots", "1", "--delay", "20ms"], "echo").await;
    let mut tap = stack.tap_replies().await;
    let give_up_after = Duration::from_millis(300);
    let abandon = |prompt: &'static str| {
        let request = stack.http().post(stack.api_url(CHAT)).timeout(give_up_after).json(&chat_request("echo", prompt));
        async move {
            let outcome = request.send().await;
            assert!(outcome.as_ref().is_err_and(|e| e.is_timeout()), "the request must still be queued when abandoned: {outcome:?}");
        }
    };
    let skipped = |worker: &Proc| worker.log().matches("cancelled while queued; skipped").count();

    // 1. The only slot is busy for ~1 s; the abandoned job waits behind it, and its cancel is
    //    announced while it does.
    let long_request = chat_request("echo", &words("busy", 50));
    let busy = stack.post_json(CHAT, &long_request);
    let (_, ()) = tokio::join!(busy, async {
        tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the long job started");
        abandon("heard about while queued").await;
    });
    eventually(Duration::from_secs(10), "the worker skips the abandoned job", || async { (skipped(&worker) == 1).then_some(()) }).await;

    // 2. No worker at all while the next job is abandoned; the worker that starts afterwards
    //    never heard the announcement and must read the flag.
    worker.sigterm();
    worker.wait_exit(Duration::from_secs(10)).await.expect("the worker exits on SIGTERM");
    abandon("cancelled before any worker listened").await;
    let (late, _) = stack.ready_worker(&["echo", "--slots", "1"], "echo").await;
    eventually(Duration::from_secs(10), "the late worker skips the abandoned job", || async { (skipped(&late) == 1).then_some(()) }).await;

    tap.drain(Duration::from_millis(200)).await;
    let started = tap.started_by();
    assert_eq!(started.len(), 1, "only the long job may start: {:?}", tap.seen());
}

/// A job that fails every delivery (here: its only one, `--max-deliver 1`, whose worker is
/// SIGKILLed) ends as an error for the waiting client — never silently — and is kept in the
/// dead letters.
#[tokio::test]
async fn a_job_that_fails_every_delivery_ends_as_an_error_and_a_dead_letter() {
    let stack = Stack::start().await;
    let (worker, _) = stack.ready_worker(&["echo", "--delay", "100ms", "--ack-wait", "1s", "--max-deliver", "1"], "echo").await;
    let mut tap = stack.tap_replies().await;

    let doomed = chat_request("echo", &words("doomed", 60));
    let ((status, body), ()) = tokio::join!(stack.post_json(CHAT, &doomed), async {
        tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the job started");
        worker.sigkill();
    });
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "max_deliveries_exceeded", "{body}");

    let js = async_nats::jetstream::new(stack.nats_client().await);
    let mut dead = js.get_stream(switchyard_schemas::subject::DEAD_LETTER_STREAM).await.expect("the dead-letter stream");
    assert_eq!(dead.info().await.expect("its state").state.messages, 1, "the job is kept in the dead letters");

    // Counted where each part saw it: the scheduler's dead letter, the api's error.
    use switchyard_telemetry::names;
    use switchyard_tests::prometheus::Metrics;
    // The scheduler counts a dead letter once it is stored, which may be just after the client
    // got its error: poll for it.
    let dead_letters = eventually(Duration::from_secs(10), "the scheduler to count the dead letter", || async {
        let scheduler = Metrics::scrape(stack.http(), &stack.scheduler_url("/metrics")).await;
        scheduler.value(names::DEAD_LETTERS, &[("model", "echo"), ("kind", "chat")])
    })
    .await;
    assert_eq!(dead_letters, 1.0);
    let api = Metrics::scrape(stack.http(), &stack.api_url("/metrics")).await;
    assert_eq!(api.value(names::REQUEST_ERRORS, &[("model", "echo"), ("code", "max_deliveries_exceeded")]), Some(1.0), "{}", api.text());
}

/// Events lost between worker and api (a sequence number skipped) end the stream with a
/// `stream_gap` error event, never with silently incomplete text.
#[tokio::test]
async fn a_sequence_gap_ends_the_stream_with_an_error() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;
    let mut tap = stack.tap_replies().await;

    let mut reader = stack
        .post_stream(CHAT, &json!({ "model": "echo", "messages": [{ "role": "user", "content": words("gap", 60) }], "stream": true }))
        .await;
    let started = tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the job started");
    let reply_subject = tap.seen().iter().find(|(_, e)| e.job_id == started.job_id).expect("the job's reply subject").0.clone();
    // A message far ahead of the next one expected: the ones in between were "lost".
    let skipped = StreamEvent::single(
        started.job_id.clone(),
        1000,
        EventBody::Delta { text: "out of order".into(), tokens: 1, logprobs: Vec::new() },
    );
    let nats = stack.nats_client().await;
    nats.publish(reply_subject, encode(&skipped).unwrap().into()).await.unwrap();
    nats.flush().await.unwrap();

    let events = tokio::time::timeout(Duration::from_secs(10), reader.rest()).await.expect("the stream ends");
    let error = events.last().and_then(|e| e.get("error")).unwrap_or_else(|| panic!("the stream ends with an error event: {events:?}"));
    assert_eq!(error["code"], "stream_gap", "{events:?}");
    assert!(!reader.raw.contains("out of order"), "text after the gap must not reach the client: {}", reader.raw);
}
