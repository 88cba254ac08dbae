//! Redis under Sentinel (`redis+sentinel://`): the master SIGKILLed while requests with an API
//! key (rate limits in Redis on every request) stream through the api, and the Sentinels promote
//! the replica. Every part follows the new master; no request hangs or gets a wrong answer;
//! requests that needed Redis while there was no master get the documented 503
//! (`service_unavailable`), and from shortly after the promotion every request is served.
//! The Redis Cluster side of the issue runs the whole policy matrix instead
//! (`SWITCHYARD_TEST_REDIS=cluster`, in scripts/test.sh).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::RateLimits;
use switchyard_tests::openai::chat_request;
use switchyard_tests::{RedisMode, Stack, eventually};

const CHAT: &str = "/v1/chat/completions";
const CLIENTS: usize = 6;
/// How long one request may take before it counts as hung.
const REQUEST_LIMIT: Duration = Duration::from_secs(20);
/// After the Sentinels name the new master, how long until every part has found it: each part
/// notices at its next failed command and asks the Sentinels again.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Record {
    sent: Instant,
    status: u16,
    /// What was wrong with the answer, if anything.
    broken: Option<String>,
}

async fn client(http: reqwest::Client, url: String, key: String, id: usize, stop: Arc<AtomicBool>) -> Vec<Record> {
    let mut records = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = format!("client{id} request{n}");
        let sent = Instant::now();
        let response = http.post(&url).bearer_auth(&key).json(&chat_request("echo", &text)).timeout(REQUEST_LIMIT).send().await;
        let record = match response {
            Err(e) => Record { sent, status: 0, broken: Some(format!("no answer: {e}")) },
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let broken = match status {
                    200 if body["choices"][0]["message"]["content"] == text.as_str() => None,
                    200 => Some(format!("wrong answer to {text:?}: {body}")),
                    503 if body["error"]["code"] == "service_unavailable" => None,
                    _ => Some(format!("status {status}: {body}")),
                };
                Record { sent, status, broken }
            }
        };
        let refused = record.status == 503;
        records.push(record);
        if refused {
            // A client backs off on a 503, as OpenAI's SDKs do.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    records
}

#[tokio::test]
async fn the_parts_follow_a_sentinel_failover_under_load() {
    let stack = Stack::builder().with_auth().redis(RedisMode::Sentinel).start().await;
    assert!(stack.redis_url().starts_with("redis+sentinel://"), "{}", stack.redis_url());
    let worker = stack.worker(&["echo"]);
    let worker_id = stack.worker_id(&worker).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("Redis through the Sentinels"));
    let spec = KeySpec { user: "load".into(), limits: RateLimits { rpm: Some(1_000_000), tpm: Some(100_000_000) }, ..KeySpec::default() };
    let (key, _) = keys.create(spec).await.expect("creating a key");
    eventually(Duration::from_secs(20), "the key to be served", || async {
        let reply = stack.http().post(stack.api_url(CHAT)).bearer_auth(&key).json(&chat_request("echo", "hello")).send().await.ok()?;
        (reply.status() == 200).then_some(())
    })
    .await;

    let redis = stack.servers().redis_servers();
    let (old_master, old_port) = redis.sentinel_master().await.expect("the Sentinels name a master");
    // What the replica has not received yet is lost with the master (replication is
    // asynchronous): wait for it, so the test's key survives.
    let mut master =
        redis::Client::open(format!("redis://127.0.0.1:{old_port}")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let acknowledged: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut master).await.expect("WAIT");
    assert_eq!(acknowledged, 1, "the replica acknowledges the writes so far");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..CLIENTS).map(|id| tokio::spawn(client(stack.http().clone(), stack.api_url(CHAT), key.clone(), id, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    old_master.sigkill();
    let promoted = eventually(Duration::from_secs(30), "the Sentinels to promote the replica", || async {
        let (_, port) = redis.sentinel_master().await?;
        (port != old_port).then(Instant::now)
    })
    .await;
    eprintln!("the Sentinels promoted the replica {:?} after the kill", promoted - killed);
    tokio::time::sleep(SETTLE + Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for client in clients {
        records.extend(client.await.expect("a client task"));
    }

    let broken: Vec<&Record> = records.iter().filter(|r| r.broken.is_some()).collect();
    assert!(broken.is_empty(), "{} of {} requests broken, first: {:?}", broken.len(), records.len(), broken.first());
    let served_before = records.iter().filter(|r| r.sent < killed && r.status == 200).count();
    let refused: Vec<&Record> = records.iter().filter(|r| r.status == 503).collect();
    let settled = promoted + SETTLE;
    let late_refusals = refused.iter().filter(|r| r.sent > settled).count();
    let served_after = records.iter().filter(|r| r.sent > settled && r.status == 200).count();
    eprintln!(
        "{} requests: {served_before} served before the kill, {} refused (503) while Redis had no master, {served_after} served after the failover",
        records.len(),
        refused.len()
    );
    assert!(served_before > 0, "requests were served before the kill");
    assert_eq!(late_refusals, 0, "requests sent {SETTLE:?} after the promotion are served");
    assert!(served_after > 0, "requests are served after the failover");

    // The worker's heartbeats reach the new master, and the registry there knows it.
    eventually(Duration::from_secs(15), "the worker to be registered on the new master", || async {
        stack.registered_worker_ids().await.contains(&worker_id).then_some(())
    })
    .await;
    // Keys created now are on the new master, and the api finds them.
    let (late_key, _) =
        keys.create(KeySpec { user: "late".into(), ..KeySpec::default() }).await.expect("creating a key after the failover");
    let reply = stack.http().post(stack.api_url(CHAT)).bearer_auth(&late_key).json(&chat_request("echo", "late")).send().await.unwrap();
    assert_eq!(reply.status(), 200, "a key created after the failover is served");
}
