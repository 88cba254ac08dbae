//! Every Redis key Switchyard uses. Nobody else formats one.

/// Sorted set of live workers: member = worker id, score = expiry time in ms.
pub const WORKERS: &str = "sy:workers";
/// Hash of every model ever announced: field = model name, value = encoded
/// [`crate::ModelCard`] with the time it was last seen alive.
pub const MODELS: &str = "sy:models";

/// One worker's [`crate::WorkerRecord`], with a TTL refreshed by its heartbeat.
pub fn worker(worker_id: &str) -> String {
    format!("sy:worker:{worker_id}")
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

/// Rate-limit state of one key (and model, for per-model limits): `what` is `req`, `tok` or
/// `conc`; `scope` is the key id, or the key id and model name.
pub fn rate_limit(what: &str, scope: &str) -> String {
    format!("sy:rl:{what}:{scope}")
}

/// Which scheduler replica runs a batch: its instance name, with a TTL the owner keeps renewing.
/// When the owner dies the key lapses and another replica takes the batch over.
pub fn batch_owner(batch_id: &str) -> String {
    format!("sy:batch-owner:{batch_id}")
}
