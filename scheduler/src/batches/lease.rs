//! Which scheduler replica runs a batch: a Redis key holding the owner's instance name with a
//! TTL the owner renews. Correctness never rests on it (a line's result is written once whoever
//! writes it); it keeps two replicas from doing the same work, and hands a dead owner's batches
//! to another replica once the key lapses.

use std::time::Duration;

use switchyard_broker::BrokerError;
use switchyard_broker::Redis;
use switchyard_schemas::keys;

pub struct Lease {
    redis: Redis,
    key: String,
    owner: String,
    ttl: Duration,
}

const RENEW: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#;
const RELEASE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;

impl Lease {
    /// Takes the lease on `batch_id` for `owner` if nobody holds it.
    pub async fn take(redis: &Redis, batch_id: &str, owner: &str, ttl: Duration) -> Result<Option<Lease>, BrokerError> {
        let key = keys::batch_owner(batch_id);
        let taken: Option<String> =
            redis::cmd("SET").arg(&key).arg(owner).arg("NX").arg("PX").arg(ttl.as_millis() as u64).query_async(&mut redis.clone()).await?;
        Ok(taken.map(|_| Lease { redis: redis.clone(), key, owner: owner.to_string(), ttl }))
    }

    /// Extends the lease; false when it lapsed and someone else may hold it now.
    pub async fn renew(&self) -> Result<bool, BrokerError> {
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release(self) -> Result<(), BrokerError> {
        let _: i64 = redis::Script::new(RELEASE).key(&self.key).arg(&self.owner).invoke_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
