//! The model registry in Redis.
//!
//! Each live worker keeps `sy:worker:<id>` (its [`WorkerRecord`], with a TTL) and a score in
//! the `sy:workers` sorted set (its expiry time), refreshed every heartbeat; a worker that stops
//! heartbeating drops out of [`Registry::live_workers`] as soon as its expiry passes, without
//! anybody deleting anything. Model cards also go into the `sy:models` hash with the time they
//! were last seen, so the api still knows a model whose workers are all gone for a while (and
//! queues its jobs instead of calling it unknown). The scheduler's [`Registry::reap`] clears
//! what dead workers leave behind.

use std::time::Duration;

use crate::Redis;
use redis::AsyncCommands;
use switchyard_schemas::{ModelCard, WorkerRecord, decode, encode, keys, now_ms};

use crate::BrokerError;

#[derive(Clone)]
pub struct Registry {
    redis: Redis,
}

/// What one [`Registry::reap`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub workers: usize,
    pub models: usize,
}

impl Registry {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Announces (or re-announces) a worker and its models, valid for `ttl`.
    pub async fn heartbeat(&self, record: &WorkerRecord, ttl: Duration) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic().set_ex(keys::worker(&record.worker_id), encode(record)?, ttl.as_secs().max(1)).zadd(
            keys::WORKERS,
            &record.worker_id,
            now + ttl.as_millis() as u64,
        );
        for card in &record.models {
            let card = ModelCard { last_seen_ms: now, ..card.clone() };
            pipe.hset(keys::MODELS, &card.name, encode(&card)?);
        }
        pipe.exec_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Removes a worker at once (graceful shutdown); its models stay known.
    pub async fn deregister(&self, worker_id: &str) -> Result<(), BrokerError> {
        redis::pipe().atomic().del(keys::worker(worker_id)).zrem(keys::WORKERS, worker_id).exec_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Workers whose heartbeat has not expired.
    pub async fn live_workers(&self) -> Result<Vec<WorkerRecord>, BrokerError> {
        let mut redis = self.redis.clone();
        let ids: Vec<String> = redis.zrangebyscore(keys::WORKERS, now_ms(), "+inf").await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| keys::worker(id)).collect();
        let blobs: Vec<Option<Vec<u8>>> = redis.mget(keys).await?;
        Ok(blobs.into_iter().flatten().filter_map(|blob| decode(&blob).ok()).collect())
    }

    /// Every model announced within the retention period, alive or not.
    pub async fn known_models(&self) -> Result<Vec<ModelCard>, BrokerError> {
        let blobs: Vec<(String, Vec<u8>)> = self.redis.clone().hgetall(keys::MODELS).await?;
        Ok(blobs.into_iter().filter_map(|(_, blob)| decode(&blob).ok()).collect())
    }

    /// Clears expired workers, and models no live worker has announced for `model_retention`.
    pub async fn reap(&self, model_retention: Duration) -> Result<Reaped, BrokerError> {
        let mut redis = self.redis.clone();
        let now = now_ms();
        let dead: Vec<String> = redis.zrangebyscore(keys::WORKERS, "-inf", format!("({now}")).await?;
        let mut reaped = Reaped::default();
        if !dead.is_empty() {
            let mut pipe = redis::pipe();
            for id in &dead {
                pipe.zrem(keys::WORKERS, id).del(keys::worker(id));
            }
            pipe.exec_async(&mut redis).await?;
            reaped.workers = dead.len();
        }
        let cutoff = now.saturating_sub(model_retention.as_millis() as u64);
        let stale: Vec<String> =
            self.known_models().await?.into_iter().filter(|card| card.last_seen_ms < cutoff).map(|card| card.name).collect();
        if !stale.is_empty() {
            let _: () = redis.hdel(keys::MODELS, &stale).await?;
            reaped.models = stale.len();
        }
        Ok(reaped)
    }
}
