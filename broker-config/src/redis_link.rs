//! One Redis handle for every part, whatever Redis runs as: [`Redis`], made by
//! [`crate::connect_redis`] from a URL.
//!
//! * `redis://[user:password@]host:port[/db]`: one server, through redis-rs's connection
//!   manager, which reconnects by itself.
//! * `redis+cluster://[user:password@]host:port[,host:port…]`: a Redis Cluster. Any reachable
//!   node is enough to find the others. Commands go to the master of their key's slot and follow
//!   `MOVED`/`ASK` redirections and failovers; every pipeline and script Switchyard sends keeps
//!   to one slot (`switchyard_schemas::keys` says how).
//! * `redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]`: the master that the
//!   Sentinels name for `service` (port 26379 when left out). The credentials are the Redis
//!   servers'; the Sentinels are asked without any. A command that finds the master gone or
//!   read-only (a demoted master) asks the Sentinels again and is sent once more to the master
//!   they name; it fails only while they name none that answers (between a master's death and
//!   the promotion of its replica).
//!
//! [`Redis`] is a [`redis::aio::ConnectionLike`]: commands, pipelines and scripts run on it as on
//! any redis-rs connection, and cloning it is cheap (clones share the connection).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// How long connecting and each answer may take before the command fails.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to Redis, a Redis Cluster or a Sentinel-watched master (see the module docs).
#[derive(Clone)]
pub struct Redis(Link);

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelLink>),
}

impl Redis {
    /// Connects to what `url` names, without checking that the server answers
    /// ([`crate::connect_redis`] pings).
    pub(crate) async fn open(url: &str) -> RedisResult<Redis> {
        Ok(Redis(match Target::parse(url)? {
            Target::Single => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(1);
                Link::Single(ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?)
            }
            Target::Cluster { nodes, credentials } => {
                let urls = nodes.iter().map(|(host, port)| format!("redis://{host}:{port}"));
                let mut builder =
                    redis::cluster::ClusterClient::builder(urls).connection_timeout(TIMEOUT).response_timeout(TIMEOUT).retries(3);
                if let Some(Credentials { user, password }) = credentials {
                    builder = builder.password(password);
                    if let Some(user) = user {
                        builder = builder.username(user);
                    }
                }
                Link::Cluster(builder.build()?.get_async_connection().await?)
            }
            Target::Sentinel { sentinels, service, db, credentials } => {
                let addresses = sentinels.into_iter().map(|(host, port)| ConnectionAddr::Tcp(host, port));
                let mut builder = SentinelClientBuilder::new(addresses, service, SentinelServerType::Master)?.set_client_to_redis_db(db);
                if let Some(Credentials { user, password }) = credentials {
                    builder = builder.set_client_to_redis_password(password);
                    if let Some(user) = user {
                        builder = builder.set_client_to_redis_username(user);
                    }
                }
                let link = SentinelLink { client: tokio::sync::Mutex::new(builder.build()?), current: Mutex::new(None) };
                link.connection().await?;
                Link::Sentinel(Arc::new(link))
            }
        }))
    }

    fn kind(&self) -> &'static str {
        match self.0 {
            Link::Single(_) => "one server",
            Link::Cluster(_) => "a Redis Cluster",
            Link::Sentinel(_) => "a master under Sentinel",
        }
    }

    /// Whether this is a Redis Cluster, where one pipeline must keep to one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Link::Cluster(_))
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis({})", self.kind())
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Link::Single(manager) => manager.req_packed_command(cmd),
            Link::Cluster(cluster) => cluster.req_packed_command(cmd),
            Link::Sentinel(link) => {
                let link = link.clone();
                Box::pin(async move { link.run(|mut connection| Box::pin(async move { connection.req_packed_command(cmd).await })).await })
            }
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Link::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(link) => {
                let link = link.clone();
                Box::pin(async move {
                    link.run(|mut connection| Box::pin(async move { connection.req_packed_commands(pipeline, offset, count).await })).await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Link::Single(manager) => manager.get_db(),
            Link::Cluster(cluster) => cluster.get_db(),
            Link::Sentinel(link) => link.current.lock().unwrap().as_ref().map_or(0, |(_, connection)| connection.get_db()),
        }
    }
}

/// The master the Sentinels named last, and how to ask them again.
struct SentinelLink {
    /// Held while asking the Sentinels, so that one caller asks and the others wait for its answer.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the current master, numbered so that a failure reported late does not
    /// drop a newer connection.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
}

impl SentinelLink {
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current.lock().unwrap().clone() {
            return Ok(current);
        }
        let mut client = self.client.lock().await;
        if let Some(current) = self.current.lock().unwrap().clone() {
            return Ok(current);
        }
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
        // Asks the Sentinels for the master, and the master whether it is one.
        let connection = client.get_async_connection_with_config(&config).await?;
        let mut current = self.current.lock().unwrap();
        let generation = current.as_ref().map_or(0, |(generation, _)| generation + 1);
        *current = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Sends with `send` to the master, and once more to the master the Sentinels name next if
    /// the first one is gone or demoted. A command is thus sent twice only when the master it
    /// first reached dies or stops taking writes: what a dead master ran and had not passed to
    /// its replica is lost with it, and a demoted one ran nothing. (Every command Switchyard
    /// sends is harmless to repeat at worst: a rate-limit charge or refund counted twice.)
    async fn run<'a, T>(&self, send: impl Fn(MultiplexedConnection) -> RedisFuture<'a, T>) -> RedisResult<T> {
        let (generation, connection) = self.connection().await?;
        match self.check(generation, send(connection).await) {
            // A master that is only slow is not asked twice.
            Err(error) if master_lost(&error) && !error.is_timeout() => {
                let (generation, connection) = self.connection().await?;
                self.check(generation, send(connection).await)
            }
            answer => answer,
        }
    }

    /// Passes `answer` on; first forgets the master when the answer says it is no longer one.
    fn check<T>(&self, generation: u64, answer: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &answer
            && master_lost(error)
        {
            let mut current = self.current.lock().unwrap();
            if current.as_ref().is_some_and(|(current, _)| *current == generation) {
                tracing::warn!(%error, "lost the Redis master; asking the Sentinels again at the next command");
                *current = None;
            }
        }
        answer
    }
}

/// Whether `error` means the master is gone or demoted (as opposed to a bad command).
fn master_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    user: Option<String>,
    password: String,
}

/// What a Redis URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `redis://…`, `rediss://…`, `unix://…`: redis-rs reads it.
    Single,
    Cluster {
        nodes: Vec<(String, u16)>,
        credentials: Option<Credentials>,
    },
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
        db: i64,
        credentials: Option<Credentials>,
    },
}

impl Target {
    fn parse(url: &str) -> RedisResult<Target> {
        let invalid = |why: &str| RedisError::from((ErrorKind::InvalidClientConfig, "invalid Redis URL", why.to_string()));
        let Some((scheme, rest)) = url.split_once("://") else { return Ok(Target::Single) };
        let default_port = match scheme {
            "redis+cluster" => 6379,
            "redis+sentinel" => 26379,
            _ => return Ok(Target::Single),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            None => (None, authority),
            Some((userinfo, hosts)) => {
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8()
                        .map(|text| text.into_owned())
                        .map_err(|_| invalid("its credentials are not UTF-8 once percent-decoded"))
                };
                let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
                let user = (!user.is_empty()).then(|| decode(user)).transpose()?;
                (Some(Credentials { user, password: decode(password)? }), hosts)
            }
        };
        let nodes = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| match host.rsplit_once(':') {
                Some((name, port)) => port.parse().map(|port| (name.to_string(), port)).map_err(|_| invalid("a port is not a number")),
                None => Ok((host.to_string(), default_port)),
            })
            .collect::<RedisResult<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(invalid("it names no server"));
        }
        if scheme == "redis+cluster" {
            if !path.is_empty() {
                return Err(invalid("a Redis Cluster has only database 0: leave the path out"));
            }
            return Ok(Target::Cluster { nodes, credentials });
        }
        let mut path = path.split('/').filter(|part| !part.is_empty());
        let service =
            path.next().ok_or_else(|| invalid("name the master's service after the Sentinels: redis+sentinel://host:26379/mymaster"))?;
        let db = path.next().map(|db| db.parse().map_err(|_| invalid("the database is not a number"))).transpose()?.unwrap_or(0);
        Ok(Target::Sentinel { sentinels: nodes, service: service.to_string(), db, credentials })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(&str, u16)]) -> Vec<(String, u16)> {
        list.iter().map(|(host, port)| (host.to_string(), *port)).collect()
    }

    #[test]
    fn plain_urls_are_left_to_redis_rs() {
        for url in ["redis://127.0.0.1:6379", "redis://user:pw@host/2", "rediss://host", "unix:///tmp/redis.sock", "host:6379"] {
            assert_eq!(Target::parse(url).unwrap(), Target::Single, "{url}");
        }
    }

    #[test]
    fn cluster_urls_list_their_nodes() {
        assert_eq!(
            Target::parse("redis+cluster://a:7000,b:7001, c").unwrap(),
            Target::Cluster { nodes: hosts(&[("a", 7000), ("b", 7001), ("c", 6379)]), credentials: None }
        );
        assert_eq!(
            Target::parse("redis+cluster://api:p%40ss@a:7000,b:7001").unwrap(),
            Target::Cluster {
                nodes: hosts(&[("a", 7000), ("b", 7001)]),
                credentials: Some(Credentials { user: Some("api".into()), password: "p@ss".into() })
            }
        );
        assert!(Target::parse("redis+cluster://a:7000/1").is_err());
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("redis+cluster://a:port").is_err());
    }

    #[test]
    fn sentinel_urls_name_the_service_and_database() {
        assert_eq!(
            Target::parse("redis+sentinel://:secret@s1,s2:26380/mymaster/3").unwrap(),
            Target::Sentinel {
                sentinels: hosts(&[("s1", 26379), ("s2", 26380)]),
                service: "mymaster".into(),
                db: 3,
                credentials: Some(Credentials { user: None, password: "secret".into() })
            }
        );
        assert_eq!(
            Target::parse("redis+sentinel://s1:26379/mymaster").unwrap(),
            Target::Sentinel { sentinels: hosts(&[("s1", 26379)]), service: "mymaster".into(), db: 0, credentials: None }
        );
        assert!(Target::parse("redis+sentinel://s1:26379").unwrap_err().to_string().contains("mymaster"));
        assert!(Target::parse("redis+sentinel://s1/mymaster/x").is_err());
    }
}
