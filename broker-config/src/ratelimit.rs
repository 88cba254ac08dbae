//! Rate limits, enforced in Redis so that every api replica shares them, by one Lua script
//! that checks every limit of a request and charges all of them or none, atomically.
//!
//! * Requests per minute: a sliding window (a sorted set of request ids by time), so no 60 s
//!   span ever lets more than the limit through — not even across a minute boundary.
//! * Tokens per minute: a token bucket holding up to the limit and refilling at limit/60 s.
//!   A request is charged its estimate up front and corrected to its real usage afterwards.
//!   A correction is a plain `HINCRBY` of the bucket's `adj` field, which the next charge
//!   folds in: settling runs no script.
//! * Concurrent requests: a sorted set of running request ids, each with an expiry so a
//!   crashed api replica cannot leak slots forever.
//!
//! A request may also reserve capacity for the ones after it (`cost` above 1: that many
//! window entries, that many tokens), which the caller hands out without asking Redis and
//! gives back unused with [`RateLimiter::return_unused`]. Reserved window entries are dated at
//! the end of the reservation (`hold_ms`), so however late within it a reserved request is
//! served, it counts for a full 60 s from then or later: no 60 s span sees more than the limit.
//!
//! Settling costs no round trip of its own: corrections wait (at most [`SETTLE_DELAY`]) for
//! the next admission of this replica and go in the same pipeline, ahead of its script, so
//! a slot freed here is free for the next request here. A busy replica thus makes one Redis
//! round trip per request, not two. On a Redis Cluster a pipeline keeps to one slot: there
//! corrections wait per API key (every key's limits share a slot, see
//! `switchyard_schemas::keys::rate_limit`) and ride only with an admission of the same key.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Redis;
use switchyard_schemas::{keys, now_ms};

use crate::BrokerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    Concurrent,
}

impl LimitKind {
    fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "window",
            LimitKind::TokensPerMinute => "bucket",
            LimitKind::Concurrent => "conc",
        }
    }
}

/// One limit a request must pass.
#[derive(Debug, Clone)]
pub struct Limit {
    pub kind: LimitKind,
    /// Redis key holding this limit's state (see `switchyard_schemas::keys::rate_limit`).
    pub key: String,
    pub limit: u32,
    /// What this request costs: 1 for requests and concurrency, the token estimate for tokens.
    pub cost: u32,
}

/// State of one limit after the decision, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub remaining: i64,
    /// Milliseconds until the limit is back to full.
    pub reset_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// Index of the first limit that refused the request, if any.
    pub refused: Option<usize>,
    /// When a refused request may succeed; `None` if it never can (cost above the limit).
    pub retry_after_ms: Option<u64>,
    pub states: Vec<LimitState>,
}

const ADMIT: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local conc_ttl = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local n = #KEYS
local states = {}
local refused, retry = 0, 0
-- Check every limit first; charge only if all pass.
for i = 1, n do
  local kind, limit, cost = ARGV[4 + 3*i - 2], tonumber(ARGV[4 + 3*i - 1]), tonumber(ARGV[4 + 3*i])
  local key = KEYS[i]
  local remaining, reset = 0, 0
  if kind == "window" then
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now - 60000)
    local count = redis.call("ZCARD", key)
    remaining = limit - count
    local oldest = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
    if oldest[2] then reset = tonumber(oldest[2]) + 60000 - now end
    if count + cost > limit and refused == 0 then refused, retry = i, math.max(reset, 1) end
  elseif kind == "bucket" then
    local state = redis.call("HMGET", key, "tokens", "ts", "adj")
    local tokens = tonumber(state[1]) or limit
    local ts = tonumber(state[2]) or now
    tokens = math.min(limit, tokens + (now - ts) * limit / 60000)
    -- Corrections settled since the last charge (refunds are positive).
    tokens = math.min(limit, tokens + (tonumber(state[3]) or 0))
    remaining = math.floor(tokens)
    reset = math.ceil((limit - tokens) * 60000 / limit)
    if cost > tokens and refused == 0 then
      refused = i
      if cost > limit then retry = -1 else retry = math.ceil((cost - tokens) * 60000 / limit) end
    end
    states[n + i] = tokens
  else
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
    local count = redis.call("ZCARD", key)
    remaining = limit - count
    if count + cost > limit and refused == 0 then refused, retry = i, 1000 end
  end
  states[i] = {remaining, reset}
end
if refused == 0 then
  for i = 1, n do
    local kind, limit, cost = ARGV[4 + 3*i - 2], tonumber(ARGV[4 + 3*i - 1]), tonumber(ARGV[4 + 3*i])
    local key = KEYS[i]
    if kind == "window" then
      if cost == 1 then
        redis.call("ZADD", key, now + hold, member)
      else
        -- A reservation: one entry per request, named as `reserved_member` names them.
        local entries = {}
        for j = 1, cost do
          entries[2*j - 1] = now + hold
          entries[2*j] = member .. ":" .. j
        end
        redis.call("ZADD", key, unpack(entries))
      end
      redis.call("PEXPIRE", key, 60000 + hold)
      if states[i][2] == 0 then states[i][2] = 60000 end
    elseif kind == "bucket" then
      local tokens = states[n + i] - cost
      redis.call("HSET", key, "tokens", tokens, "ts", now, "adj", 0)
      redis.call("PEXPIRE", key, 120000)
      states[i][2] = math.ceil((limit - tokens) * 60000 / limit)
    else
      redis.call("ZADD", key, now + conc_ttl, member)
      redis.call("PEXPIRE", key, conc_ttl)
    end
    states[i][1] = states[i][1] - cost
  end
end
local out = {refused, retry}
for i = 1, n do
  table.insert(out, states[i][1])
  table.insert(out, states[i][2])
end
return out
"#;

/// How long an untouched token bucket is kept (it is full again after 60 s anyway).
const BUCKET_TTL_MS: i64 = 120_000;

/// The longest a correction waits for an admission to ride along with.
/// Another replica sees a freed slot this much later at most; long enough that a replica
/// serving a request every few milliseconds wakes for it only now and then.
pub const SETTLE_DELAY: Duration = Duration::from_millis(20);

/// The window entry of request `j` (from 1) of a reservation made under `member`; the admit
/// script names them the same way.
pub fn reserved_member(member: &str, j: u32) -> String {
    format!("{member}:{j}")
}

/// Gives `tokens` back to a token bucket (negative: charges them), for its next charge to fold in.
fn refund(pipe: &mut redis::Pipeline, bucket: &str, tokens: i64) {
    pipe.hincr(bucket, "adj", tokens).ignore();
    // Same lifetime as a charged bucket (the admit script), so a correction to a bucket that
    // expired meanwhile does not linger either.
    pipe.pexpire(bucket, BUCKET_TTL_MS).ignore();
}

pub struct RateLimiter {
    redis: Redis,
    admit: redis::Script,
    corrections: Arc<Mutex<Corrections>>,
}

/// Settled corrections not sent yet, by the slot group they must be sent in (see [`RateLimiter::group`]).
#[derive(Default)]
struct Corrections {
    pipes: HashMap<String, redis::Pipeline>,
    /// A task will send them after [`SETTLE_DELAY`] unless an admission takes them first.
    flush_scheduled: bool,
}

impl Corrections {
    /// The waiting corrections of `group`, if there are any.
    fn take(&mut self, group: &str) -> Option<redis::Pipeline> {
        self.pipes.remove(group).filter(|pipe| !pipe.is_empty())
    }

    /// Every group's waiting corrections.
    fn take_all(&mut self) -> Vec<redis::Pipeline> {
        self.pipes.drain().map(|(_, pipe)| pipe).filter(|pipe| !pipe.is_empty()).collect()
    }
}

impl RateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self { redis, admit: redis::Script::new(ADMIT), corrections: Arc::default() }
    }

    /// Checks and charges `limits` for one request identified by `member` (or for a
    /// reservation, when a window's cost is above 1: see [`reserved_member`]). Window entries
    /// are dated `hold_ms` ahead; concurrency slots expire after `concurrency_ttl_ms` if never
    /// settled.
    pub async fn admit(&self, limits: &[Limit], member: &str, hold_ms: u64, concurrency_ttl_ms: u64) -> Result<Decision, BrokerError> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(self.admit.get_hash()).arg(limits.len());
        for limit in limits {
            evalsha.arg(&limit.key);
        }
        evalsha.arg(now_ms()).arg(member).arg(concurrency_ttl_ms).arg(hold_ms);
        for limit in limits {
            evalsha.arg(limit.kind.as_str()).arg(limit.limit).arg(limit.cost);
        }
        let group = self.group(limits);
        let mut pipe = self.corrections.lock().unwrap().take(group).unwrap_or_default();
        pipe.add_command(evalsha.clone());
        let mut redis = self.redis.clone();
        let out: Vec<i64> = match pipe.query_async::<(Vec<i64>,)>(&mut redis).await {
            Ok((out,)) => out,
            // The corrections ran; the script is not loaded yet (a new or flushed Redis).
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.admit.load_async(&mut redis).await?;
                evalsha.query_async(&mut redis).await?
            }
            Err(e) => return Err(e.into()),
        };
        let refused = (out[0] > 0).then(|| out[0] as usize - 1);
        let retry_after_ms = if out[1] < 0 { None } else { Some(out[1] as u64) };
        let states = out[2..].chunks(2).map(|pair| LimitState { remaining: pair[0], reset_ms: pair[1].max(0) as u64 }).collect();
        Ok(Decision { refused, retry_after_ms, states })
    }

    /// After the request: corrects token buckets by `delta` (actual − charged; negative
    /// refunds) and frees the request's concurrency slots — with the next admission, or
    /// within [`SETTLE_DELAY`]. Call it inside a Tokio runtime.
    pub fn settle(&self, limits: &[Limit], member: &str, token_delta: i64) {
        self.correct(limits, |pipe| {
            for limit in limits {
                match limit.kind {
                    LimitKind::TokensPerMinute if token_delta != 0 => refund(pipe, &limit.key, -token_delta),
                    LimitKind::Concurrent => {
                        pipe.zrem(&limit.key, member).ignore();
                    }
                    _ => {}
                }
            }
        });
    }

    /// Gives back what a reservation made under `member` did not use: the window entries
    /// numbered `unused_requests` and `unused_tokens` tokens. Sent like [`Self::settle`].
    pub fn return_unused(&self, limits: &[Limit], member: &str, unused_requests: RangeInclusive<u32>, unused_tokens: u32) {
        self.correct(limits, |pipe| {
            for limit in limits {
                match limit.kind {
                    LimitKind::RequestsPerMinute if !unused_requests.is_empty() => {
                        let entries: Vec<String> = unused_requests.clone().map(|j| reserved_member(member, j)).collect();
                        pipe.zrem(&limit.key, entries).ignore();
                    }
                    LimitKind::TokensPerMinute if unused_tokens > 0 => refund(pipe, &limit.key, unused_tokens as i64),
                    _ => {}
                }
            }
        });
    }

    /// Which corrections may share a pipeline with an admission of `limits` (all of one
    /// request's limits share a hash tag): all of them on one server, those of the same API key
    /// on a Redis Cluster.
    fn group<'a>(&self, limits: &'a [Limit]) -> &'a str {
        match limits.first() {
            Some(limit) if self.redis.is_cluster() => keys::hash_tag(&limit.key),
            _ => "",
        }
    }

    /// Queues the corrections `add` writes for `limits`, and makes sure they are sent within
    /// [`SETTLE_DELAY`].
    fn correct(&self, limits: &[Limit], add: impl FnOnce(&mut redis::Pipeline)) {
        let mut corrections = self.corrections.lock().unwrap();
        let pipe = corrections.pipes.entry(self.group(limits).to_string()).or_default();
        let before = pipe.len();
        add(pipe);
        if pipe.len() == before || corrections.flush_scheduled {
            return;
        }
        corrections.flush_scheduled = true;
        let (pending, redis) = (self.corrections.clone(), self.redis.clone());
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE_DELAY).await;
            let pipes = {
                let mut pending = pending.lock().unwrap();
                pending.flush_scheduled = false;
                pending.take_all()
            };
            if let Err(e) = send_all(&redis, pipes).await {
                tracing::warn!(error = %e, "settling rate-limit charges failed; concurrency slots free themselves when they expire");
            }
        });
    }

    /// Sends the corrections still waiting (at shutdown).
    pub async fn flush(&self) -> Result<(), BrokerError> {
        let pipes = self.corrections.lock().unwrap().take_all();
        send_all(&self.redis, pipes).await
    }
}

/// Sends `pipes` at once; the first error, if any.
async fn send_all(redis: &Redis, pipes: Vec<redis::Pipeline>) -> Result<(), BrokerError> {
    let sent = futures::future::join_all(pipes.iter().map(|pipe| {
        let mut redis = redis.clone();
        async move { pipe.query_async::<()>(&mut redis).await }
    }))
    .await;
    sent.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}
