//! Every Redis key Switchyard uses. Nobody else formats one.
//!
//! Keys that one transaction, pipeline or script touches together share a hash tag (the part in
//! `{…}`), so that on a Redis Cluster they live in one slot: the registry's under `{reg}`, each
//! API key's rate limits under its key id. Every other command touches one key. Redis outside a
//! cluster ignores the braces.

/// Sorted set of live workers: member = worker id, score = expiry time in ms.
pub const WORKERS: &str = "sy:{reg}:workers";
/// Hash of every model ever announced: field = model name, value = encoded
/// [`crate::ModelCard`] with the time it was last seen alive.
pub const MODELS: &str = "sy:{reg}:models";

/// One worker's [`crate::WorkerRecord`], with a TTL refreshed by its heartbeat.
pub fn worker(worker_id: &str) -> String {
    format!("sy:{{reg}}:worker:{worker_id}")
}

/// A job's cancellation flag.
pub fn cancel(job_id: &str) -> String {
    format!("sy:cancel:{job_id}")
}

/// `SCAN` pattern matching every job's cancellation flag.
pub const CANCEL_FLAGS: &str = "sy:cancel:*";

/// Set of every API key id.
pub const API_KEYS: &str = "sy:apikeys";

/// An API key's [`crate::ApiKeyRecord`], under the hex SHA-256 of its secret.
pub fn api_key(secret_sha256: &str) -> String {
    format!("sy:apikey:{secret_sha256}")
}

/// Maps a key id to the hash its record is stored under.
pub fn api_key_id(id: &str) -> String {
    format!("sy:apikey-id:{id}")
}

/// Rate-limit state of API key `key_id` (on `model`, for a model's own limits): `what` is
/// `req`, `tok` or `conc`. Every limit of one key shares its slot, so that one script checks
/// and charges them together.
pub fn rate_limit(what: &str, key_id: &str, model: Option<&str>) -> String {
    match model {
        None => format!("sy:rl:{{{key_id}}}:{what}"),
        Some(model) => format!("sy:rl:{{{key_id}}}:{what}:{model}"),
    }
}

/// The hash tag of `key` (what Redis Cluster hashes to find its slot): the text inside its
/// first non-empty `{…}`, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

/// Which scheduler replica runs a batch: its instance name, with a TTL the owner keeps renewing.
/// When the owner dies the key lapses and another replica takes the batch over.
pub fn batch_owner(batch_id: &str) -> String {
    format!("sy:batch-owner:{batch_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_used_together_share_a_hash_tag() {
        assert_eq!(hash_tag(WORKERS), hash_tag(&worker("w1")));
        assert_eq!(hash_tag(WORKERS), hash_tag(MODELS));
        let limits = [rate_limit("req", "key_1", None), rate_limit("tok", "key_1", None), rate_limit("tok", "key_1", Some("m/x"))];
        assert!(limits.iter().all(|key| hash_tag(key) == "key_1"), "{limits:?}");
        assert_ne!(hash_tag(&rate_limit("req", "key_1", None)), hash_tag(&rate_limit("req", "key_2", None)));
    }

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("a{b}c{d}"), "b");
        assert_eq!(hash_tag("plain"), "plain");
        // An empty first tag does not count: the whole key is hashed.
        assert_eq!(hash_tag("a{}b{c}"), "a{}b{c}");
        assert_eq!(hash_tag("a{b"), "a{b");
    }
}
