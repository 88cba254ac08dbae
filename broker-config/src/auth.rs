//! Credentials for a secured broker (`broker-config/secure/`): how every part authenticates to
//! NATS and Redis, and how it learns, in words, that the broker refused something.
//!
//! * NATS user and password go in the URL: `nats://api:secret@host:4222` (percent-encode
//!   characters a URL cannot hold), a token as `nats://token@host:4222`. async-nats itself
//!   ignores credentials in a URL, so [`nats_connect_options`] reads them out and hands them
//!   over, and keeps them out of every log line and error ([`redact_url`]).
//! * Or `--nats-creds FILE` / `SWITCHYARD_NATS_CREDS` ([`BrokerAuth`]): a `.creds` file (a user
//!   JWT and its nkey seed, as `nsc` writes them) or a file holding an nkey user seed (`SU…`, as
//!   `nk -gen user` writes it), matching `nkey:` users in the server's configuration.
//! * `--nats-inbox-prefix` / `SWITCHYARD_NATS_INBOX_PREFIX`: where the answers to this
//!   connection's requests arrive (JetStream API replies, publish acknowledgements, pulled
//!   jobs). The secured configuration gives each role its own prefix, so no role reads another's
//!   answers; the default `_INBOX` is for an open broker.
//! * Redis: `redis://user:password@host:6379` (an ACL user), `redis://:password@host:6379`
//!   (`requirepass`). [`crate::connect_redis`] pings at once, so a wrong password fails at start
//!   with a message naming it, not at the first request.
//!
//! A NATS permission violation is not an answer to the operation that caused it: the server
//! drops the message (or the subscription) and sends `-ERR 'Permissions Violation for …'` on
//! the connection. Every connection made here logs those as errors naming the subject, so a
//! part whose role lacks a permission says so in its log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr, ServerError};

use crate::BrokerError;

/// Broker credentials every part takes (flattened into each part's options). Redis credentials
/// and NATS user/password go in the URLs; this holds what does not fit in a URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BrokerAuth {
    /// NATS credentials file: a `.creds` file (user JWT and nkey seed, from `nsc`) or a file
    /// holding an nkey user seed (`SU…`, from `nk -gen user`). A user and password go in the
    /// NATS URL instead: `nats://user:password@host:4222`.
    #[arg(long, env = "SWITCHYARD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Prefix of this connection's reply inboxes (JetStream answers, publish acks). The secured
    /// broker configuration lets each role subscribe only to its own (`_INBOX_api`,
    /// `_INBOX_worker`, `_INBOX_scheduler`, `_INBOX_<publisher>`). Default: `_INBOX`.
    #[arg(long, env = "SWITCHYARD_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
    /// Copies JetStream keeps of each stream, key-value bucket and object store this part
    /// creates or opens (1 to 5; an existing one is changed to this). Default: 3 when the NATS
    /// server belongs to a cluster, 1 on a single server (see broker-config/cluster/README.md).
    #[arg(long, env = "SWITCHYARD_STREAM_REPLICAS", value_parser = crate::placement::parse_replicas)]
    pub stream_replicas: Option<usize>,
}

/// What the NATS URL says: the servers (credentials removed), and the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NatsUrl {
    servers: Vec<String>,
    credentials: Option<UrlCredentials>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

fn parse_nats_url(url: &str) -> Result<NatsUrl, BrokerError> {
    let mut servers = Vec::new();
    let mut credentials = None;
    for part in url.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let text = if part.contains("://") { part.to_string() } else { format!("nats://{part}") };
        let invalid = |reason: String| BrokerError::NatsUrl { url: redact_url(url), reason };
        let mut parsed = url::Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| invalid("its credentials are not UTF-8 once percent-decoded".into()))
        };
        let found = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            (user, Some(password)) => Some(UrlCredentials::UserPassword(decode(user)?, decode(password)?)),
            (token, None) => Some(UrlCredentials::Token(decode(token)?)),
        };
        if let Some(found) = found {
            if credentials.as_ref().is_some_and(|seen| *seen != found) {
                return Err(invalid("its servers carry different credentials; one connection has one identity".into()));
            }
            credentials = Some(found);
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        // async-nats' own parser is the judge of what it can connect to.
        parsed.as_str().parse::<ServerAddr>().map_err(|e| invalid(e.to_string()))?;
        servers.push(parsed.to_string());
    }
    if servers.is_empty() {
        return Err(BrokerError::NatsUrl { url: url.to_string(), reason: "it names no server".into() });
    }
    Ok(NatsUrl { servers, credentials })
}

/// `url` (NATS or Redis, or a comma-separated list of NATS URLs) with any password or token
/// replaced by `***`: what error messages and logs may show.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let trimmed = part.trim();
            match url::Url::parse(trimmed) {
                Ok(mut parsed) if parsed.password().is_some() => {
                    let _ = parsed.set_password(Some("***"));
                    parsed.to_string()
                }
                // `nats://token@host`: the user name is the secret.
                Ok(mut parsed) if !parsed.username().is_empty() && parsed.scheme().starts_with("nats") => {
                    let _ = parsed.set_username("***");
                    parsed.to_string()
                }
                Ok(_) => trimmed.to_string(),
                // Unparseable: keep what cannot be a secret.
                Err(_) => match trimmed.rsplit_once('@') {
                    Some((_, host)) => format!("***@{host}"),
                    None => trimmed.to_string(),
                },
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `.creds` file or an nkey seed file into `options`.
fn with_credentials_file(options: ConnectOptions, path: &Path) -> Result<ConnectOptions, BrokerError> {
    let fail = |reason: String| BrokerError::NatsCredentials { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if text.contains("BEGIN NATS USER JWT") {
        return options.credentials(&text).map_err(|e| fail(format!("not a valid .creds file: {e}")));
    }
    let Some(seed) = text.lines().map(str::trim).find(|line| line.starts_with("SU")) else {
        return Err(fail("it holds neither a NATS user JWT (a .creds file) nor an nkey user seed (a line starting with SU)".into()));
    };
    nkeys::KeyPair::from_seed(seed).map_err(|e| fail(format!("its nkey seed is not valid: {e}")))?;
    Ok(options.nkey(seed.to_string()))
}

/// The connect options and servers of a Switchyard connection: client name, timeouts and
/// buffers, the credentials from `url` and `auth`, the inbox prefix, and an event callback that
/// logs what the server refuses. A caller that wants the events itself (a test watching for
/// permission violations) may replace the callback before connecting.
pub fn nats_connect_options(url: &str, name: &str, auth: &BrokerAuth) -> Result<(ConnectOptions, Vec<String>), BrokerError> {
    let parsed = parse_nats_url(url)?;
    crate::placement::remember(auth.stream_replicas);
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // Several servers (`nats://a:4222,nats://b:4222`, and those a cluster advertises): the
        // first connect tries each once and fails with a clear error if none answers; after
        // that the client reconnects for ever, to whichever node is up, quickly at first.
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        // Events are small and frequent; keep the client's outgoing buffer deep.
        .client_capacity(65_536)
        .subscription_capacity(65_536);
    match (&parsed.credentials, &auth.nats_creds) {
        (Some(_), Some(path)) => {
            return Err(BrokerError::NatsCredentials {
                path: path.clone(),
                reason: format!("the NATS URL {} carries credentials too; give one or the other", redact_url(url)),
            });
        }
        (Some(UrlCredentials::UserPassword(user, password)), None) => options = options.user_and_password(user.clone(), password.clone()),
        (Some(UrlCredentials::Token(token)), None) => options = options.token(token.clone()),
        (None, Some(path)) => options = with_credentials_file(options, path)?,
        (None, None) => {}
    }
    if let Some(prefix) = auth.nats_inbox_prefix.as_deref() {
        if prefix.is_empty() || prefix.contains(['*', '>', ' ']) || prefix.starts_with('.') || prefix.ends_with('.') {
            return Err(BrokerError::NatsUrl {
                url: redact_url(url),
                reason: format!("--nats-inbox-prefix {prefix:?} is not a subject prefix (no wildcards, spaces or outer dots)"),
            });
        }
        options = options.custom_inbox_prefix(prefix);
    }
    let connection = name.to_string();
    let options = options.event_callback(move |event| {
        let connection = connection.clone();
        async move { log_event(&connection, event) }
    });
    Ok((options, parsed.servers))
}

/// The pause before reconnect attempt `attempts` (counted across servers since the last
/// success): none for the first two, so a client whose node died moves to another at once, then
/// doubling from 50 ms to at most 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0..=2 => Duration::ZERO,
        n => Duration::from_millis(50u64.saturating_mul(1 << (n - 3).min(6))).min(Duration::from_secs(2)),
    }
}

/// Whether a server error is a permission violation (`Permissions Violation for Publish to …`).
pub fn is_permission_violation(error: &ServerError) -> bool {
    matches!(error, ServerError::Other(text) if text.to_ascii_lowercase().contains("permissions violation"))
}

fn log_event(connection: &str, event: Event) {
    match event {
        Event::ServerError(error) if is_permission_violation(&error) => tracing::error!(
            connection,
            "NATS refused this connection an operation: {error}. The broker's configuration does not grant this role that \
             subject (see broker-config/secure/); the message was dropped or the subscription receives nothing"
        ),
        Event::ServerError(ServerError::AuthorizationViolation) => tracing::error!(
            connection,
            "NATS refused this connection's credentials (authorization violation): check the user and password in the NATS \
             URL, or --nats-creds / SWITCHYARD_NATS_CREDS"
        ),
        Event::ServerError(error) => tracing::warn!(connection, "NATS server error: {error}"),
        Event::ClientError(error) => tracing::warn!(connection, "NATS client error: {error}"),
        Event::SlowConsumer(sid) => tracing::warn!(connection, sid, "NATS: a subscription fell behind and lost messages"),
        Event::Disconnected => tracing::warn!(connection, "disconnected from NATS; reconnecting"),
        Event::Connected => tracing::info!(connection, "connected to NATS"),
        Event::LameDuckMode => tracing::warn!(connection, "the NATS server is shutting down (lame duck mode)"),
        Event::Draining | Event::Closed => tracing::debug!(connection, %event, "NATS connection"),
    }
}

/// The message to add to a failed connection's error: what to check.
pub(crate) fn nats_connect_hint(error: &async_nats::ConnectError) -> &'static str {
    use async_nats::ConnectErrorKind;
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            " — the server refused these credentials: check the user and password in the NATS URL (nats://user:password@host:4222), \
             or the file given with --nats-creds / SWITCHYARD_NATS_CREDS"
        }
        _ => "",
    }
}

/// The message to add to a failed Redis connection's error.
pub(crate) fn redis_connect_hint(error: &redis::RedisError) -> &'static str {
    let code = error.code().unwrap_or_default();
    if error.kind() == redis::ErrorKind::AuthenticationFailed || ["WRONGPASS", "NOAUTH"].contains(&code) {
        " — Redis refused these credentials: put the ACL user and password in the Redis URL (redis://user:password@host:6379)"
    } else if code == "NOPERM" {
        " — this Redis user may not run PING: give it +ping in the ACL file (broker-config/secure/redis-users.sh)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_password_come_out_of_the_url_decoded() {
        let parsed = parse_nats_url("nats://api:p%40ss%3Aw0rd@127.0.0.1:4222").unwrap();
        assert_eq!(parsed.credentials, Some(UrlCredentials::UserPassword("api".into(), "p@ss:w0rd".into())));
        assert_eq!(parsed.servers, vec!["nats://127.0.0.1:4222".to_string()]);
    }

    #[test]
    fn a_user_without_password_is_a_token_and_plain_hosts_need_no_scheme() {
        let parsed = parse_nats_url("s3cret@nats-1:4222, nats://s3cret@nats-2:4222").unwrap();
        assert_eq!(parsed.credentials, Some(UrlCredentials::Token("s3cret".into())));
        assert_eq!(parsed.servers, vec!["nats://nats-1:4222".to_string(), "nats://nats-2:4222".to_string()]);
        assert_eq!(parse_nats_url("127.0.0.1:4222").unwrap().credentials, None);
    }

    #[test]
    fn servers_with_different_credentials_are_refused() {
        let error = parse_nats_url("nats://a:x@h1:4222,nats://b:y@h2:4222").unwrap_err().to_string();
        assert!(error.contains("different credentials"), "{error}");
        assert!(!error.contains(":x@") && !error.contains(":y@"), "passwords leak into {error}");
    }

    #[test]
    fn redacted_urls_keep_the_user_and_hide_the_secret() {
        assert_eq!(redact_url("nats://api:secret@127.0.0.1:4222"), "nats://api:***@127.0.0.1:4222");
        assert_eq!(redact_url("redis://worker:secret@redis:6379"), "redis://worker:***@redis:6379");
        assert_eq!(redact_url("redis://:secret@redis:6379/0"), "redis://:***@redis:6379/0");
        assert_eq!(redact_url("nats://tok@h:1,nats://h2:2"), "nats://***@h:1,nats://h2:2");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn credentials_files_are_read_as_creds_or_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let seed_file = dir.path().join("worker.nk");
        std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
        let auth = BrokerAuth { nats_creds: Some(seed_file), nats_inbox_prefix: None, ..Default::default() };
        assert!(nats_connect_options("nats://127.0.0.1:4222", "t", &auth).is_ok());

        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello").unwrap();
        let auth = BrokerAuth { nats_creds: Some(junk), nats_inbox_prefix: None, ..Default::default() };
        let error = nats_connect_options("nats://127.0.0.1:4222", "t", &auth).unwrap_err().to_string();
        assert!(error.contains("neither a NATS user JWT") && error.contains("junk"), "{error}");

        let missing = BrokerAuth { nats_creds: Some(dir.path().join("missing.creds")), nats_inbox_prefix: None, ..Default::default() };
        let error = nats_connect_options("nats://127.0.0.1:4222", "t", &missing).unwrap_err().to_string();
        assert!(error.contains("cannot read it") && error.contains("missing.creds"), "{error}");
    }

    #[test]
    fn credentials_in_url_and_file_at_once_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let seed_file = dir.path().join("seed");
        std::fs::write(&seed_file, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
        let auth = BrokerAuth { nats_creds: Some(seed_file), nats_inbox_prefix: None, ..Default::default() };
        let error = nats_connect_options("nats://u:secret@127.0.0.1:4222", "t", &auth).unwrap_err().to_string();
        assert!(error.contains("one or the other") && !error.contains("secret"), "{error}");
    }

    #[test]
    fn inbox_prefixes_must_be_subject_prefixes() {
        for bad in ["", "_INBOX.>", "a b", "x."] {
            let auth = BrokerAuth { nats_creds: None, nats_inbox_prefix: Some(bad.into()), ..Default::default() };
            assert!(nats_connect_options("nats://127.0.0.1:4222", "t", &auth).is_err(), "{bad:?} accepted");
        }
        let auth = BrokerAuth { nats_creds: None, nats_inbox_prefix: Some("_INBOX_orders".into()), ..Default::default() };
        assert!(nats_connect_options("nats://127.0.0.1:4222", "t", &auth).is_ok());
    }

    #[test]
    fn reconnects_start_at_once_and_back_off_to_two_seconds() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::ZERO);
        assert_eq!(reconnect_delay(3), Duration::from_millis(50));
        assert_eq!(reconnect_delay(4), Duration::from_millis(100));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }

    #[test]
    fn permission_violations_are_recognised() {
        assert!(is_permission_violation(&ServerError::Other("permissions violation for publish to \"sy.job.x\"".into())));
        assert!(!is_permission_violation(&ServerError::Other("maximum payload exceeded".into())));
    }
}
