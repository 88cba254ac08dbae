//! Who is calling and how much they may do: API keys, per-model permissions and rate limits.
//!
//! Authentication costs no Redis round trip on the hot path: key records are cached for a few
//! seconds, and a revocation is announced on NATS so every replica drops the key at once.
//! Admission is one call of the rate-limit script, which checks and charges every limit of
//! the request (the key's requests/tokens per minute and concurrency, and the model's per-key
//! limits) atomically in Redis, shared by all replicas. Without Redis there is no admission:
//! the api answers 503 rather than count per process.
//!
//! Admission need not cost a round trip per request, though: a busy key far from its limits
//! is served from capacity reserved in Redis ahead of time, and near a limit a request's jobs
//! may be published while Redis decides (see [`crate::lease`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use futures::StreamExt;
use switchyard_broker::apikeys::{ApiKeys, hash_secret};
use switchyard_broker::ratelimit::{Decision, Limit, LimitKind, LimitState, RateLimiter};
use switchyard_schemas::{ApiKeyRecord, ModelCard, keys, now_ms, subject};

use crate::error::ApiError;
use crate::lease::{self, Draw, LEASE_TTL, Lease, Plan, Scope};

/// How long a key record is trusted without asking Redis again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Scopes (key and model) remembered before stale ones are swept.
const SCOPES_KEPT: usize = 10_000;

pub struct Gate {
    keys: ApiKeys,
    limiter: RateLimiter,
    cache: Mutex<HashMap<String, (Arc<ApiKeyRecord>, Instant)>>,
    /// Per key and model (`key_id:model`): what this replica knows of the limits, and its lease.
    scopes: Mutex<HashMap<String, Scope>>,
    no_auth: bool,
    /// A concurrency slot left by a crashed replica frees itself after this long.
    concurrency_ttl: Duration,
}

/// The authenticated caller of one request; `key` is `None` only with `--no-auth`.
#[derive(Clone)]
pub struct Caller {
    pub key: Option<Arc<ApiKeyRecord>>,
    /// When its request arrived: its jobs' latencies count from here.
    pub arrived: Instant,
}

impl Caller {
    /// Whether this caller may see and use a model. A model the caller may not use is
    /// answered exactly like one that does not exist.
    pub fn may_use(&self, card: &ModelCard) -> bool {
        match &self.key {
            None => true,
            Some(key) => card.permissions.allows(&key.user, &key.groups),
        }
    }
}

impl Gate {
    pub fn new(redis: switchyard_broker::Redis, no_auth: bool, concurrency_ttl: Duration) -> Arc<Gate> {
        Arc::new(Gate {
            keys: ApiKeys::new(redis.clone()),
            limiter: RateLimiter::new(redis),
            cache: Mutex::new(HashMap::new()),
            scopes: Mutex::new(HashMap::new()),
            no_auth,
            concurrency_ttl,
        })
    }

    /// Drops revoked keys from the cache as soon as any process announces them.
    pub async fn watch_revocations(self: &Arc<Self>, nats: &async_nats::Client) -> Result<(), ApiError> {
        let mut revoked =
            nats.subscribe(subject::API_KEY_REVOKED).await.map_err(|e| ApiError::Unavailable(format!("cannot subscribe on NATS: {e}")))?;
        let gate = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = revoked.next().await {
                let Some(gate) = gate.upgrade() else { return };
                gate.cache.lock().unwrap().remove(String::from_utf8_lossy(&message.payload).as_ref());
            }
        });
        Ok(())
    }

    pub async fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, ApiError> {
        let arrived = Instant::now();
        if self.no_auth {
            return Ok(Caller { key: None, arrived });
        }
        let secret = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).".into(),
                )
            })?;
        let hash = hash_secret(secret);
        let cached = self.cache.lock().unwrap().get(&hash).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(key, _)| key.clone());
        let key = match cached {
            Some(key) => key,
            None => {
                let record = self.keys.lookup(&hash).await.map_err(|e| ApiError::Unavailable(format!("Cannot check the API key: {e}")))?;
                let key = Arc::new(record.ok_or_else(|| incorrect_key(secret))?);
                self.cache.lock().unwrap().insert(hash, (key.clone(), Instant::now()));
                key
            }
        };
        if key.revoked {
            return Err(ApiError::Unauthorized(format!("The API key {} has been revoked.", key.hint)));
        }
        if key.expires_ms.is_some_and(|expires| expires <= now_ms()) {
            return Err(ApiError::Unauthorized(format!("The API key {} has expired.", key.hint)));
        }
        Ok(Caller { key: Some(key), arrived })
    }

    /// Gives back what every lease left, and sends the rate-limit corrections still waiting
    /// to ride along with an admission (at shutdown).
    pub async fn flush_settlements(&self) -> Result<(), switchyard_broker::BrokerError> {
        let leases: Vec<Lease> = self.scopes.lock().unwrap().values_mut().filter_map(|scope| scope.end(None)).collect();
        for lease in leases {
            self.give_back(lease);
        }
        self.limiter.flush().await
    }

    /// Charges a request against every limit that applies to it (or refuses it with 429) and
    /// runs `dispatch`, which starts the request's jobs. A request served from a lease costs no
    /// round trip; otherwise both run at once when this replica last saw the key far from its
    /// limits, and admission comes first when not. A refusal drops what `dispatch` returned,
    /// which must cancel the work (as dropping a `JobHandle` does); so `dispatch` must start
    /// nothing that cannot be taken back.
    pub async fn admit_and_dispatch<T>(
        self: &Arc<Self>,
        caller: &Caller,
        card: &ModelCard,
        estimated_tokens: u32,
        dispatch: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<(Admission, T), ApiError> {
        let member = ulid::Ulid::new().to_string();
        let Some(key) = &caller.key else {
            return Ok((Admission::free(self.clone(), member), dispatch.await?));
        };
        let scope = format!("{}:{}", key.id, card.name);
        let limits = limits_of(key, card, estimated_tokens);
        if limits.is_empty() {
            return Ok((Admission::free(self.clone(), member), dispatch.await?));
        }
        let plan = match self.draw_from_lease(&scope, &limits, member.clone(), estimated_tokens) {
            Ok(admission) => return with_work(admission, dispatch.await),
            Err(plan) => plan,
        };
        let admit = self.admit(&scope, limits, plan.reserve, member, &card.name, estimated_tokens);
        if plan.overlap {
            let (admission, work) = tokio::join!(admit, dispatch);
            with_work(admission?, work)
        } else {
            let admission = admit.await?;
            with_work(admission, dispatch.await)
        }
    }

    /// Admits the request from its scope's lease, or says how to ask Redis.
    fn draw_from_lease(self: &Arc<Self>, scope: &str, limits: &[Limit], member: String, estimated_tokens: u32) -> Result<Admission, Plan> {
        let mut scopes = self.scopes.lock().unwrap();
        let Some(known) = scopes.get_mut(scope) else { return Err(Scope::default().plan(limits)) };
        match known.draw(limits, estimated_tokens) {
            Draw::Served { limits, states } => {
                let headers = rate_headers(&limits, &states);
                return Ok(Admission { gate: self.clone(), limits, member, charged: estimated_tokens, headers, settled: false });
            }
            Draw::Ended(lease) => self.give_back(lease),
            Draw::NoLease => {}
        }
        Err(known.plan(limits))
    }

    /// Asks Redis to admit the request, reserving `reserve` requests' worth when above 1 (and
    /// the request alone if that does not fit).
    async fn admit(
        self: &Arc<Self>,
        scope: &str,
        limits: Vec<Limit>,
        mut reserve: u32,
        member: String,
        model: &str,
        estimated_tokens: u32,
    ) -> Result<Admission, ApiError> {
        let asked_for_lease = reserve > 1;
        let (charged, decision) = loop {
            let charged: Arc<[Limit]> = limits.iter().map(|limit| lease::reserved(limit, reserve)).collect();
            let hold = if reserve > 1 { LEASE_TTL } else { Duration::ZERO };
            let decision = self.limiter.admit(&charged, &member, hold.as_millis() as u64, self.concurrency_ttl.as_millis() as u64).await;
            match decision {
                // The lease did not fit; this request alone may.
                Ok(Decision { refused: Some(_), .. }) if reserve > 1 => reserve = 1,
                decision => break (charged, decision),
            }
        };
        let (states, replaced) = {
            let mut scopes = self.scopes.lock().unwrap();
            if scopes.len() >= SCOPES_KEPT {
                scopes.retain(|_, known| !known.is_stale());
            }
            let known = scopes.entry(scope.to_string()).or_default();
            if asked_for_lease {
                known.lease_answered();
            }
            match &decision {
                Ok(Decision { refused: None, states, .. }) => {
                    let (states, replaced) = known.admitted(states.clone(), &charged, reserve, &member, estimated_tokens);
                    (Some(states), replaced)
                }
                _ => {
                    known.forget();
                    (None, None)
                }
            }
        };
        if let Some(replaced) = replaced {
            self.give_back(replaced);
        }
        let decision = decision.map_err(|e| {
            ApiError::Unavailable(format!(
                "The rate limiter is unavailable (Redis did not answer: {e}); no request is admitted without it."
            ))
        })?;
        let Some(states) = states else {
            let refused = decision.refused.expect("a decision without states refused the request");
            let headers = rate_headers(&charged, &decision.states);
            return Err(refusal(&charged[refused], &decision, headers, model));
        };
        if reserve > 1 {
            self.end_lease_when_due(scope, &member);
        }
        let headers = rate_headers(&charged, &states);
        Ok(Admission { gate: self.clone(), limits: charged, member, charged: estimated_tokens, headers, settled: false })
    }

    /// Gives back what the lease made under `member` left once it has expired, unless it has
    /// ended before.
    fn end_lease_when_due(self: &Arc<Self>, scope: &str, member: &str) {
        let (gate, scope, member) = (Arc::downgrade(self), scope.to_string(), member.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(LEASE_TTL).await;
            let Some(gate) = gate.upgrade() else { return };
            let lease = gate.scopes.lock().unwrap().get_mut(&scope).and_then(|known| known.end(Some(&member)));
            if let Some(lease) = lease {
                gate.give_back(lease);
            }
        });
    }

    fn give_back(&self, lease: Lease) {
        let (requests, tokens) = lease.unused();
        self.limiter.return_unused(&lease.limits, &lease.member, requests, tokens);
    }
}

/// The admission and the work it admitted; a request whose work could not start is charged
/// nothing.
fn with_work<T>(admission: Admission, work: Result<T, ApiError>) -> Result<(Admission, T), ApiError> {
    match work {
        Ok(work) => Ok((admission, work)),
        Err(error) => {
            admission.settle(0);
            Err(error)
        }
    }
}

/// Every limit that applies to a request of `key` on the model of `card`, in a fixed order.
fn limits_of(key: &ApiKeyRecord, card: &ModelCard, estimated_tokens: u32) -> Vec<Limit> {
    let mut limits = Vec::new();
    let mut add = |kind, model: Option<&str>, limit: Option<u32>, cost: u32| {
        if let Some(limit) = limit {
            let what = match kind {
                LimitKind::RequestsPerMinute => "req",
                LimitKind::TokensPerMinute => "tok",
                LimitKind::Concurrent => "conc",
            };
            limits.push(Limit { kind, key: keys::rate_limit(what, &key.id, model), limit, cost });
        }
    };
    add(LimitKind::RequestsPerMinute, None, key.limits.rpm, 1);
    add(LimitKind::TokensPerMinute, None, key.limits.tpm, estimated_tokens);
    add(LimitKind::Concurrent, None, key.max_concurrent, 1);
    add(LimitKind::RequestsPerMinute, Some(&card.name), card.limits.rpm, 1);
    add(LimitKind::TokensPerMinute, Some(&card.name), card.limits.tpm, estimated_tokens);
    limits
}

fn incorrect_key(secret: &str) -> ApiError {
    let shown: String = secret.chars().take(6).collect();
    ApiError::Unauthorized(format!(
        "Incorrect API key provided: {shown}***. Ask your Switchyard operator for a key (`switchyard keys create`)."
    ))
}

fn refusal(limit: &Limit, decision: &Decision, mut headers: HeaderMap, model: &str) -> ApiError {
    let (what, kind, label) = match limit.kind {
        LimitKind::RequestsPerMinute => ("requests per minute", "requests", "rpm"),
        LimitKind::TokensPerMinute => ("tokens per minute", "tokens", "tpm"),
        LimitKind::Concurrent => ("concurrent requests", "requests", "concurrency"),
    };
    metrics::counter!(switchyard_telemetry::names::RATE_LIMITED, "model" => model.to_string(), "limit" => label).increment(1);
    let scope =
        if limit.key.contains(':') && limit.key.ends_with(&format!(":{model}")) { format!(" on model {model}") } else { String::new() };
    let message = match decision.retry_after_ms {
        Some(ms) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
            format!(
                "Rate limit reached for {what}{scope}: limit {}, requested {}. Please try again in {}.",
                limit.limit,
                limit.cost,
                go_duration(ms)
            )
        }
        None => format!(
            "Request too large for {what}{scope}: limit {}, requested {}. Reduce max_tokens or the prompt.",
            limit.limit, limit.cost
        ),
    };
    ApiError::RateLimited { message, kind, headers: Box::new(headers) }
}

/// OpenAI's `x-ratelimit-*` headers for the key's own request and token limits.
fn rate_headers(limits: &[Limit], states: &[LimitState]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if !headers.contains_key(name) {
            headers.insert(name, HeaderValue::from_str(&value).expect("ASCII header value"));
        }
    };
    for (limit, state) in limits.iter().zip(states) {
        let suffix = match limit.kind {
            LimitKind::RequestsPerMinute => "requests",
            LimitKind::TokensPerMinute => "tokens",
            LimitKind::Concurrent => continue,
        };
        let (limit_h, remaining_h, reset_h) = match suffix {
            "requests" => ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
            _ => ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        };
        set(limit_h, limit.limit.to_string());
        set(remaining_h, state.remaining.max(0).to_string());
        set(reset_h, go_duration(state.reset_ms));
    }
    headers
}

/// Durations the way OpenAI writes them in headers: `20ms`, `1.5s`, `6m0s`.
fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let seconds = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", seconds.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A request's charge against its limits, held until the request ends. Dropping it without
/// [`Admission::settle`] (the client went away mid-answer) keeps the token charge as estimated
/// and frees the concurrency slot; a request refused before any output settles at zero.
pub struct Admission {
    gate: Arc<Gate>,
    limits: Arc<[Limit]>,
    member: String,
    /// Tokens charged for this request (the estimate).
    charged: u32,
    headers: HeaderMap,
    settled: bool,
}

impl Admission {
    fn free(gate: Arc<Gate>, member: String) -> Self {
        Admission { gate, limits: Arc::new([]), member, charged: 0, headers: HeaderMap::new(), settled: true }
    }

    /// The `x-ratelimit-*` headers to send with the response.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Corrects the token charge to what the request really used, and frees its slot.
    pub fn settle(mut self, actual_tokens: u32) {
        self.release(actual_tokens as i64 - self.charged as i64);
    }

    fn release(&mut self, token_delta: i64) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.gate.limiter.settle(&self.limits, &self.member, token_delta);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(super::go_duration(20), "20ms");
        assert_eq!(super::go_duration(1500), "1.5s");
        assert_eq!(super::go_duration(1000), "1s");
        assert_eq!(super::go_duration(360_000), "6m0s");
    }
}
