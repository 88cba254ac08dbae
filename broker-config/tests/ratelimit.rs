//! The rate-limit script and API keys against a real redis-server on a free port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard_broker::apikeys::{ApiKeys, KeySpec, hash_secret};
use switchyard_broker::ratelimit::{Limit, LimitKind, RateLimiter, SETTLE_DELAY, reserved_member};

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn redis() -> (Redis, switchyard_broker::Redis) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/setup.sh installs it)");
    let server = Redis(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let manager = switchyard_broker::connect_redis(&format!("redis://127.0.0.1:{}", server.1)).await.unwrap();
    (server, manager)
}

fn limit(kind: LimitKind, key: &str, limit: u32, cost: u32) -> Limit {
    Limit { kind, key: key.into(), limit, cost }
}

#[tokio::test]
async fn requests_per_minute_let_exactly_the_limit_through() {
    let (_server, redis) = redis().await;
    let limiter = RateLimiter::new(redis);
    let limits = [limit(LimitKind::RequestsPerMinute, "rl:req", 5, 1)];
    let mut allowed = 0;
    for i in 0..12 {
        let decision = limiter.admit(&limits, &format!("r{i}"), 0, 60_000).await.unwrap();
        if decision.refused.is_none() {
            allowed += 1;
            assert_eq!(decision.states[0].remaining, 5 - allowed);
        } else {
            let retry = decision.retry_after_ms.unwrap();
            assert!(retry > 50_000 && retry <= 60_000, "retry {retry}");
        }
    }
    assert_eq!(allowed, 5);
}

#[tokio::test]
async fn a_refused_limit_charges_nothing_else() {
    let (_server, redis) = redis().await;
    let limiter = RateLimiter::new(redis);
    let tokens = limit(LimitKind::TokensPerMinute, "rl:tok", 100, 80);
    let requests = limit(LimitKind::RequestsPerMinute, "rl:req", 10, 1);
    let first = limiter.admit(&[requests.clone(), tokens.clone()], "a", 0, 60_000).await.unwrap();
    assert_eq!(first.refused, None);
    assert_eq!(first.states[1].remaining, 20);
    let second = limiter.admit(&[requests.clone(), tokens.clone()], "b", 0, 60_000).await.unwrap();
    assert_eq!(second.refused, Some(1), "the token bucket refuses");
    // The refused request did not use up a request slot.
    let probe = limiter.admit(std::slice::from_ref(&requests), "c", 0, 60_000).await.unwrap();
    assert_eq!(probe.states[0].remaining, 8);
    // 20 tokens left: a 60-token request is refused until the first request is corrected to
    // its real usage (30 instead of 80), which refunds 50.
    let bigger = limit(LimitKind::TokensPerMinute, "rl:tok", 100, 60);
    assert_eq!(limiter.admit(std::slice::from_ref(&bigger), "d", 0, 60_000).await.unwrap().refused, Some(0));
    limiter.settle(std::slice::from_ref(&tokens), "a", 30 - 80);
    let third = limiter.admit(&[bigger], "d", 0, 60_000).await.unwrap();
    assert_eq!(third.refused, None, "{third:?}");
    assert!((10..=12).contains(&third.states[0].remaining), "{third:?}");
    // A cost above the whole limit can never pass.
    let huge = limiter.admit(&[limit(LimitKind::TokensPerMinute, "rl:tok2", 100, 101)], "e", 0, 60_000).await.unwrap();
    assert_eq!((huge.refused, huge.retry_after_ms), (Some(0), None));
}

#[tokio::test]
async fn a_refund_never_fills_a_bucket_past_its_limit() {
    let (_server, redis) = redis().await;
    let limiter = RateLimiter::new(redis);
    let tokens = limit(LimitKind::TokensPerMinute, "rl:tok3", 100, 10);
    // A refund for a bucket that expired (or was never charged here): the bucket is full anyway.
    limiter.settle(std::slice::from_ref(&tokens), "a", -500);
    let admitted = limiter.admit(std::slice::from_ref(&tokens), "b", 0, 60_000).await.unwrap();
    assert_eq!((admitted.refused, admitted.states[0].remaining), (None, 90), "{admitted:?}");
    // An under-estimate is charged on top at the next admission.
    limiter.settle(std::slice::from_ref(&tokens), "b", 40);
    let next = limiter.admit(&[tokens], "c", 0, 60_000).await.unwrap();
    assert!((40..=41).contains(&next.states[0].remaining), "90 - 40 - 10 (plus a little refill): {next:?}");
}

#[tokio::test]
async fn concurrency_slots_are_freed_by_settle() {
    let (_server, redis) = redis().await;
    let mut raw = redis.clone();
    let limiter = RateLimiter::new(redis);
    let conc = [limit(LimitKind::Concurrent, "rl:conc", 2, 1)];
    assert_eq!(limiter.admit(&conc, "a", 0, 60_000).await.unwrap().refused, None);
    assert_eq!(limiter.admit(&conc, "b", 0, 60_000).await.unwrap().refused, None);
    assert_eq!(limiter.admit(&conc, "c", 0, 60_000).await.unwrap().refused, Some(0));
    // Freed by the next admission, which carries the correction ahead of its own check.
    limiter.settle(&conc, "a", 0);
    assert_eq!(limiter.admit(&conc, "c", 0, 60_000).await.unwrap().refused, None);
    // Freed at once by a flush (an api shutting down).
    limiter.settle(&conc, "c", 0);
    limiter.flush().await.unwrap();
    let running: usize = redis::cmd("ZCARD").arg("rl:conc").query_async(&mut raw).await.unwrap();
    assert_eq!(running, 1, "only b still holds a slot after the flush");
    assert_eq!(limiter.admit(&conc, "c", 0, 60_000).await.unwrap().refused, None);
    // Freed without any further admission too, shortly after (SETTLE_DELAY; polled, with
    // plenty of room for a loaded machine).
    limiter.settle(&conc, "b", 0);
    let deadline = std::time::Instant::now() + SETTLE_DELAY * 100;
    loop {
        let running: usize = redis::cmd("ZCARD").arg("rl:conc").query_async(&mut raw).await.unwrap();
        if running == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{running} slots still held {:?} after b settled; only c should", SETTLE_DELAY * 100);
        tokio::time::sleep(SETTLE_DELAY / 4).await;
    }
}

#[tokio::test]
async fn a_reservation_is_charged_whole_dated_ahead_and_returned_in_part() {
    let (_server, redis) = redis().await;
    let mut raw = redis.clone();
    let limiter = RateLimiter::new(redis);
    // Reserve 8 requests and 800 tokens, held for 250 ms.
    let reserve = [limit(LimitKind::RequestsPerMinute, "rl:req4", 12, 8), limit(LimitKind::TokensPerMinute, "rl:tok4", 1000, 800)];
    let before = switchyard_schemas::now_ms();
    let decision = limiter.admit(&reserve, "lease", 250, 60_000).await.unwrap();
    assert_eq!(decision.refused, None, "{decision:?}");
    assert_eq!((decision.states[0].remaining, decision.states[1].remaining), (4, 200), "{decision:?}");
    let entries: Vec<(String, f64)> =
        redis::cmd("ZRANGE").arg("rl:req4").arg(0).arg(-1).arg("WITHSCORES").query_async(&mut raw).await.unwrap();
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<String> = (1..=8).map(|j| reserved_member("lease", j)).collect();
    assert_eq!(names.len(), 8, "{entries:?}");
    assert!(expected.iter().all(|name| names.contains(&name.as_str())), "{entries:?}");
    assert!(entries.iter().all(|(_, at)| *at as u64 >= before + 250), "dated at the end of the hold: {entries:?} (asked at {before})");

    // A second reservation no longer fits the window (nor the bucket).
    assert_eq!(limiter.admit(&reserve, "lease2", 250, 60_000).await.unwrap().refused, Some(0));

    // Three were used: five entries and 500 tokens go back.
    limiter.return_unused(&reserve, "lease", 4..=8, 500);
    limiter.flush().await.unwrap();
    let left: Vec<String> = redis::cmd("ZRANGE").arg("rl:req4").arg(0).arg(-1).query_async(&mut raw).await.unwrap();
    let mut left = left;
    left.sort();
    assert_eq!(left, expected[..3], "the used entries stay");
    let one = [limit(LimitKind::RequestsPerMinute, "rl:req4", 12, 1), limit(LimitKind::TokensPerMinute, "rl:tok4", 1000, 100)];
    let after = limiter.admit(&one, "next", 0, 60_000).await.unwrap();
    assert_eq!(after.states[0].remaining, 8, "12 − 3 used − this one: {after:?}");
    assert!((600..=602).contains(&after.states[1].remaining), "1000 − 300 used − 100 (plus a little refill): {after:?}");
}

#[tokio::test]
async fn keys_are_stored_hashed_and_can_be_revoked() {
    let (_server, redis) = redis().await;
    let keys = ApiKeys::new(redis.clone());
    let (secret, record) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    assert!(secret.starts_with("sy-"));
    assert_eq!(record.groups, vec!["default"]);
    let found = keys.lookup(&hash_secret(&secret)).await.unwrap().unwrap();
    assert_eq!(found.user, "alice");
    // Nothing in Redis holds the secret itself.
    let mut conn = redis.clone();
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    for key in all {
        let value: redis::Value = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(!format!("{key}{value:?}").contains(&secret[3..]), "secret stored under {key}");
    }
    assert!(keys.revoke(&record.id, None).await.unwrap());
    assert!(keys.lookup(&hash_secret(&secret)).await.unwrap().unwrap().revoked);
    assert!(!keys.revoke("key_nope", None).await.unwrap());
    assert_eq!(keys.list().await.unwrap().len(), 1);
}
