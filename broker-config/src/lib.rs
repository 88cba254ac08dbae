//! The broker layout every Switchyard part shares, and the client code that creates and reads it.
//!
//! * [`jobs`]: the JetStream streams (jobs as a work queue, dead letters) and the durable pull
//!   consumer per (kind, model), created or updated idempotently at start.
//! * [`lanes`]: each lane's queue depth, read from its durable consumer.
//! * [`registry`]: worker records and model cards in Redis, with heartbeats and reaping.
//! * [`cancel`]: job cancellation flags in Redis, announced on NATS.
//! * [`apikeys`]: API keys (stored as hashes) and their revocation.
//! * [`ratelimit`]: requests/tokens per minute and concurrency, shared by every api replica.
//! * [`redis_link`]: one Redis handle for a single server, a Redis Cluster or a master
//!   followed through Sentinel.
//! * [`files`]: the bodies and records of `/v1/files` in the JetStream object store.
//! * [`placement`]: how many copies JetStream keeps of each stream (R1 on one server, R3 on a
//!   cluster, `--stream-replicas`), and the check at start that the servers can hold them.
//! * [`auth`]: credentials for a secured broker ([`BrokerAuth`], taken by every part), and
//!   how refusals are reported.
//!
//! The configuration files for the servers themselves sit beside this crate: `nats-server.conf`
//! and `redis.conf` (open, for one machine) and `secure/` (users, passwords and permissions per
//! role). Names of subjects and keys come from `switchyard-schemas`.

pub mod apikeys;
pub mod auth;
pub mod cancel;
pub mod files;
pub mod jobs;
pub mod lanes;
pub mod placement;
pub mod ratelimit;
pub mod redis_link;
pub mod registry;

use std::time::Duration;

pub use auth::{BrokerAuth, redact_url};
pub use redis_link::Redis;

/// Why the broker could not be used. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to NATS at {url}: {source}{hint}")]
    NatsConnect { url: String, source: async_nats::ConnectError, hint: &'static str },
    #[error("the NATS URL {url} cannot be used: {reason}")]
    NatsUrl { url: String, reason: String },
    #[error("NATS credentials file {}: {reason}", .path.display())]
    NatsCredentials { path: std::path::PathBuf, reason: String },
    #[error(
        "JetStream is not available on the NATS server ({0}); start nats-server with JetStream on (`nats-server -js`, or broker-config/nats-server.conf)"
    )]
    JetStreamOff(String),
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    #[error(
        "JetStream cannot keep {replicas} replicas of stream {stream} ({reason}){}: the server said: {server_said}. {}",
        waited_text(*.waited),
        placement_hint(*.replicas)
    )]
    Placement { stream: String, replicas: usize, reason: placement::Source, server_said: String, waited: Duration },
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("cannot connect to Redis at {url}: {source}{hint}")]
    RedisConnect { url: String, source: redis::RedisError, hint: &'static str },
    #[error("Redis request failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Codec(#[from] switchyard_schemas::CodecError),
}

fn waited_text(waited: Duration) -> String {
    if waited.is_zero() { String::new() } else { format!(" after waiting {:.0} s for the cluster", waited.as_secs_f64()) }
}

fn placement_hint(replicas: usize) -> String {
    if replicas > 1 {
        format!(
            "Run at least {replicas} JetStream servers in one cluster (broker-config/cluster/), every one of them up, or ask for \
             fewer with --stream-replicas / SWITCHYARD_STREAM_REPLICAS (1 on a single server)"
        )
    } else {
        "Check the server's JetStream limits (max_file_store) and its log".to_string()
    }
}

/// Connects to NATS with a client name that shows up in `nats-server` monitoring, and the
/// credentials of `url` (`nats://user:password@host`) or `auth` (see [`auth`]). Errors name the
/// server without its password, and say when the credentials were refused.
pub async fn connect_nats(url: &str, name: &str, auth: &BrokerAuth) -> Result<async_nats::Client, BrokerError> {
    let (options, servers) = auth::nats_connect_options(url, name, auth)?;
    connect_nats_with(options, &servers, url).await
}

/// Connects with `options` from [`auth::nats_connect_options`] (perhaps changed by the caller)
/// to `servers`; `url` is what error messages name (redacted).
pub async fn connect_nats_with(
    options: async_nats::ConnectOptions,
    servers: &[String],
    url: &str,
) -> Result<async_nats::Client, BrokerError> {
    let addresses = servers
        .iter()
        .map(|server| server.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BrokerError::NatsUrl { url: redact_url(url), reason: e.to_string() })?;
    options.connect(addresses).await.map_err(|source| BrokerError::NatsConnect {
        url: redact_url(url),
        hint: auth::nats_connect_hint(&source),
        source,
    })
}

/// Returns once the NATS server has processed everything `client` sent before, subscriptions
/// included (`Client::flush` only writes the socket). It sends itself a message on a fresh
/// inbox and waits for it to come back: the server handles a connection's messages in order.
pub async fn sync_with_server(client: &async_nats::Client) -> Result<(), BrokerError> {
    use futures::StreamExt;
    let fail = |e: &dyn std::fmt::Display| BrokerError::Nats(format!("round trip to the server: {e}"));
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.map_err(|e| fail(&e))?;
    client.publish(inbox, Default::default()).await.map_err(|e| fail(&e))?;
    match tokio::time::timeout(Duration::from_secs(5), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(fail(&"the connection closed")),
        Err(_) => Err(fail(&"no answer within 5 s")),
    }
}

/// An id of OpenAI's form (`file-…`, `batch_…`, `job_…`): `prefix` and a UUID v7, so ids
/// sort by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Opens the key-value bucket `bucket`, creating it (file storage, one revision per key, entries
/// kept for `max_age`, zero for ever) when it does not exist. An existing bucket keeps its
/// settings, but gets the replica count of [`placement::replicas`] (an R1 bucket becomes R3 once
/// the parts run on a cluster).
pub async fn key_value(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, BrokerError> {
    use async_nats::jetstream::{kv, stream::StorageType};
    if let Ok(store) = js.get_key_value(bucket).await {
        placement::ensure_replicas(js, &format!("KV_{bucket}")).await?;
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.into(),
        description: description.into(),
        history: 1,
        max_age,
        storage: StorageType::File,
        ..Default::default()
    };
    let name = format!("KV_{bucket}");
    let (store, _) = placement::retry_placement(&name, |replicas| {
        let config = kv::Config { num_replicas: replicas, ..config.clone() };
        async move {
            match js.create_key_value(config).await {
                Ok(store) => Ok(store),
                // Another part created it in between.
                Err(e) => js.get_key_value(bucket).await.map_err(|_| e),
            }
        }
    })
    .await?;
    Ok(store)
}

/// Connects to Redis, a Redis Cluster or a Sentinel-watched master, as `url` says (see
/// [`redis_link`]); the handle reconnects by itself. Credentials go in the URL
/// (`redis://user:password@host:6379`); a PING checks them at once, so a wrong password or a
/// missing one fails here, with a message that says so.
pub async fn connect_redis(url: &str) -> Result<Redis, BrokerError> {
    let fail =
        |source: redis::RedisError| BrokerError::RedisConnect { url: redact_url(url), hint: auth::redis_connect_hint(&source), source };
    let mut redis = Redis::open(url).await.map_err(fail)?;
    redis::cmd("PING").query_async::<()>(&mut redis).await.map_err(fail)?;
    Ok(redis)
}

/// Threads for each process when the whole stack shares one machine (`switchyard dev`, the
/// benchmark). Each part's own default — a thread per core — suits a machine of its own; five
/// processes that each start a thread per core on a small machine spend their time handing work
/// between threads and waking each other (bench/README.md: on 2 cores, one thread each took
/// the echo round trip from 0.58 to 0.41 ms p50 and 64 clients from 18.6k to 21.6k requests/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMachine {
    /// Runtime threads of each Switchyard part (`SWITCHYARD_THREADS`).
    pub part_threads: usize,
    /// Go threads running nats-server code at once (`GOMAXPROCS`).
    pub nats_threads: usize,
}

impl SharedMachine {
    pub fn for_cores(cores: usize) -> Self {
        Self { part_threads: (cores / 4).max(1), nats_threads: (cores / 2).max(1) }
    }

    pub fn this_machine() -> Self {
        Self::for_cores(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The environment for a Switchyard part, unless this process's environment already sets it.
    pub fn part_env(&self) -> Option<(&'static str, String)> {
        unless_set("SWITCHYARD_THREADS", self.part_threads)
    }

    /// The environment for nats-server, unless this process's environment already sets it.
    pub fn nats_env(&self) -> Option<(&'static str, String)> {
        unless_set("GOMAXPROCS", self.nats_threads)
    }
}

fn unless_set(name: &'static str, value: usize) -> Option<(&'static str, String)> {
    std::env::var_os(name).is_none().then(|| (name, value.to_string()))
}

/// Program `name` (nats-server, redis-server) from `setup_bin`, where `scripts/setup.sh`
/// installs what the machine lacks, else from `PATH`.
pub fn find_executable(name: &str, setup_bin: &std::path::Path) -> Option<std::path::PathBuf> {
    let local = setup_bin.join(name);
    if local.exists() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.exists())
}

/// Makes the process `command` starts die (SIGKILL) when the thread that starts it exits, so
/// that parts started by `switchyard dev`, the benchmark or the tests never outlive a parent
/// killed without a chance to stop them (a second Ctrl-C, `kill -9`, a killed test binary).
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: don't outlive it.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The one duration syntax of every part's flags: `250ms`, `2s`, `5m`, `1h`, `30d`, or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (try 500ms, 2s, 5m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(format!("unknown unit in {text:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machines_get_a_thread_per_part() {
        assert_eq!(SharedMachine::for_cores(2), SharedMachine { part_threads: 1, nats_threads: 1 });
        assert_eq!(SharedMachine::for_cores(16), SharedMachine { part_threads: 4, nats_threads: 8 });
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
