//! API keys in Redis. A key's secret is shown once, at creation; Redis keeps only its SHA-256
//! (under [`keys::api_key`]) and a public id that maps to it (for listing and revoking).

use crate::Redis;
use rand::Rng;
use rand::distr::Alphanumeric;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use switchyard_schemas::{ApiKeyRecord, RateLimits, WIRE_VERSION, decode, encode, keys, now_ms, subject};

use crate::BrokerError;

/// Prefix of every secret, so leaked keys are easy to recognise (and to scan for).
pub const SECRET_PREFIX: &str = "sy-";

#[derive(Clone)]
pub struct ApiKeys {
    redis: Redis,
}

/// What a new key is allowed.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub user: String,
    pub groups: Vec<String>,
    pub limits: RateLimits,
    pub max_concurrent: Option<u32>,
    pub expires_ms: Option<u64>,
    /// An operator's key, allowed to read the status page.
    pub admin: bool,
}

pub fn hash_secret(secret: &str) -> String {
    // Runs on every request: no per-byte formatting.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(secret.as_bytes()) {
        hex.push(HEX[usize::from(byte >> 4)] as char);
        hex.push(HEX[usize::from(byte & 0xf)] as char);
    }
    hex
}

fn random(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

impl ApiKeys {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Creates a key; returns its secret (shown once) and its record.
    pub async fn create(&self, spec: KeySpec) -> Result<(String, ApiKeyRecord), BrokerError> {
        let secret = format!("{SECRET_PREFIX}{}", random(40));
        let hash = hash_secret(&secret);
        let groups = if spec.groups.is_empty() { vec!["default".to_string()] } else { spec.groups };
        let record = ApiKeyRecord {
            v: WIRE_VERSION,
            id: format!("key_{}", random(12)),
            user: spec.user,
            groups,
            limits: spec.limits,
            max_concurrent: spec.max_concurrent,
            created_ms: now_ms(),
            expires_ms: spec.expires_ms,
            revoked: false,
            hint: secret[..SECRET_PREFIX.len() + 4].to_string(),
            admin: spec.admin,
        };
        // Three keys in three slots of a Redis Cluster, so no transaction: written in the order
        // that leaves nothing usable half-made. The record first (a lookup finds it), then its id
        // (revoking finds it), then the listing. The secret is returned only once all are written.
        let mut redis = self.redis.clone();
        let () = redis.set(keys::api_key(&hash), encode(&record)?).await?;
        let () = redis.set(keys::api_key_id(&record.id), &hash).await?;
        let () = redis.sadd(keys::API_KEYS, &record.id).await?;
        Ok((secret, record))
    }

    /// The record of the key whose secret hashes to `hash`, if any (revoked and expired ones
    /// included: the caller decides).
    pub async fn lookup(&self, hash: &str) -> Result<Option<ApiKeyRecord>, BrokerError> {
        let blob: Option<Vec<u8>> = self.redis.clone().get(keys::api_key(hash)).await?;
        Ok(blob.and_then(|blob| decode(&blob).ok()))
    }

    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, BrokerError> {
        let mut redis = self.redis.clone();
        let ids: Vec<String> = redis.smembers(keys::API_KEYS).await?;
        let mut records = Vec::new();
        for id in ids {
            if let Some((_, record)) = self.by_id(&id).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.created_ms);
        Ok(records)
    }

    async fn by_id(&self, id: &str) -> Result<Option<(String, ApiKeyRecord)>, BrokerError> {
        let hash: Option<String> = self.redis.clone().get(keys::api_key_id(id)).await?;
        let Some(hash) = hash else { return Ok(None) };
        Ok(self.lookup(&hash).await?.map(|record| (hash, record)))
    }

    /// Revokes the key with public id `id` (kept, marked revoked, for the audit trail) and tells
    /// every api replica to forget it. Returns false if there is no such key.
    pub async fn revoke(&self, id: &str, nats: Option<&async_nats::Client>) -> Result<bool, BrokerError> {
        let Some((hash, record)) = self.by_id(id).await? else { return Ok(false) };
        let record = ApiKeyRecord { revoked: true, ..record };
        let _: () = self.redis.clone().set(keys::api_key(&hash), encode(&record)?).await?;
        if let Some(nats) = nats {
            nats.publish(subject::API_KEY_REVOKED, hash.into_bytes().into())
                .await
                .map_err(|e| BrokerError::JetStream(format!("announcing revocation: {e}")))?;
            let _ = nats.flush().await;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_hash_to_lowercase_hex_sha256() {
        assert_eq!(super::hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
