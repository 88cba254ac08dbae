//! The gateway policy end to end (issue "Gateway policy"): who may see and use which model,
//! rate limits shared by api replicas through Redis (requests, tokens, concurrency, per-model
//! limits) with OpenAI's 429 body and headers, what happens when Redis stops answering, key
//! revocation and expiry, and every request-validation rule with the `param` it names.
//!
//! Keys are created the way operators create them: `switchyard keys create` (the CLI) or
//! `switchyard_broker::apikeys::ApiKeys::create` (what the CLI calls).

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::{ApiKeyRecord, RateLimits, keys, now_ms};
use switchyard_tests::openai::{Endpoint, chat_request, check_completion, check_stream, completion_request, words};
use switchyard_tests::{ApiReplica, Proc, Stack, assert_openai_error, eventually};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";

/// One answer of the api: status, headers, JSON body, and how long it took.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
    elapsed: Duration,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or_else(|_| panic!("header {name} is not ASCII")))
    }

    fn header_u64(&self, name: &str) -> u64 {
        let value = self.header(name).unwrap_or_else(|| panic!("header {name} missing; headers {:?}, body {}", self.headers, self.body));
        value.parse().unwrap_or_else(|_| panic!("header {name}: {value:?} is not an integer"))
    }

    /// The `error` object, after checking OpenAI's error shape.
    fn error(&self) -> &serde_json::Map<String, Value> {
        assert_openai_error(&self.body)
    }

    fn message(&self) -> String {
        self.error()["message"].as_str().unwrap().to_string()
    }
}

/// `method url` with an optional bearer key and JSON body; never panics on a non-JSON body
/// (it becomes `Value::String`), so callers can assert on the status first.
async fn call(http: &reqwest::Client, url: &str, key: Option<&str>, body: Option<&Value>, timeout: Duration) -> Reply {
    let mut request = match body {
        Some(body) => http.post(url).json(body),
        None => http.get(url),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let response = request.timeout(timeout).send().await.unwrap_or_else(|e| panic!("{url}: {e} after {:?}", started.elapsed()));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_else(|e| panic!("{url}: reading the body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, headers, body, elapsed: started.elapsed() }
}

async fn post(stack: &Stack, key: Option<&str>, path: &str, body: &Value) -> Reply {
    call(stack.http(), &stack.api_url(path), key, Some(body), Duration::from_secs(60)).await
}

/// Posts `body` until it is admitted, for up to `within`: a job's charge is corrected just
/// after its answer is sent, so a request right behind it may still meet the estimate. A
/// refusal charges nothing.
async fn post_admitted(stack: &Stack, key: Option<&str>, path: &str, body: &Value, within: Duration) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let reply = post(stack, key, path, body).await;
        if reply.status != 429 || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(stack: &Stack, key: Option<&str>, path: &str) -> Reply {
    call(stack.http(), &stack.api_url(path), key, None, Duration::from_secs(60)).await
}

async fn key_store(stack: &Stack) -> ApiKeys {
    ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("connecting to redis"))
}

async fn create_key(stack: &Stack, spec: KeySpec) -> (String, ApiKeyRecord) {
    key_store(stack).await.create(spec).await.expect("creating a key")
}

fn user(name: &str) -> KeySpec {
    KeySpec { user: name.into(), ..Default::default() }
}

/// `switchyard keys create <args…>`: the secret (stdout) and the key id (from stderr's
/// `created key_… for user …`).
fn cli_key(stack: &Stack, args: &[&str]) -> (String, String) {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let output = stack.run_cli(&all);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "switchyard {all:?} failed:\n{stdout}\n{stderr}");
    let secret = stdout.trim().to_string();
    assert!(secret.starts_with("sy-"), "switchyard {all:?} printed no secret: {stdout:?}");
    let id = stderr
        .split_whitespace()
        .find(|word| word.starts_with("key_"))
        .unwrap_or_else(|| panic!("switchyard {all:?} named no key id: {stderr:?}"))
        .to_string();
    (secret, id)
}

/// Model ids in `GET /v1/models` as `key` sees them.
async fn models_for(stack: &Stack, key: &str) -> Vec<String> {
    let reply = get(stack, Some(key), "/v1/models").await;
    assert_eq!(reply.status, 200, "GET /v1/models: {}", reply.body);
    reply.body["data"].as_array().expect("data array").iter().map(|m| m["id"].as_str().expect("id").to_string()).collect()
}

/// Waits until `key` sees every one of `models` in `/v1/models` (does not touch rate limits).
async fn wait_listed(stack: &Stack, key: &str, models: &[&str]) {
    eventually(Duration::from_secs(60), &format!("{models:?} to be listed"), || async {
        let listed = models_for(stack, key).await;
        models.iter().all(|m| listed.iter().any(|l| l == m)).then_some(())
    })
    .await;
}

/// A stack with a second api replica, an echo worker, and a key both replicas list `echo` for.
struct TwoReplicas {
    _worker: Proc,
    _replica: ApiReplica,
    stack: Stack,
    key: String,
    /// The chat URL of each replica.
    chat: [String; 2],
}

async fn two_replicas(worker_args: &[&str], key_args: &[&str]) -> TwoReplicas {
    let stack = Stack::builder().with_auth().start().await;
    let replica = stack.api_replica().await;
    let worker = stack.worker(worker_args);
    stack.worker_id(&worker).await;
    let (key, _) = cli_key(&stack, key_args);
    // Both replicas know the model before the test starts (listing costs no rate limit).
    for models_url in [stack.api_url("/v1/models"), replica.url("/v1/models")] {
        eventually(Duration::from_secs(60), &format!("echo listed at {models_url}"), || async {
            let reply = call(stack.http(), &models_url, Some(&key), None, Duration::from_secs(10)).await;
            reply.body["data"].as_array().is_some_and(|data| data.iter().any(|m| m["id"] == "echo")).then_some(())
        })
        .await;
    }
    let chat = [stack.api_url(CHAT), replica.url(CHAT)];
    TwoReplicas { _worker: worker, _replica: replica, stack, key, chat }
}

/// How many times Redis has run the rate-limit script (`EVALSHA`) so far (on every server of a
/// Redis Cluster together).
async fn admissions_in_redis(stack: &Stack) -> u64 {
    let mut calls = 0;
    for url in stack.servers().redis_servers().node_urls() {
        let mut server = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.expect("connecting to a Redis server");
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut server).await.expect("INFO commandstats");
        calls += info
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse::<u64>().expect("a call count"));
    }
    calls
}

/// `XXms`, `X.Ys`, `XmYs`: OpenAI's `x-ratelimit-reset-*` durations.
fn assert_go_duration(value: &str, what: &str) {
    let ok = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<u64>().is_ok()
    } else if let Some((m, s)) = value.split_once('m') {
        m.parse::<u64>().is_ok() && s.strip_suffix('s').is_some_and(|s| s.parse::<u64>().is_ok())
    } else {
        value.strip_suffix('s').is_some_and(|s| s.parse::<f64>().is_ok())
    };
    assert!(ok, "{what}: {value:?} is not a duration like 20ms, 1.5s or 6m0s");
}

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

/// The body of a 404 with the model's name replaced, to compare two 404s.
fn without_model_name(body: &Value, model: &str) -> Value {
    let mut body = body.clone();
    let message = body["error"]["message"].as_str().unwrap_or_default().replace(model, "<model>");
    body["error"]["message"] = message.into();
    body
}

#[tokio::test]
async fn permission_matrix_owner_users_groups_and_strangers() {
    let stack = Stack::builder().with_auth().start().await;
    let restricted = stack.worker(&["echo", "--permissions", "groups: research; users: bob; owner: carol"]);
    let open = stack.worker(&["echo", "--name", "open-echo", "--embedding-name", "open-echo-embedding"]);
    stack.worker_id(&restricted).await;
    stack.worker_id(&open).await;

    let (carol, _) = create_key(&stack, user("carol")).await;
    let (bob, _) = create_key(&stack, user("bob")).await;
    let (dave, _) = create_key(&stack, KeySpec { groups: vec!["research".into()], ..user("dave") }).await;
    let (eve, _) = create_key(&stack, user("eve")).await;
    let (both, _) = create_key(&stack, KeySpec { groups: vec!["default".into(), "research".into()], ..user("frank") }).await;

    // Owner, listed user and group member see and use the restricted models.
    for (who, key) in
        [("carol (owner)", &carol), ("bob (listed user)", &bob), ("dave (group research)", &dave), ("frank (default+research)", &both)]
    {
        wait_listed(&stack, key, &["echo", "echo-embedding"]).await;
        let reply = post(&stack, Some(key), CHAT, &chat_request("echo", "allowed here")).await;
        assert_eq!(reply.status, 200, "{who}: {}", reply.body);
        assert_eq!(check_completion(Endpoint::Chat, &reply.body, "echo").0, ["allowed here"], "{who}");
        let reply = post(&stack, Some(key), EMBEDDINGS, &json!({ "model": "echo-embedding", "input": "x" })).await;
        assert_eq!(reply.status, 200, "{who} embeddings: {}", reply.body);
        let reply = get(&stack, Some(key), "/v1/models/echo").await;
        assert_eq!(reply.status, 200, "{who} GET /v1/models/echo: {}", reply.body);
        assert_eq!(reply.body["id"], "echo");
    }

    // The stranger: the restricted models do not exist for eve, exactly like unknown ones.
    wait_listed(&stack, &eve, &["open-echo"]).await;
    let listed = models_for(&stack, &eve).await;
    assert!(!listed.iter().any(|m| m == "echo" || m == "echo-embedding"), "eve must not see the restricted models: {listed:?}");
    for (path, body_for) in [
        (CHAT, (|model: &str| chat_request(model, "let me in")) as fn(&str) -> Value),
        (COMPLETIONS, |model: &str| completion_request(model, "let me in")),
        (EMBEDDINGS, |model: &str| json!({ "model": model, "input": "let me in" })),
    ] {
        let model = if path == EMBEDDINGS { "echo-embedding" } else { "echo" };
        let forbidden = post(&stack, Some(&eve), path, &body_for(model)).await;
        let unknown = post(&stack, Some(&eve), path, &body_for("no-such-model")).await;
        assert_eq!(forbidden.status, 404, "eve on {path} {model}: {}", forbidden.body);
        assert_eq!(unknown.status, 404, "eve on {path} no-such-model: {}", unknown.body);
        assert_eq!(forbidden.error()["code"], "model_not_found", "{}", forbidden.body);
        assert_eq!(forbidden.error()["param"], "model", "{}", forbidden.body);
        assert_eq!(
            without_model_name(&forbidden.body, model),
            without_model_name(&unknown.body, "no-such-model"),
            "a forbidden model must look exactly like an unknown one on {path}"
        );
    }
    let forbidden = get(&stack, Some(&eve), "/v1/models/echo").await;
    let unknown = get(&stack, Some(&eve), "/v1/models/no-such-model").await;
    assert_eq!((forbidden.status, unknown.status), (404, 404), "{} / {}", forbidden.body, unknown.body);
    assert_eq!(without_model_name(&forbidden.body, "echo"), without_model_name(&unknown.body, "no-such-model"));

    // Default permissions (`groups: default`): any key without --group may use the model, a
    // key with only --group research may not.
    for (who, key) in [("eve", &eve), ("carol", &carol), ("frank", &both)] {
        wait_listed(&stack, key, &["open-echo", "open-echo-embedding"]).await;
        let reply = post(&stack, Some(key), CHAT, &chat_request("open-echo", "open to all")).await;
        assert_eq!(reply.status, 200, "{who} on open-echo: {}", reply.body);
    }
    let listed = models_for(&stack, &dave).await;
    assert!(!listed.iter().any(|m| m.starts_with("open-echo")), "dave (research only) must not see open-echo: {listed:?}");
    let reply = post(&stack, Some(&dave), CHAT, &chat_request("open-echo", "not for research")).await;
    assert_eq!(reply.status, 404, "dave (research only) on open-echo: {}", reply.body);
    assert_eq!(reply.error()["code"], "model_not_found");
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_replicas_share_one_requests_per_minute_limit() {
    let TwoReplicas { stack, key, chat: urls, .. } = &two_replicas(&["echo"], &["--user", "u", "--rpm", "10"]).await;

    // 30 requests alternating between the replicas, in three concurrent waves of ten.
    let mut statuses = Vec::new();
    for wave in 0..3 {
        let requests = (0..10).map(|i| {
            let url = urls[i % 2].clone();
            let (http, key) = (stack.http().clone(), key.clone());
            async move {
                let body = chat_request("echo", &format!("wave {wave} request {i}"));
                let reply = call(&http, &url, Some(&key), Some(&body), Duration::from_secs(60)).await;
                (i % 2, reply)
            }
        });
        for (replica, reply) in futures::future::join_all(requests).await {
            assert!(
                reply.status == 200 || reply.status == 429,
                "replica {replica}: only 200 or 429 expected, got {}: {}",
                reply.status,
                reply.body
            );
            if reply.status == 429 {
                assert_eq!(reply.error()["code"], "rate_limit_exceeded", "{}", reply.body);
            }
            statuses.push((replica, reply.status));
        }
    }
    let ok = statuses.iter().filter(|(_, s)| *s == 200).count();
    let limited = statuses.iter().filter(|(_, s)| *s == 429).count();
    assert_eq!((ok, limited), (10, 20), "exactly the 10 requests of the RPM limit pass across both replicas: {statuses:?}");
}

/// A key sending requests back to back, far from its limits, is served from leases: a Redis
/// admission reserves the next requests too, and what a lease leaves is given back.
#[tokio::test]
async fn a_busy_key_is_served_from_leases_and_every_request_is_counted() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, id) = cli_key(&stack, &["--user", "busy", "--rpm", "6400", "--tpm", "100000000"]);
    wait_listed(&stack, &key, &["echo"]).await;

    let before = admissions_in_redis(&stack).await;
    for i in 1..=100 {
        let reply = post(&stack, Some(&key), CHAT, &chat_request("echo", "back to back")).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        assert_eq!(reply.header_u64("x-ratelimit-remaining-requests"), 6400 - i, "request {i} counts down like any other");
    }
    let admissions = admissions_in_redis(&stack).await - before;
    assert!(admissions <= 20, "100 requests took {admissions} admissions in Redis; leases should have served most of them");

    // Once the last lease has expired, the window holds exactly the 100 requests served.
    let window = keys::rate_limit("req", &id, None);
    eventually(Duration::from_secs(5), "the unused part of the last lease to be given back", || async {
        let entries: u64 = redis::cmd("ZCARD").arg(&window).query_async(&mut stack.redis_conn().await).await.expect("ZCARD");
        (entries == 100).then_some(())
    })
    .await;
}

/// Leases never let two replicas exceed a limit together, and what they hold back near the
/// limit is given back: the limit is reached exactly.
#[tokio::test]
async fn leases_on_two_replicas_reach_a_limit_exactly() {
    let TwoReplicas { stack, key, chat: urls, .. } = &two_replicas(&["echo"], &["--user", "burst", "--rpm", "640"]).await;
    let send = |i: usize| {
        let (http, key, url) = (stack.http().clone(), key.clone(), urls[i % 2].clone());
        async move { call(&http, &url, Some(&key), Some(&chat_request("echo", "burst")), Duration::from_secs(60)).await }
    };

    // 900 requests, 16 at a time, alternating between the replicas.
    let replies: Vec<Reply> = futures::stream::iter((0..900).map(send)).buffer_unordered(16).collect().await;
    for reply in &replies {
        assert!(reply.status == 200 || reply.status == 429, "only 200 or 429 expected, got {}: {}", reply.status, reply.body);
    }
    let mut ok = replies.iter().filter(|reply| reply.status == 200).count();
    assert!(ok <= 640, "{ok} requests passed a limit of 640 requests per minute");

    // What leases held back is free again once they have expired.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0.. {
        let reply = send(i).await;
        if reply.status == 429 {
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        ok += 1;
    }
    assert_eq!(ok, 640, "exactly the limit passes in the minute");
}

/// A replica that last saw the key far from its limit publishes the job while Redis decides;
/// when Redis refuses (another replica used the rest meanwhile) the client gets the 429 and
/// the job is cancelled.
#[tokio::test]
async fn a_job_dispatched_while_redis_decides_is_cancelled_when_refused() {
    let TwoReplicas { stack, key, chat: [here, there], .. } =
        &two_replicas(&["echo", "--delay", "50ms"], &["--user", "u", "--rpm", "16"]).await;
    let send = |url: String, text: &'static str| {
        let (http, key) = (stack.http().clone(), key.clone());
        async move { call(&http, &url, Some(&key), Some(&chat_request("echo", text)), Duration::from_secs(60)).await }
    };

    // This replica sees 15 of 16 left; the other then takes 15 of them.
    let first = send(here.clone(), "one").await;
    assert_eq!((first.status, first.header_u64("x-ratelimit-remaining-requests")), (200, 15), "{}", first.body);
    for i in 0..15 {
        let reply = send(there.clone(), "elsewhere").await;
        assert_eq!(reply.status, 200, "request {i} on the other replica: {}", reply.body);
    }
    let redis = stack.redis_conn().await;
    let flags = || {
        let mut redis = redis.clone();
        async move { redis::cmd("KEYS").arg(keys::CANCEL_FLAGS).query_async::<Vec<String>>(&mut redis).await.expect("KEYS") }
    };
    assert!(flags().await.is_empty(), "no job was cancelled yet");

    // This replica still believes the key far from its limit: the job goes out with the
    // admission, Redis refuses it, and the job is cancelled rather than answered.
    let refused = send(here.clone(), "a long answer that will never be seen by anyone").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.error()["code"], "rate_limit_exceeded", "{}", refused.body);
    assert_eq!(refused.header_u64("x-ratelimit-remaining-requests"), 0);
    eventually(Duration::from_secs(5), "the job dispatched before the refusal to be cancelled", || async {
        (flags().await.len() == 1).then_some(())
    })
    .await;

    // Near its limit, this replica now asks Redis first: nothing more is dispatched.
    let refused = send(here.clone(), "again").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flags().await.len(), 1, "a request refused before dispatch leaves no job to cancel");
}

#[tokio::test]
async fn refusals_carry_retry_after_and_openai_ratelimit_headers() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, _) = create_key(&stack, KeySpec { limits: RateLimits { rpm: Some(3), tpm: Some(10_000) }, ..user("h") }).await;
    wait_listed(&stack, &key, &["echo"]).await;

    let mut remaining = Vec::new();
    for i in 0..3 {
        // The last one streamed: SSE responses carry the headers too.
        let stream = i == 2;
        let body = json!({ "model": "echo", "messages": [{ "role": "user", "content": "count me" }], "max_tokens": 50, "stream": stream });
        let reply = post(&stack, Some(&key), CHAT, &body).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        assert_eq!(reply.header_u64("x-ratelimit-limit-requests"), 3, "request {i}");
        remaining.push(reply.header_u64("x-ratelimit-remaining-requests"));
        assert_go_duration(reply.header("x-ratelimit-reset-requests").expect("x-ratelimit-reset-requests"), "x-ratelimit-reset-requests");
        // --tpm adds the -tokens headers: the charge (prompt/4 + max_tokens) came off the bucket.
        assert_eq!(reply.header_u64("x-ratelimit-limit-tokens"), 10_000, "request {i}");
        let tokens_left = reply.header_u64("x-ratelimit-remaining-tokens");
        assert!(tokens_left <= 10_000 - 50, "remaining tokens {tokens_left} must reflect the charge of max_tokens 50");
        assert!(tokens_left >= 10_000 - 3 * (50 + 10), "remaining tokens {tokens_left}: at most three charges are out");
        assert_go_duration(reply.header("x-ratelimit-reset-tokens").expect("x-ratelimit-reset-tokens"), "x-ratelimit-reset-tokens");
        assert!(reply.header("retry-after").is_none(), "a 200 has no Retry-After");
    }
    assert_eq!(remaining, [2, 1, 0], "x-ratelimit-remaining-requests counts down");

    let refused = post(&stack, Some(&key), CHAT, &chat_request("echo", "one too many")).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after = refused.header_u64("retry-after");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after} must be whole seconds in 1..=60");
    assert_eq!(refused.header_u64("x-ratelimit-limit-requests"), 3);
    assert_eq!(refused.header_u64("x-ratelimit-remaining-requests"), 0);
    assert_go_duration(refused.header("x-ratelimit-reset-requests").expect("x-ratelimit-reset-requests on a 429"), "reset-requests");
    assert!(refused.header("x-ratelimit-limit-tokens").is_some(), "the -tokens headers come with 429s too: {:?}", refused.headers);
    let error = refused.error();
    assert_eq!(error["type"], "requests", "{}", refused.body);
    assert_eq!(error["code"], "rate_limit_exceeded", "{}", refused.body);
    assert_eq!(error["param"], Value::Null, "{}", refused.body);
    assert!(refused.message().contains("requests per minute"), "the message says which limit: {}", refused.body);
    assert!(
        refused.body.get("error").is_some_and(|e| e.as_object().unwrap().len() == 4),
        "exactly message/type/param/code: {}",
        refused.body
    );

    // A refused streaming request is an ordinary JSON 429, not an event stream.
    let mut body = chat_request("echo", "stream refused");
    body["stream"] = true.into();
    let refused = post(&stack, Some(&key), CHAT, &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", refused.headers);
    assert_eq!(refused.error()["code"], "rate_limit_exceeded");
    assert!(refused.header_u64("retry-after") >= 1);
}

#[tokio::test]
async fn token_charges_are_corrected_to_real_usage_after_the_job() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, _) = create_key(&stack, KeySpec { limits: RateLimits { rpm: None, tpm: Some(1000) }, ..user("t") }).await;
    wait_listed(&stack, &key, &["echo"]).await;

    // "hi there" is 8 characters: estimated 2 tokens + max_tokens 600 = 602 charged up front.
    let request = json!({ "model": "echo", "prompt": "hi there", "max_tokens": 600 });
    let first = post(&stack, Some(&key), COMPLETIONS, &request).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header_u64("x-ratelimit-limit-tokens"), 1000);
    assert_eq!(first.header_u64("x-ratelimit-remaining-tokens"), 398, "a full bucket minus the 602-token estimate");
    let used = first.body["usage"]["total_tokens"].as_u64().expect("usage.total_tokens");
    assert!(used > 0 && used < 20, "the echo of 'hi there' uses a few tokens, not {used}");

    // Without the correction 398 (+ ~17 tokens/s of refill) could not pay 602 for ~12 s.
    let second = post_admitted(&stack, Some(&key), COMPLETIONS, &request, Duration::from_secs(3)).await;
    assert_eq!(second.status, 200, "the first charge was refunded down to its real usage ({used} tokens): {}", second.body);
    let left = second.header_u64("x-ratelimit-remaining-tokens");
    assert!(
        left + 1 + used >= 1000 - 602 && left <= 398,
        "after the refund the bucket held ~{} tokens before this 602-token charge; remaining {left}",
        1000 - used
    );

    // A streamed request is corrected when its stream ends, too.
    let mut streamed = request.clone();
    streamed["stream"] = true.into();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut stream = loop {
        let response =
            stack.http().post(stack.api_url(COMPLETIONS)).bearer_auth(&key).json(&streamed).send().await.expect("streamed request");
        if response.status() != 429 || Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stream.status(), 200, "{}", stream.text().await.unwrap_or_default());
    while stream.chunk().await.expect("reading the stream").is_some() {}
    let after_stream = post_admitted(&stack, Some(&key), COMPLETIONS, &request, Duration::from_secs(3)).await;
    assert_eq!(after_stream.status, 200, "the streamed request's charge must be refunded when it ends: {}", after_stream.body);

    // A request whose estimate exceeds the whole TPM can never pass: 429, "too large", and no
    // Retry-After (waiting would not help).
    let huge = post(&stack, Some(&key), COMPLETIONS, &json!({ "model": "echo", "prompt": "hi there", "max_tokens": 1500 })).await;
    assert_eq!(huge.status, 429, "{}", huge.body);
    assert_eq!(huge.error()["type"], "tokens", "{}", huge.body);
    assert_eq!(huge.error()["code"], "rate_limit_exceeded", "{}", huge.body);
    assert!(huge.message().to_lowercase().contains("too large"), "the message says the request is too large: {}", huge.body);
    assert!(huge.message().contains("1000") && huge.message().contains("1502"), "limit and request size in the message: {}", huge.body);
    assert!(huge.header("retry-after").is_none(), "no Retry-After for a request that can never pass: {:?}", huge.headers);
}

#[tokio::test]
async fn concurrency_cap_refuses_a_second_request_while_one_runs() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo", "--delay", "100ms"]);
    stack.worker_id(&worker).await;
    let (key, _) = create_key(&stack, KeySpec { max_concurrent: Some(1), ..user("c") }).await;
    wait_listed(&stack, &key, &["echo"]).await;

    let text = words("slow", 20);
    let mut body = chat_request("echo", &text);
    body["stream"] = true.into();
    let response = stack.http().post(stack.api_url(CHAT)).bearer_auth(&key).json(&body).send().await.expect("streamed request");
    assert_eq!(response.status(), 200);
    let mut stream = switchyard_tests::sse::SseReader::new(response);
    let first = stream.next_json().await.expect("a first chunk");

    // The stream holds the only slot (~2 s of 100 ms tokens left).
    let refused = post(&stack, Some(&key), CHAT, &chat_request("echo", "me too")).await;
    assert_eq!(refused.status, 429, "a second concurrent request: {}", refused.body);
    assert_eq!(refused.error()["code"], "rate_limit_exceeded", "{}", refused.body);
    assert_eq!(refused.error()["type"], "requests", "{}", refused.body);
    assert!(refused.message().contains("concurrent"), "the message names the concurrency limit: {}", refused.body);
    assert!(refused.header_u64("retry-after") >= 1, "Retry-After on a concurrency refusal");

    let mut chunks = vec![first];
    chunks.extend(stream.rest().await);
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", false);
    assert_eq!(summary.text(), text, "the running stream is not disturbed by the refusal");

    // The slot is free once the stream has ended.
    let reply = eventually(Duration::from_secs(5), "a request to pass after the stream ended", || async {
        let reply = post(&stack, Some(&key), CHAT, &chat_request("echo", "my turn")).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A client that walks away mid-stream frees its slot too.
    let response = stack.http().post(stack.api_url(CHAT)).bearer_auth(&key).json(&body).send().await.expect("streamed request");
    assert_eq!(response.status(), 200);
    let mut stream = switchyard_tests::sse::SseReader::new(response);
    stream.next_json().await.expect("a first chunk");
    let refused = post(&stack, Some(&key), CHAT, &chat_request("echo", "still busy")).await;
    assert_eq!(refused.status, 429, "the second stream holds the slot: {}", refused.body);
    drop(stream);
    let reply = eventually(Duration::from_secs(5), "the slot of a disconnected stream to be freed", || async {
        let reply = post(&stack, Some(&key), CHAT, &chat_request("echo", "after the disconnect")).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // So does a non-streamed request whose client gives up before the answer.
    let slow = chat_request("echo", &words("slower", 30));
    let gave_up = stack.http().post(stack.api_url(CHAT)).bearer_auth(&key).json(&slow).timeout(Duration::from_millis(500)).send().await;
    assert!(gave_up.is_err(), "the 3 s answer cannot arrive within 500 ms");
    let reply = eventually(Duration::from_secs(5), "the slot of an abandoned request to be freed", || async {
        let reply = post(&stack, Some(&key), CHAT, &chat_request("echo", "after giving up")).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn per_model_limits_apply_to_each_key_separately() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo", "--model-rpm", "2"]);
    stack.worker_id(&worker).await;
    let (alice, _) = create_key(&stack, user("alice")).await;
    let (bob, _) = create_key(&stack, user("bob")).await;
    wait_listed(&stack, &alice, &["echo", "echo-embedding"]).await;

    for i in 0..2 {
        let reply = post(&stack, Some(&alice), CHAT, &chat_request("echo", "within the model limit")).await;
        assert_eq!(reply.status, 200, "alice request {i}: {}", reply.body);
    }
    let refused = post(&stack, Some(&alice), CHAT, &chat_request("echo", "over the model limit")).await;
    assert_eq!(refused.status, 429, "alice's third request to echo: {}", refused.body);
    assert_eq!(refused.error()["code"], "rate_limit_exceeded", "{}", refused.body);
    assert!(refused.message().contains("echo"), "the message names the model: {}", refused.body);
    assert!(refused.header_u64("retry-after") >= 1);

    // Another key has its own allowance on the model; another model its own limit.
    let reply = post(&stack, Some(&bob), CHAT, &chat_request("echo", "my own allowance")).await;
    assert_eq!(reply.status, 200, "bob is not limited by alice's use: {}", reply.body);
    let reply = post(&stack, Some(&alice), EMBEDDINGS, &json!({ "model": "echo-embedding", "input": "other model" })).await;
    assert_eq!(reply.status, 200, "echo-embedding has its own per-key limit: {}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// Redis unreachable
// ---------------------------------------------------------------------------------------------

/// SIGSTOPs a process; SIGCONTs it when dropped, whatever happens in between.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on a process this test's stack started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGCONT);
        }
    }
}

#[tokio::test]
async fn redis_unreachable_is_503_and_service_recovers() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, _) = create_key(&stack, KeySpec { limits: RateLimits { rpm: Some(1000), tpm: None }, ..user("r") }).await;
    wait_listed(&stack, &key, &["echo"]).await;
    let reply = post(&stack, Some(&key), CHAT, &chat_request("echo", "before")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Every server, on a Redis Cluster.
    let stopped: Vec<Stopped> = stack.servers().redis_servers().nodes().map(|server| Stopped::new(server.pid())).collect();
    for attempt in 0..2 {
        let reply =
            call(stack.http(), &stack.api_url(CHAT), Some(&key), Some(&chat_request("echo", "during")), Duration::from_secs(30)).await;
        assert_eq!(reply.status, 503, "attempt {attempt} with Redis stopped (after {:?}): {}", reply.elapsed, reply.body);
        assert!(reply.elapsed < Duration::from_secs(10), "attempt {attempt}: the 503 took {:?}", reply.elapsed);
        eprintln!("attempt {attempt} with Redis stopped: {} after {:?}: {}", reply.status, reply.elapsed, reply.body);
        assert_eq!(reply.error()["code"], "service_unavailable", "{}", reply.body);
        let message = reply.message().to_lowercase();
        assert!(message.contains("redis") || message.contains("rate limit"), "the message says Redis / the rate limiter: {}", reply.body);
    }
    let ready = call(stack.http(), &stack.api_url("/ready"), None, None, Duration::from_secs(15)).await;
    assert_eq!(ready.status, 503, "/ready with Redis stopped: {}", ready.body);
    assert!(ready.elapsed < Duration::from_secs(10), "/ready took {:?}", ready.elapsed);
    assert_eq!(ready.body["redis"], "unreachable", "{}", ready.body);
    drop(stopped);

    let recovered = Instant::now();
    eventually(Duration::from_secs(30), "requests to succeed again after SIGCONT", || async {
        let reply =
            call(stack.http(), &stack.api_url(CHAT), Some(&key), Some(&chat_request("echo", "after")), Duration::from_secs(30)).await;
        (reply.status == 200).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "/ready to be 200 again", || async {
        (call(stack.http(), &stack.api_url("/ready"), None, None, Duration::from_secs(10)).await.status == 200).then_some(())
    })
    .await;
    eprintln!("recovered {:?} after SIGCONT", recovered.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Revocation and expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn revoked_keys_are_refused_within_a_second() {
    let stack = Stack::builder().with_auth().start().await;
    let replica = stack.api_replica().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, id) = cli_key(&stack, &["--user", "leaving"]);
    let (other, _) = cli_key(&stack, &["--user", "staying"]);
    wait_listed(&stack, &key, &["echo"]).await;
    let chats = [stack.api_url(CHAT), replica.url(CHAT)];
    // Both replicas now hold the key in their caches (trusted for a few seconds).
    for url in &chats {
        let reply = eventually(Duration::from_secs(30), "the replica to serve echo", || async {
            let reply = call(stack.http(), url, Some(&key), Some(&chat_request("echo", "still valid")), Duration::from_secs(60)).await;
            (reply.status != 404).then_some(reply)
        })
        .await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.body);
    }

    let output = stack.run_cli(&["keys", "revoke", &id]);
    assert!(output.status.success(), "keys revoke: {}", String::from_utf8_lossy(&output.stderr));
    let revoked_at = Instant::now();
    for url in &chats {
        let reply = eventually(Duration::from_secs(1), &format!("{url} to refuse the revoked key within 1 s"), || async {
            let reply = call(stack.http(), url, Some(&key), Some(&chat_request("echo", "revoked?")), Duration::from_secs(60)).await;
            (reply.status != 200).then_some(reply)
        })
        .await;
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "{url} refused only after {:?}", revoked_at.elapsed());
        assert_eq!(reply.status, 401, "{url}: {}", reply.body);
        assert_eq!(reply.error()["code"], "invalid_api_key", "{}", reply.body);
        assert!(reply.message().contains("revoked"), "the message says revoked: {}", reply.body);
    }
    let reply = get(&stack, Some(&key), "/v1/models").await;
    assert_eq!(reply.status, 401, "every /v1 route refuses the revoked key: {}", reply.body);

    let reply = post(&stack, Some(&other), CHAT, &chat_request("echo", "unaffected")).await;
    assert_eq!(reply.status, 200, "other keys keep working: {}", reply.body);
    let list = stack.run_cli(&["keys", "list"]);
    let listing = String::from_utf8_lossy(&list.stdout);
    let line = listing.lines().find(|line| line.contains(&id)).unwrap_or_else(|| panic!("{id} not in keys list:\n{listing}"));
    assert!(line.contains("revoked"), "keys list shows the key revoked: {line}");
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (valid, _) = create_key(&stack, user("v")).await;
    wait_listed(&stack, &valid, &["echo"]).await;

    let (expired, _) = create_key(&stack, KeySpec { expires_ms: Some(now_ms() - 1000), ..user("x") }).await;
    let reply = post(&stack, Some(&expired), CHAT, &chat_request("echo", "too late")).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.error()["code"], "invalid_api_key", "{}", reply.body);
    assert!(reply.message().contains("expired"), "the message says expired: {}", reply.body);

    // A key that expires while in use (and in the api's cache).
    let (short, _) = cli_key(&stack, &["--user", "s", "--expires", "3s"]);
    let reply = post(&stack, Some(&short), CHAT, &chat_request("echo", "still fresh")).await;
    assert_eq!(reply.status, 200, "a 3 s key used at once: {}", reply.body);
    let reply = eventually(Duration::from_secs(10), "the 3 s key to expire", || async {
        let reply = post(&stack, Some(&short), CHAT, &chat_request("echo", "expired yet?")).await;
        (reply.status != 200).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.message().contains("expired"), "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_validation_rule_names_its_param() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["echo"], "echo").await;
    stack.wait_for_model("echo-embedding").await;

    let msg = |extra: Value| {
        let mut body = json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }] });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let prompt = |extra: Value| {
        let mut body = json!({ "model": "echo", "prompt": "hi" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("max_tokens 0", CHAT, msg(json!({ "max_tokens": 0 })), "max_tokens"),
        ("max_tokens 0 (completions)", COMPLETIONS, prompt(json!({ "max_tokens": 0 })), "max_tokens"),
        ("max_completion_tokens 0", CHAT, msg(json!({ "max_completion_tokens": 0 })), "max_completion_tokens"),
        ("both max_tokens and max_completion_tokens", CHAT, msg(json!({ "max_tokens": 5, "max_completion_tokens": 5 })), "max_tokens"),
        ("temperature 2.5", CHAT, msg(json!({ "temperature": 2.5 })), "temperature"),
        ("temperature -1", CHAT, msg(json!({ "temperature": -1 })), "temperature"),
        ("temperature 2.5 (completions)", COMPLETIONS, prompt(json!({ "temperature": 2.5 })), "temperature"),
        ("top_p 0", CHAT, msg(json!({ "top_p": 0 })), "top_p"),
        ("top_p 1.5", CHAT, msg(json!({ "top_p": 1.5 })), "top_p"),
        ("top_k 0", CHAT, msg(json!({ "top_k": 0 })), "top_k"),
        ("n 0", CHAT, msg(json!({ "n": 0 })), "n"),
        ("n 17 (above the default max of 16)", CHAT, msg(json!({ "n": 17 })), "n"),
        ("n 17 (completions)", COMPLETIONS, prompt(json!({ "n": 17 })), "n"),
        ("stop with 5 strings", CHAT, msg(json!({ "stop": ["a", "b", "c", "d", "e"] })), "stop"),
        ("empty stop string", CHAT, msg(json!({ "stop": "" })), "stop"),
        ("empty stop string in a list", COMPLETIONS, prompt(json!({ "stop": ["x", ""] })), "stop"),
        ("presence_penalty 3", CHAT, msg(json!({ "presence_penalty": 3 })), "presence_penalty"),
        ("frequency_penalty -3", CHAT, msg(json!({ "frequency_penalty": -3 })), "frequency_penalty"),
        ("top_logprobs 21", CHAT, msg(json!({ "logprobs": true, "top_logprobs": 21 })), "top_logprobs"),
        ("top_logprobs without logprobs", CHAT, msg(json!({ "top_logprobs": 2 })), "top_logprobs"),
        ("completions logprobs 6", COMPLETIONS, prompt(json!({ "logprobs": 6 })), "logprobs"),
        ("empty prompt list", COMPLETIONS, prompt(json!({ "prompt": [] })), "prompt"),
        ("messages empty", CHAT, msg(json!({ "messages": [] })), "messages"),
        ("role wizard", CHAT, msg(json!({ "messages": [{ "role": "wizard", "content": "abracadabra" }] })), "messages[0].role"),
        ("user message without content", CHAT, msg(json!({ "messages": [{ "role": "user" }] })), "messages[0].content"),
        (
            "second message without content",
            CHAT,
            msg(json!({ "messages": [{ "role": "system", "content": "s" }, { "role": "user", "content": null }] })),
            "messages[1].content",
        ),
        (
            "image_url content part",
            CHAT,
            msg(
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } }] }] }),
            ),
            "messages[0].content[0]",
        ),
        (
            "image_url as second content part",
            CHAT,
            msg(
                json!({ "messages": [{ "role": "user", "content": [{ "type": "text", "text": "look" }, { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } }] }] }),
            ),
            "messages[0].content[1]",
        ),
        ("embeddings input \"\"", EMBEDDINGS, json!({ "model": "echo-embedding", "input": "" }), "input"),
        ("embeddings input []", EMBEDDINGS, json!({ "model": "echo-embedding", "input": [] }), "input"),
        ("embeddings input with an empty string", EMBEDDINGS, json!({ "model": "echo-embedding", "input": ["a", ""] }), "input"),
        ("embeddings token array", EMBEDDINGS, json!({ "model": "echo-embedding", "input": [1, 2, 3] }), "input"),
        ("embeddings token arrays", EMBEDDINGS, json!({ "model": "echo-embedding", "input": [[1, 2], [3]] }), "input"),
        ("embeddings dimensions", EMBEDDINGS, json!({ "model": "echo-embedding", "input": "x", "dimensions": 8 }), "dimensions"),
        ("embedding model on chat", CHAT, json!({ "model": "echo-embedding", "messages": [{ "role": "user", "content": "hi" }] }), "model"),
        ("embedding model on completions", COMPLETIONS, json!({ "model": "echo-embedding", "prompt": "hi" }), "model"),
        ("chat model on embeddings", EMBEDDINGS, json!({ "model": "echo", "input": "hi" }), "model"),
    ];
    let mut failures = Vec::new();
    for (what, path, body, param) in &cases {
        let reply = post(&stack, None, path, body).await;
        let error = reply.body.get("error").and_then(Value::as_object);
        let ok = reply.status == 400
            && error.is_some_and(|e| {
                e.get("param").and_then(Value::as_str) == Some(param)
                    && e.get("type").and_then(Value::as_str) == Some("invalid_request_error")
            });
        if ok {
            assert_openai_error(&reply.body);
        } else {
            failures.push(format!(
                "{what}: {path} {body}\n    expected 400 invalid_request_error param {param:?}, got {} {}",
                reply.status, reply.body
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} validation cases failed:\n  {}", failures.len(), cases.len(), failures.join("\n  "));

    // The boundaries themselves are accepted.
    for (what, path, body) in [
        ("temperature 2", CHAT, msg(json!({ "temperature": 2, "max_tokens": 1 }))),
        ("top_p 1", CHAT, msg(json!({ "top_p": 1 }))),
        ("n 16", COMPLETIONS, prompt(json!({ "n": 16, "max_tokens": 1 }))),
        ("4 stop strings", CHAT, msg(json!({ "stop": ["a", "b", "c", "d"] }))),
        ("penalties ±2", CHAT, msg(json!({ "presence_penalty": 2, "frequency_penalty": -2 }))),
        ("top_logprobs 20 with logprobs", CHAT, msg(json!({ "logprobs": true, "top_logprobs": 20 }))),
        ("completions logprobs 5", COMPLETIONS, prompt(json!({ "logprobs": 5 }))),
        ("text content parts", CHAT, msg(json!({ "messages": [{ "role": "user", "content": [{ "type": "text", "text": "hi" }] }] }))),
        (
            "assistant message without content",
            CHAT,
            msg(json!({ "messages": [{ "role": "assistant" }, { "role": "user", "content": "hi" }] })),
        ),
    ] {
        let reply = post(&stack, None, path, &body).await;
        assert_eq!(reply.status, 200, "{what} must be accepted: {}", reply.body);
    }
}
