//! How many copies of each stream, key-value bucket and object store JetStream keeps, and the
//! check at start that the servers can hold them (see `broker-config/cluster/README.md`).
//!
//! The replica count is, in order:
//!
//! 1. `--stream-replicas` / `SWITCHYARD_STREAM_REPLICAS` of the part ([`crate::BrokerAuth`]),
//!    which [`crate::connect_nats`] remembers for the process (a process has one broker);
//! 2. else `SWITCHYARD_STREAM_REPLICAS` in the environment (library users, the tests);
//! 3. else R3, unless JetStream refuses more than one copy as a single server does (`replicas >
//!    1 not supported in non-clustered mode`): then R1, for the rest of the process.
//!
//! Every stream Switchyard creates goes through [`ensure_stream`] (or [`ensure_replicas`] for
//! the streams behind a key-value bucket or an object store): an existing stream with another
//! replica count is changed to this one (JetStream moves a stream from R1 to R3 and back in
//! place, keeping its messages), and a cluster that cannot hold the replicas fails the start
//! with [`BrokerError::Placement`], naming the stream, the replicas asked and what the server
//! said. A cluster that is still forming (no meta leader yet, peers not yet routed) is waited
//! for, up to [`PLACEMENT_WAIT`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::BrokerError;

/// The most replicas JetStream allows.
pub const MAX_REPLICAS: usize = 5;

/// How long a stream that cannot be placed yet is retried before the start fails: a cluster
/// that was just started elects its meta leader and routes its peers within a few seconds, but
/// on a loaded machine a new stream's group may take longer than one 5 s request to answer.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(30);

/// `--stream-replicas` given to this process; 0 when none was.
static ASKED: AtomicUsize = AtomicUsize::new(0);

/// Remembers `--stream-replicas` for every stream this process creates from now on.
pub(crate) fn remember(replicas: Option<usize>) {
    if let Some(replicas) = replicas {
        ASKED.store(replicas, Ordering::Relaxed);
    }
}

/// Where a replica count came from, for log lines and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--stream-replicas` / `SWITCHYARD_STREAM_REPLICAS`.
    Asked,
    /// The server belongs to a cluster.
    Cluster,
    /// A single server.
    SingleServer,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Asked => "asked with --stream-replicas / SWITCHYARD_STREAM_REPLICAS",
            Source::Cluster => "the default unless the server is a single one",
            Source::SingleServer => "the default on a single NATS server",
        })
    }
}

/// What JetStream said of this server: 1 when it refused more than one copy (a single server),
/// 3 once a cluster took three; 0 before either.
static DETECTED: AtomicUsize = AtomicUsize::new(0);

/// The replica count of the streams this process creates, and why (see the module's documentation).
/// Without `--stream-replicas` it is 3 unless the server has shown it is a single one: a server
/// answers INFO before its cluster listener is up, so a missing cluster name proves nothing;
/// JetStream's refusal of R3 (`non-clustered mode`) does, and [`retry_placement`] then moves to 1.
pub fn replicas() -> (usize, Source) {
    let asked = ASKED.load(Ordering::Relaxed);
    if asked > 0 {
        return (asked, Source::Asked);
    }
    if let Some(asked) = std::env::var("SWITCHYARD_STREAM_REPLICAS").ok().and_then(|text| text.trim().parse::<usize>().ok())
        && (1..=MAX_REPLICAS).contains(&asked)
    {
        return (asked, Source::Asked);
    }
    match DETECTED.load(Ordering::Relaxed) {
        1 => (1, Source::SingleServer),
        _ => (3, Source::Cluster),
    }
}

/// Parses `--stream-replicas`: 1 to [`MAX_REPLICAS`].
pub fn parse_replicas(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a replica count: JetStream keeps 1 to {MAX_REPLICAS} copies of a stream")),
    }
}

/// Creates the stream `config` describes with the replica count of [`replicas`], or updates an
/// existing one to it, waiting out a cluster that is still forming; fails with
/// [`BrokerError::Placement`] when the servers cannot hold that many copies.
pub async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Info, BrokerError> {
    let name = config.name.clone();
    let (info, count) = retry_placement(&name, |count| {
        let config = stream::Config { num_replicas: count, ..config.clone() };
        js.create_or_update_stream(config)
    })
    .await?;
    check_peers(&info, count);
    Ok(info)
}

/// Gives the existing stream `name` (the stream of a key-value bucket, `KV_<bucket>`, or of an
/// object store, `OBJ_<bucket>`) the replica count of [`replicas`], keeping the rest of its
/// configuration.
pub async fn ensure_replicas(js: &jetstream::Context, name: &str) -> Result<(), BrokerError> {
    let (config, _) = retry_placement(name, |_| async {
        let mut stream = js.get_stream(name).await?;
        Ok::<_, async_nats::Error>(stream.info().await?.config.clone())
    })
    .await?;
    if config.num_replicas.max(1) == replicas().0 {
        return Ok(());
    }
    let (info, count) = retry_placement(name, |count| {
        let config = stream::Config { num_replicas: count, ..config.clone() };
        js.update_stream(config)
    })
    .await?;
    if count != config.num_replicas.max(1) {
        tracing::info!(stream = name, from = config.num_replicas.max(1), to = count, "changed the stream's replica count");
    }
    check_peers(&info, count);
    Ok(())
}

/// Runs `attempt` with the replica count of [`replicas`] until it succeeds, and returns what it
/// returned and the count. What a forming cluster answers is retried for up to
/// [`PLACEMENT_WAIT`]; a single server's refusal of several copies moves a default count to 1
/// (and fails an asked one at once); any other refusal fails at once.
pub(crate) async fn retry_placement<T, E, F, Fut>(name: &str, mut attempt: F) -> Result<(T, usize), BrokerError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let (count, source) = replicas();
        let error = match attempt(count).await {
            Ok(value) => {
                if count > 1 && source == Source::Cluster {
                    DETECTED.store(count, Ordering::Relaxed);
                }
                return Ok((value, count));
            }
            Err(error) => error_chain(&*error.into()),
        };
        let refusal = Refusal::of(&error);
        if refusal == Refusal::NotClustered && source != Source::Asked {
            tracing::debug!(stream = name, "a single NATS server: streams get one copy");
            DETECTED.store(1, Ordering::Relaxed);
            continue;
        }
        let waited = start.elapsed();
        if refusal == Refusal::Other || waited >= PLACEMENT_WAIT || (refusal == Refusal::NotClustered && count > 1) {
            return Err(match refusal {
                Refusal::Other if !is_placement_text(&error) => {
                    BrokerError::JetStream(format!("creating or updating stream {name} (R{count}): {error}"))
                }
                _ => BrokerError::Placement {
                    stream: name.to_string(),
                    replicas: count,
                    reason: source,
                    server_said: error,
                    waited: if refusal == Refusal::NotClustered { Duration::ZERO } else { waited },
                },
            });
        }
        tracing::debug!(stream = name, replicas = count, "stream not placed yet ({error}); retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// What kind of refusal an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A single server asked for more than one copy: waiting cannot help.
    NotClustered,
    /// Not enough peers (yet), no meta leader (yet), or no answer: worth a retry.
    Transient,
    Other,
}

impl Refusal {
    fn of(error: &str) -> Refusal {
        const NOT_CLUSTERED: u64 = 10074;
        // No peers, cluster not active, not available, not leader, not assigned, insufficient
        // resources (fewer peers than replicas, so far), peer not a member.
        const TRANSIENT: [u64; 7] = [10005, 10006, 10007, 10008, 10009, 10023, 10040];
        match error_code(error) {
            Some(NOT_CLUSTERED) => Refusal::NotClustered,
            Some(code) if TRANSIENT.contains(&code) => Refusal::Transient,
            Some(_) => Refusal::Other,
            // Timeouts and "no responders" while the meta leader is being elected.
            None if ["timed out", "timeout", "no responders", "unavailable"].iter().any(|t| error.to_lowercase().contains(t)) => {
                Refusal::Transient
            }
            None => Refusal::Other,
        }
    }
}

fn is_placement_text(error: &str) -> bool {
    let error = error.to_lowercase();
    ["replicas", "peers", "placement", "insufficient resources"].iter().any(|t| error.contains(t))
}

/// The JetStream error code in an error's text (`… (code 500, error code 10023)`).
fn error_code(text: &str) -> Option<u64> {
    let at = text.rfind("error code ")? + "error code ".len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An error and its sources, `: `-joined, each once.
fn error_chain(error: &(dyn std::error::Error + Send + Sync)) -> String {
    let mut text = error.to_string();
    let mut source: Option<&dyn std::error::Error> = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = inner.source();
    }
    text
}

/// Logs a stream placed on fewer peers than asked, or with peers that are not current.
fn check_peers(info: &stream::Info, count: usize) {
    let Some(cluster) = &info.cluster else { return };
    let placed = cluster.leader.iter().count() + cluster.replicas.len();
    let behind: Vec<&str> = cluster.replicas.iter().filter(|peer| peer.offline || !peer.current).map(|peer| peer.name.as_str()).collect();
    if placed < count {
        tracing::warn!(stream = info.config.name, placed, asked = count, "JetStream placed the stream on fewer peers than asked, so far");
    } else if !behind.is_empty() {
        tracing::info!(stream = info.config.name, ?behind, "stream placed; some of its peers are still catching up");
    } else {
        tracing::debug!(stream = info.config.name, leader = ?cluster.leader, replicas = count, "stream placed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_their_error_codes() {
        assert_eq!(error_code("replicas > 1 not supported in non-clustered mode (code 500, error code 10074)"), Some(10074));
        assert_eq!(Refusal::of("replicas > 1 not supported in non-clustered mode (code 500, error code 10074)"), Refusal::NotClustered);
        assert_eq!(Refusal::of("insufficient resources (code 503, error code 10023)"), Refusal::Transient);
        assert_eq!(Refusal::of("jetstream error: timed out: didn't receive a response"), Refusal::Transient);
        assert_eq!(Refusal::of("stream name already in use (code 400, error code 10058)"), Refusal::Other);
    }

    #[test]
    fn replica_counts_are_one_to_five() {
        assert_eq!(parse_replicas("3"), Ok(3));
        assert!(parse_replicas("0").is_err());
        assert!(parse_replicas("6").is_err());
        assert!(parse_replicas("three").is_err());
    }
}
