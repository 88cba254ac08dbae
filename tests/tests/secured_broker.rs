//! The secured broker (`broker-config/secure/`): nats-server and redis-server run with those
//! files (only addresses, ports and data directories on the command line, fresh passwords per
//! role), the api, scheduler and workers each log in as their role and serve as usual, and a
//! direct publisher runs its own jobs through `switchyard-client` and is refused everything else.
//!
//! NATS answers a refused operation with no reply: it drops the message (or the subscription)
//! and sends `-ERR 'Permissions Violation for …'` on the connection. The tests watch for that
//! error on the connection's event callback, naming the subject, and also show that what was
//! refused has no effect (a refused subscription receives nothing while an allowed one does).

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use redis::AsyncCommands;
use serde_json::{Value, json};
use switchyard_broker::BrokerAuth;
use switchyard_client::{JobError, JobTimeouts, Jobs};
use switchyard_schemas::{EventBody, JobKind, JobRequest, Lane, SamplingParams, keys, subject};
use switchyard_tests::batch::{BatchClient, chat_input};
use switchyard_tests::openai::{Endpoint, chat_request, check_completion};
use switchyard_tests::{Proc, Role, Servers, Stack, eventually, secure_config, sse, tail};
use tokio::sync::mpsc;

/// The example publisher of `nats-server.conf`: its instance, and the one model it is granted.
const PUBLISHER: &str = "example-publisher";
const GRANTED: &str = "echo";
/// Served by the same echo worker, not granted to the publisher.
const NOT_GRANTED: &str = "echo-embedding";

/// A NATS connection of `role` on secured `servers`, through `switchyard_broker`'s own options,
/// whose server errors (permission violations) arrive on the returned channel.
async fn watched_connection(servers: &Servers, role: Role, auth: BrokerAuth) -> (async_nats::Client, Violations) {
    let url = servers.connection(role).nats_url;
    let (options, addresses) = switchyard_broker::auth::nats_connect_options(&url, role.nats_user(), &auth).expect("connect options");
    let (tx, rx) = mpsc::unbounded_channel();
    let options = options.event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(error) = event {
                let _ = tx.send(error.to_string());
            }
        }
    });
    let client = switchyard_broker::connect_nats_with(options, &addresses, &url).await.expect("connecting with the role's credentials");
    (client, Violations { rx, seen: Vec::new() })
}

fn auth_for(role: Role) -> BrokerAuth {
    BrokerAuth { nats_creds: None, nats_inbox_prefix: role.inbox_prefix().map(str::to_string), ..Default::default() }
}

/// The server errors of one connection.
struct Violations {
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Violations {
    /// Waits (up to 5 s) for `Permissions Violation for <what> to "<subject>"`.
    async fn expect(&mut self, what: &str, subject: &str) {
        let wanted = format!("permissions violation for {what} to \"{subject}\"").to_ascii_lowercase();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.seen.iter().any(|error| error.to_ascii_lowercase().contains(&wanted)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(error)) => self.seen.push(error),
                _ => panic!("no permission violation for {what} to {subject:?}; the server reported: {:?}", self.seen),
            }
        }
    }

    /// Asserts that nothing was refused so far (after a moment for errors on their way).
    async fn expect_none(&mut self, after: &str) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(error) = self.rx.try_recv() {
            self.seen.push(error);
        }
        assert!(self.seen.is_empty(), "{after}: the server refused {:?}", self.seen);
    }
}

/// A JetStream context that gives up on unanswered requests after a second.
fn jetstream_quick(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_secs(1)).build(client.clone())
}

fn completion(prompt: &str) -> JobRequest {
    JobRequest::Completion { prompt: prompt.into(), params: SamplingParams::default() }
}

/// A job's text and whether it ended with `Done`.
async fn run_to_end(handle: &mut switchyard_client::JobHandle) -> (String, bool) {
    let mut text = String::new();
    loop {
        match handle.next_output().await.expect("the job's events") {
            EventBody::Delta { text: piece, .. } => text.push_str(&piece),
            EventBody::Done { .. } => return (text, true),
            EventBody::Error { message, .. } => panic!("the job failed: {message}"),
            _ => {}
        }
    }
}

/// Fails if any Switchyard process of the stack logged a refusal by NATS or Redis.
fn assert_nothing_refused(procs: &[&Proc]) {
    for proc in procs {
        let log = proc.log();
        for sign in ["Permissions Violation", "permissions violation", "NOPERM", "NoPerm", "refused this connection"] {
            assert!(!log.contains(sign), "{} was refused something under its role ({sign}):\n{}", proc.name(), tail(&log, 40));
        }
    }
}

async fn get_with_key(stack: &Stack, key: &str, path: &str) -> (u16, Value) {
    let response = stack.http().get(stack.api_url(path)).bearer_auth(key).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn post_with_key(stack: &Stack, key: &str, path: &str, body: &Value) -> (u16, String) {
    let response = stack.http().post(stack.api_url(path)).bearer_auth(key).json(body).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Creates an API key with `switchyard keys create` (as the admin role); returns (secret, id).
fn create_key(stack: &Stack, user: &str) -> (String, String) {
    let output = stack.run_cli(&["keys", "create", "--user", user, "--rpm", "10000", "--tpm", "10000000"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "switchyard keys create failed: {stderr}");
    let secret = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let id = stderr.split_whitespace().find(|word| word.starts_with("key_")).expect("the key id in the message").to_string();
    (secret, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_scheduler_and_workers_serve_under_their_roles() {
    let stack = Stack::builder().secured().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let (key, key_id) = create_key(&stack, "tester");
    eventually(Duration::from_secs(60), "echo in /v1/models", || async {
        let (status, body) = get_with_key(&stack, &key, "/v1/models").await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().unwrap().iter().any(|m| m["id"] == GRANTED).then_some(())
    })
    .await;

    // A chat request, answered and streamed, with an API key and its rate limits.
    let (status, body) = post_with_key(&stack, &key, "/v1/chat/completions", &chat_request(GRANTED, "over the secured broker")).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(check_completion(Endpoint::Chat, &body, GRANTED).0, ["over the secured broker"]);
    let mut streamed = chat_request(GRANTED, "one two three");
    streamed["stream"] = json!(true);
    let (status, text) = post_with_key(&stack, &key, "/v1/chat/completions", &streamed).await;
    assert_eq!(status, 200, "{text}");
    let chunks = sse::parse_body(&text);
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "one two three");
    let (status, body) = post_with_key(&stack, &key, "/v1/embeddings", &json!({ "model": NOT_GRANTED, "input": ["a", "b"] })).await;
    assert_eq!(status, 200, "{body}");

    // A batch: files in the object store, the batch record in its bucket, lines run by the
    // scheduler as batch-lane jobs, results recorded and written to an output file.
    let api = BatchClient::new(stack.http(), stack.api_url(""), Some(&key));
    let file = api.upload_input(chat_input(3, GRANTED, &json!({}))).await;
    let batch = api.create(&file, "/v1/chat/completions", "24h").await;
    let done = api.wait(batch["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (output, errors) = api.results(&done).await;
    assert_eq!((output.len(), errors.len()), (3, 0), "{output:?} {errors:?}");

    // A /v1/jobs job: its events go to the events stream, read back by the api.
    let (status, job) =
        api.post("/v1/jobs", &json!({ "endpoint": "/v1/chat/completions", "body": chat_request(GRANTED, "kept for later") })).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = eventually(Duration::from_secs(30), "the job to complete", || async {
        let (_, job) = api.get(&format!("/v1/jobs/{id}")).await;
        (job["status"] == "completed").then_some(job)
    })
    .await;
    assert_eq!(job["result"]["choices"][0]["message"]["content"], "kept for later", "{job}");
    let (status, events) = api.bytes(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&events).contains("data: [DONE]"), "{}", String::from_utf8_lossy(&events));

    // A worker killed without deregistering is reaped by the scheduler (its Redis role).
    let worker_id = stack.worker_id(&worker).await;
    worker.sigkill();
    eventually(Duration::from_secs(30), "the scheduler to reap the dead worker", || async {
        (!stack.registered_worker_ids().await.contains(&worker_id)).then_some(())
    })
    .await;

    // Revoking a key (the admin role) reaches the api over NATS at once.
    let output = stack.run_cli(&["keys", "revoke", &key_id]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !stderr.contains("warning"), "switchyard keys revoke: {stderr}");
    eventually(Duration::from_secs(4), "the revoked key to be refused (the cache alone keeps it 5 s)", || async {
        (get_with_key(&stack, &key, "/v1/models").await.0 == 401).then_some(())
    })
    .await;

    assert_nothing_refused(&[stack.api(), stack.scheduler().unwrap(), &worker]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_runs_its_own_jobs_and_is_refused_everything_else() {
    let stack = Stack::builder().secured().start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "20ms"], GRANTED).await;
    let servers = stack.servers();
    let (nats, mut violations) = watched_connection(servers, Role::Publisher, auth_for(Role::Publisher)).await;
    let redis = switchyard_broker::connect_redis(&servers.connection(Role::Publisher).redis_url).await.expect("the publisher's Redis user");
    let timeouts = JobTimeouts { queue: Duration::from_secs(20), idle: Duration::from_secs(20) };
    let jobs = Jobs::start_publisher(PUBLISHER.into(), nats.clone(), Some(redis.clone()), timeouts).await.unwrap();

    // Its own jobs, in both lanes, for its model: published, acknowledged, answered.
    for lane in Lane::ALL {
        let mut handle = jobs.submit(lane, GRANTED, completion("a direct publisher's job")).await.expect("publishing a granted job");
        assert_eq!(run_to_end(&mut handle).await, ("a direct publisher's job".to_string(), true), "lane {lane:?}");
    }
    violations.expect_none("running its own jobs").await;

    // Cancelling its job: the flag in Redis (its one permission there) and the announcement.
    let long = (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let mut handle = jobs.submit(Lane::Interactive, GRANTED, completion(&long)).await.unwrap();
    let job_id = handle.id().to_string();
    while !matches!(handle.next_output().await.unwrap(), EventBody::Delta { .. }) {}
    drop(handle);
    let mut admin = stack.redis_conn().await;
    eventually(Duration::from_secs(10), "the cancel flag", || {
        let (mut admin, flag) = (admin.clone(), keys::cancel(&job_id));
        async move { admin.exists::<_, bool>(flag).await.unwrap().then_some(()) }
    })
    .await;
    violations.expect_none("cancelling its job").await;

    // Another model's jobs: refused by the server, so JetStream never acknowledges them.
    let refused = jobs.submit(Lane::Interactive, NOT_GRANTED, JobRequest::Embedding { input: vec!["x".into()] }).await;
    match refused {
        Err(JobError::Unavailable(message)) => assert!(message.contains("not granted to this publisher"), "{message}"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a job for a model the publisher is not granted was accepted"),
    }
    violations.expect("publish", &subject::job(Lane::Interactive, JobKind::Embedding, NOT_GRANTED)).await;
    let other = subject::job(Lane::Batch, JobKind::Chat, "dummy");
    nats.publish(other.clone(), "x".into()).await.unwrap();
    violations.expect("publish", &other).await;

    // Other jobs, other replies, other inboxes, the registry's events: subscriptions refused.
    let api_instance = api_instance(stack.api());
    let mut other_replies = nats.subscribe(subject::replies_of(&api_instance)).await.unwrap();
    let mut all_jobs = nats.subscribe(subject::JOBS_SUBJECTS).await.unwrap();
    for refused in [
        subject::resumes_of(&api_instance),
        subject::CANCEL_ALL.to_string(),
        subject::EVENTS_SUBJECTS.to_string(),
        subject::DEAD_LETTER_SUBJECTS.to_string(),
        subject::API_KEY_REVOKED.to_string(),
        "_INBOX.>".to_string(),
        "_INBOX_api.>".to_string(),
        "_INBOX_worker.>".to_string(),
    ] {
        nats.subscribe(refused.clone()).await.unwrap();
        violations.expect("subscription", &refused).await;
    }
    violations.expect("subscription", &subject::replies_of(&api_instance)).await;
    violations.expect("subscription", subject::JOBS_SUBJECTS).await;
    // While they receive nothing, the api's request and the publisher's own job run.
    let (status, body) = stack.post_json("/v1/chat/completions", &chat_request(GRANTED, "the api's own job")).await;
    assert_eq!(status, 200, "{body}");
    let mut handle = jobs.submit(Lane::Interactive, GRANTED, completion("still served")).await.unwrap();
    assert_eq!(run_to_end(&mut handle).await.0, "still served");
    for (name, subscription) in [("another instance's replies", &mut other_replies), ("every job", &mut all_jobs)] {
        let got = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "a refused subscription to {name} received a message");
    }

    // Publishing anywhere but its jobs and cancellations: refused.
    for subject in
        [subject::reply(&api_instance, "01JFAKE"), subject::API_KEY_REVOKED.to_string(), subject::dead_letter(JobKind::Chat, GRANTED)]
    {
        nats.publish(subject.clone(), "x".into()).await.unwrap();
        violations.expect("publish", &subject).await;
    }

    // The JetStream API: not even the account's info, no stream, no consumer, no bucket.
    let js = jetstream_quick(&nats);
    assert!(js.query_account().await.is_err(), "the publisher read the JetStream account");
    violations.expect("publish", "$JS.API.INFO").await;
    assert!(js.get_stream(subject::JOBS_STREAM).await.is_err(), "the publisher opened the job stream");
    violations.expect("publish", &format!("$JS.API.STREAM.INFO.{}", subject::JOBS_STREAM)).await;
    assert!(js.get_key_value(subject::BATCHES_BUCKET).await.is_err(), "the publisher opened the batches bucket");
    violations.expect("publish", &format!("$JS.API.STREAM.INFO.KV_{}", subject::BATCHES_BUCKET)).await;
    let consumer = js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config { filter_subject: subject::JOBS_SUBJECTS.into(), ..Default::default() },
            subject::JOBS_STREAM,
        )
        .await;
    assert!(consumer.is_err(), "the publisher made a consumer of every job");

    // Redis: only SET of cancel flags. No reading them, the registry, API keys, rate limits,
    // no writing anything else, no listing keys.
    let mut redis = redis;
    let refusals: Vec<(&str, redis::RedisResult<redis::Value>)> = vec![
        ("GET a cancel flag", redis.get(keys::cancel(&job_id)).await),
        ("HGETALL the models", redis.hgetall(keys::MODELS).await),
        ("ZRANGE the workers", redis.zrange(keys::WORKERS, 0, -1).await),
        ("GET an API key", redis.get(keys::api_key("0")).await),
        ("SET a model card", redis.hset(keys::MODELS, "echo", "x").await),
        ("SET an API key", redis.set(keys::api_key("0"), "x").await),
        ("DEL a cancel flag", redis.del(keys::cancel(&job_id)).await),
        ("KEYS", redis::cmd("KEYS").arg("*").query_async(&mut redis).await),
        ("SCAN", redis::cmd("SCAN").arg(0).query_async(&mut redis).await),
    ];
    for (what, result) in refusals {
        match result {
            Err(e) => assert_eq!(e.code(), Some("NOPERM"), "{what}: {e}"),
            Ok(value) => panic!("{what} was allowed to the publisher: {value:?}"),
        }
    }
    assert!(admin.exists::<_, bool>(keys::cancel(&job_id)).await.unwrap(), "the flag is still there");
}

/// The api's instance name, from its log (`instance=api-…`).
fn api_instance(api: &Proc) -> String {
    let log = api.log();
    let start = log.find("instance=").expect("the api logs its instance") + "instance=".len();
    log[start..].split(|c: char| c.is_whitespace() || c == ',').next().unwrap().trim_matches('"').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_roles_are_scoped_and_wrong_credentials_are_named() {
    let servers = Servers::start_secured().await;

    // A worker may not delete or purge streams, nor read replies, nor read API keys.
    let (worker, mut violations) = watched_connection(&servers, Role::Worker, auth_for(Role::Worker)).await;
    let js = jetstream_quick(&worker);
    switchyard_broker::jobs::ensure_streams(&js).await.expect("the worker role creates the job streams");
    violations.expect_none("creating the streams").await;
    assert!(js.delete_stream(subject::JOBS_STREAM).await.is_err(), "a worker deleted the job stream");
    violations.expect("publish", &format!("$JS.API.STREAM.DELETE.{}", subject::JOBS_STREAM)).await;
    worker.subscribe(subject::replies_of("api-1")).await.unwrap();
    violations.expect("subscription", &subject::replies_of("api-1")).await;
    worker.subscribe("_INBOX_api.>").await.unwrap();
    violations.expect("subscription", "_INBOX_api.>").await;
    let mut worker_redis = switchyard_broker::connect_redis(&servers.connection(Role::Worker).redis_url).await.unwrap();
    let read: redis::RedisResult<Option<String>> = worker_redis.get(keys::api_key("0")).await;
    assert_eq!(read.unwrap_err().code(), Some("NOPERM"), "a worker read an API key");

    // The api may read API keys but not mint them; admin may only announce revocations.
    let mut api_redis = switchyard_broker::connect_redis(&servers.connection(Role::Api).redis_url).await.unwrap();
    let read: Option<String> = api_redis.get(keys::api_key("0")).await.expect("the api reads API keys");
    assert_eq!(read, None);
    let write: redis::RedisResult<()> = api_redis.set(keys::api_key("0"), "forged").await;
    assert_eq!(write.unwrap_err().code(), Some("NOPERM"), "the api minted an API key");
    let (admin, mut violations) = watched_connection(&servers, Role::Admin, auth_for(Role::Admin)).await;
    admin.publish(subject::API_KEY_REVOKED, "0".into()).await.unwrap();
    violations.expect_none("announcing a revocation").await;
    admin.subscribe(subject::CANCEL_ALL).await.unwrap();
    violations.expect("subscription", subject::CANCEL_ALL).await;
    admin.publish(subject::job(Lane::Interactive, JobKind::Chat, GRANTED), "x".into()).await.unwrap();
    violations.expect("publish", &subject::job(Lane::Interactive, JobKind::Chat, GRANTED)).await;

    // No credentials, a wrong password: refused at connect, with a message that says so and
    // shows no password.
    let plain = servers.nats_url();
    let error = switchyard_broker::connect_nats(&plain, "anonymous", &BrokerAuth::default()).await.unwrap_err().to_string();
    assert!(error.contains("refused these credentials"), "{error}");
    let wrong = plain.replace("nats://", "nats://api:not-the-password@");
    let error = switchyard_broker::connect_nats(&wrong, "wrong", &BrokerAuth::default()).await.unwrap_err().to_string();
    assert!(
        error.contains("refused these credentials") && error.contains("nats://api:***@") && !error.contains("not-the-password"),
        "{error}"
    );
    let wrong = servers.redis_url().replace("redis://", "redis://api:not-the-password@");
    let error = switchyard_broker::connect_redis(&wrong).await.expect_err("a wrong Redis password is refused").to_string();
    assert!(error.contains("Redis refused these credentials") && !error.contains("not-the-password"), "{error}");
    let error = switchyard_broker::connect_redis(&servers.redis_url()).await.expect_err("no Redis password is refused").to_string();
    assert!(error.contains("Redis refused these credentials"), "{error}");

    // A part started with a wrong password stops at once and names what failed.
    let output = Command::new(switchyard_tests::switchyard_bin())
        .args(["scheduler", "--nats-url", &plain.replace("nats://", "nats://scheduler:nope@"), "--listen", "127.0.0.1:0"])
        .args(["--redis-url", &servers.connection(Role::Scheduler).redis_url])
        .env_remove("SWITCHYARD_NATS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the scheduler started with a wrong password: {stderr}");
    assert!(stderr.contains("cannot connect to NATS at nats://scheduler:***@") && stderr.contains("refused these credentials"), "{stderr}");
}

/// An nkey user seed file (`--nats-creds`) against `nats-server-nkeys.conf`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_files_log_in_under_the_nkeys_configuration() {
    let servers = Servers::start().await; // for its directory, logs and process handling
    let dir = servers.dir().join("nkeys");
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(switchyard_tests::nats_server_bin());
    command.arg("-c").arg(secure_config("nats-server-nkeys.conf"));
    let mut seeds = Vec::new();
    for (role, var) in [
        ("api", "SY_NATS_API_NKEY"),
        ("scheduler", "SY_NATS_SCHEDULER_NKEY"),
        ("worker", "SY_NATS_WORKER_NKEY"),
        ("admin", "SY_NATS_ADMIN_NKEY"),
        ("publisher", "SY_NATS_EXAMPLE_PUBLISHER_NKEY"),
    ] {
        let pair = nkeys::KeyPair::new_user();
        command.env(var, pair.public_key());
        let file = dir.join(format!("{role}.nk"));
        std::fs::write(&file, format!("{}\n", pair.seed().unwrap())).unwrap();
        seeds.push((role, file));
    }
    let port = switchyard_tests::free_port();
    command.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(dir.join("store"));
    let nats = servers.spawn("nats-server-nkeys", command);
    let url = format!("nats://127.0.0.1:{port}");
    let seed = |role: &str| seeds.iter().find(|(r, _)| *r == role).unwrap().1.clone();
    let worker_auth =
        BrokerAuth { nats_creds: Some(seed("worker")), nats_inbox_prefix: Some("_INBOX_worker".into()), ..Default::default() };
    let worker = eventually(Duration::from_secs(20), "nats-server with nkeys to accept the worker", || async {
        assert!(nats.is_running(), "nats-server exited:\n{}", nats.log());
        switchyard_broker::connect_nats(&url, "worker", &worker_auth).await.ok()
    })
    .await;
    jetstream_quick(&worker).query_account().await.expect("the worker's nkey may use the JetStream API");

    let publisher_auth =
        BrokerAuth { nats_creds: Some(seed("publisher")), nats_inbox_prefix: Some(format!("_INBOX_{PUBLISHER}")), ..Default::default() };
    let publisher = switchyard_broker::connect_nats(&url, "publisher", &publisher_auth).await.expect("the publisher's nkey");
    assert!(jetstream_quick(&publisher).query_account().await.is_err(), "the publisher may not use the JetStream API");

    // A seed the server does not know is refused, and the message says what to check.
    let stranger = dir.join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let error = switchyard_broker::connect_nats(&url, "stranger", &BrokerAuth { nats_creds: Some(stranger), ..Default::default() })
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("refused these credentials") && error.contains("--nats-creds"), "{error}");
}

/// The Python SDK's worker logs in as the worker role too (URL credentials percent-decoded,
/// its own inbox prefix) and serves its functions through the secured broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_serves_under_the_worker_role() {
    let python = switchyard_tests::workspace_root().join(".switchyard/py-venv/bin/python");
    assert!(python.is_file(), "{} does not exist: run scripts/setup.sh --test-tools", python.display());
    let stack = Stack::builder().secured().start().await;
    let worker = stack.servers().connection(Role::Worker);
    let mut command = Command::new(python);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHYARD_") {
            command.env_remove(key);
        }
    }
    command.current_dir(switchyard_tests::workspace_root().join("sdk/python/tests")).env("PYTHONUNBUFFERED", "1");
    command.args(["-m", "switchyard.worker", "sample_tools:SampleTools", "--name", "py-tools"]);
    command.args(["--nats-url", &worker.nats_url, "--redis-url", &worker.redis_url]);
    command.args(["--nats-inbox-prefix", Role::Worker.inbox_prefix().unwrap()]);
    let python_worker = stack.servers().spawn("python-worker", command);
    stack.worker_id(&python_worker).await;
    stack.wait_for_model("py-tools").await;
    let (status, body) = stack.post_json("/v1/tools/py-tools/add", &json!({ "a": 5, "b": 7 })).await;
    assert_eq!((status, &body), (200, &json!(12)), "{}", tail(&python_worker.log(), 30));
    let log = python_worker.log();
    assert!(!log.contains(&stack.servers().nats_password(Role::Worker).unwrap()), "the Python worker logged its password");
    assert_nothing_refused(&[&python_worker, stack.api()]);
}
