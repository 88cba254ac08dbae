//! Rate limits, enforced in Redis so that every api replica shares them, by one Lua script
//! that checks every limit of a request and charges all of them or none, atomically.
//!
//! * Requests per minute: a sliding window (a sorted set of request ids by time), so no 60 s
//!   span ever lets more than the limit through — not even across a minute boundary.
//! * Tokens per minute: a token bucket holding up to the limit and refilling at limit/60 s.
//!   A request is charged its estimate up front and corrected to its real usage afterwards.
//! * Concurrent requests: a sorted set of running request ids, each with an expiry so a
//!   crashed api replica cannot leak slots forever.

use redis::aio::ConnectionManager;
use switchyard_schemas::now_ms;

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
local n = #KEYS
local states = {}
local refused, retry = 0, 0
-- Check every limit first; charge only if all pass.
for i = 1, n do
  local kind, limit, cost = ARGV[3 + 3*i - 2], tonumber(ARGV[3 + 3*i - 1]), tonumber(ARGV[3 + 3*i])
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
    local state = redis.call("HMGET", key, "tokens", "ts")
    local tokens = tonumber(state[1]) or limit
    local ts = tonumber(state[2]) or now
    tokens = math.min(limit, tokens + (now - ts) * limit / 60000)
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
    local kind, limit, cost = ARGV[3 + 3*i - 2], tonumber(ARGV[3 + 3*i - 1]), tonumber(ARGV[3 + 3*i])
    local key = KEYS[i]
    if kind == "window" then
      redis.call("ZADD", key, now, member)
      redis.call("PEXPIRE", key, 60000)
      if states[i][2] == 0 then states[i][2] = 60000 end
    elseif kind == "bucket" then
      local tokens = states[n + i] - cost
      redis.call("HSET", key, "tokens", tokens, "ts", now)
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

/// Puts tokens back into (or takes more from) a bucket, and frees a concurrency slot.
const SETTLE: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
for i = 1, #KEYS do
  local kind, limit, delta = ARGV[3*i], tonumber(ARGV[3*i + 1]), tonumber(ARGV[3*i + 2])
  local key = KEYS[i]
  if kind == "bucket" then
    local state = redis.call("HMGET", key, "tokens", "ts")
    if state[1] then
      local tokens = math.min(limit, tonumber(state[1]) + (now - tonumber(state[2])) * limit / 60000)
      redis.call("HSET", key, "tokens", math.min(limit, tokens - delta), "ts", now)
    end
  elseif kind == "conc" then
    redis.call("ZREM", key, member)
  end
end
return 0
"#;

pub struct RateLimiter {
    redis: ConnectionManager,
    admit: redis::Script,
    settle: redis::Script,
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis, admit: redis::Script::new(ADMIT), settle: redis::Script::new(SETTLE) }
    }

    /// Checks and charges `limits` for one request identified by `member`. Concurrency slots
    /// expire after `concurrency_ttl_ms` if never settled.
    pub async fn admit(&self, limits: &[Limit], member: &str, concurrency_ttl_ms: u64) -> Result<Decision, BrokerError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(now_ms()).arg(member).arg(concurrency_ttl_ms);
        for limit in limits {
            invocation.key(&limit.key).arg(limit.kind.as_str()).arg(limit.limit).arg(limit.cost);
        }
        let out: Vec<i64> = invocation.invoke_async(&mut self.redis.clone()).await?;
        let refused = (out[0] > 0).then(|| out[0] as usize - 1);
        let retry_after_ms = if out[1] < 0 { None } else { Some(out[1] as u64) };
        let states = out[2..].chunks(2).map(|pair| LimitState { remaining: pair[0], reset_ms: pair[1].max(0) as u64 }).collect();
        Ok(Decision { refused, retry_after_ms, states })
    }

    /// After the request: corrects token buckets by `delta` (actual − charged; negative
    /// refunds) and frees the request's concurrency slots.
    pub async fn settle(&self, limits: &[Limit], member: &str, token_delta: i64) -> Result<(), BrokerError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(now_ms()).arg(member);
        let mut any = false;
        for limit in limits {
            if limit.kind == LimitKind::RequestsPerMinute {
                continue;
            }
            any = true;
            invocation.key(&limit.key).arg(limit.kind.as_str()).arg(limit.limit).arg(token_delta);
        }
        if any {
            let _: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        }
        Ok(())
    }
}
