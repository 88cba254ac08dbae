//! Redis as a test runs it: one `redis-server`, a three-master Redis Cluster, or a master and
//! a replica watched by three Sentinels — every one a real server on free ports.
//!
//! [`RedisMode::from_env`] reads `SWITCHYARD_TEST_REDIS` (`single`, `cluster`, `sentinel`), so
//! any test file runs unchanged on a Redis Cluster or under Sentinel:
//! `SWITCHYARD_TEST_REDIS=cluster cargo test -p switchyard-tests --test policy`.
//! The secured configuration (`broker-config/secure/`) always runs on one server. The cluster
//! nodes and the Sentinels run from `broker-config/redis-ha/`'s files, only ports, directories
//! and timeouts changed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Dir, LogList, PORT_ATTEMPTS, Proc, free_port, redis_server_bin, tail, wait_for_port, workspace_root};

/// How the harness runs Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    #[default]
    Single,
    /// Three masters, no replicas, every slot assigned (`redis-cli --cluster create`).
    Cluster,
    /// A master and one replica, three Sentinels with a quorum of two (failover after 1 s down).
    Sentinel,
}

impl RedisMode {
    /// `SWITCHYARD_TEST_REDIS`, or [`RedisMode::Single`].
    pub fn from_env() -> RedisMode {
        match std::env::var("SWITCHYARD_TEST_REDIS").as_deref() {
            Err(_) | Ok("") | Ok("single") => RedisMode::Single,
            Ok("cluster") => RedisMode::Cluster,
            Ok("sentinel") => RedisMode::Sentinel,
            Ok(other) => panic!("SWITCHYARD_TEST_REDIS={other}: expected single, cluster or sentinel"),
        }
    }
}

/// Name of the master the Sentinels watch (`broker-config/redis-ha/sentinel.conf`).
pub const SENTINEL_SERVICE: &str = "sy-master";

/// The running Redis servers of one test.
pub struct RedisServers {
    mode: RedisMode,
    /// Data servers: the one server; the cluster's masters; the Sentinel setup's first master, then its replica.
    nodes: Vec<(Proc, u16)>,
    sentinels: Vec<(Proc, u16)>,
}

impl RedisServers {
    pub(crate) async fn start(mode: RedisMode, dir: &Arc<Dir>, logs: &LogList) -> RedisServers {
        match mode {
            RedisMode::Single => RedisServers::single(start_node(dir, logs, "redis-server", None, &[]).await),
            RedisMode::Cluster => start_cluster(dir, logs).await,
            RedisMode::Sentinel => start_sentinel(dir, logs).await,
        }
    }

    /// One server started elsewhere (the secured configuration's).
    pub(crate) fn single(server: (Proc, u16)) -> RedisServers {
        RedisServers { mode: RedisMode::Single, nodes: vec![server], sentinels: Vec::new() }
    }

    /// The URL the Switchyard parts take (`redis://`, `redis+cluster://`, `redis+sentinel://`).
    pub fn url(&self) -> String {
        let list = |servers: &[(Proc, u16)]| servers.iter().map(|(_, port)| format!("127.0.0.1:{port}")).collect::<Vec<_>>().join(",");
        match self.mode {
            RedisMode::Single => format!("redis://127.0.0.1:{}", self.nodes[0].1),
            RedisMode::Cluster => format!("redis+cluster://{}", list(&self.nodes)),
            RedisMode::Sentinel => format!("redis+sentinel://{}/{SENTINEL_SERVICE}", list(&self.sentinels)),
        }
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// `redis://` URLs of each data server (for per-server statistics).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, port)| format!("redis://127.0.0.1:{port}")).collect()
    }

    /// The data servers' processes (the one server, the cluster's masters, master and replica).
    pub fn nodes(&self) -> impl Iterator<Item = &Proc> {
        self.nodes.iter().map(|(proc, _)| proc)
    }

    /// The data server the Sentinels name master now, and its port.
    pub async fn sentinel_master(&self) -> Option<(&Proc, u16)> {
        let (_, sentinel) = self.sentinels.first()?;
        let reply = redis_cli(*sentinel, &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE]).ok()?;
        let port: u16 = reply.lines().nth(1)?.trim().parse().ok()?;
        self.nodes.iter().find(|(_, p)| *p == port).map(|(proc, port)| (proc, *port))
    }
}

/// Starts one data server (with its configuration file, if any, and `extra` arguments) on a
/// free port, retrying when the port was taken.
pub(crate) async fn start_node(dir: &Arc<Dir>, logs: &LogList, name: &str, config: Option<&Path>, extra: &[String]) -> (Proc, u16) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        let data = dir.path().join(format!("{name}-{attempt}"));
        std::fs::create_dir_all(&data).expect("redis data dir");
        let mut command = Command::new(redis_server_bin());
        command.args(config);
        command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).args(extra);
        command.arg("--dir").arg(&data);
        let proc = Proc::spawn(&format!("{name}-{attempt}"), command, dir, logs);
        if wait_for_port(&proc, port, answers_ping).await {
            return (proc, port);
        }
    }
    panic!("{name} did not start after {PORT_ATTEMPTS} attempts");
}

fn answers_ping(mut stream: std::net::TcpStream) -> bool {
    // A secured server answers an unauthenticated PING with -NOAUTH: up all the same.
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
}

/// Runs `redis-cli -p port args…`; its output, or why it failed.
fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let output =
        Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() { Ok(text) } else { Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr))) }
}

async fn start_cluster(dir: &Arc<Dir>, logs: &LogList) -> RedisServers {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        // The cluster bus gets a free port of its own (the default, port + 10000, may be taken).
        let extra: Vec<String> =
            ["--cluster-port", &free_port().to_string(), "--cluster-node-timeout", "2000"].into_iter().map(String::from).collect();
        nodes.push(start_node(dir, logs, &format!("redis-cluster-{i}"), Some(&ha_config("cluster-node.conf")), &extra).await);
    }
    let addresses: Vec<String> = nodes.iter().map(|(_, port)| format!("127.0.0.1:{port}")).collect();
    let mut create: Vec<&str> = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    if let Err(e) = redis_cli(nodes[0].1, &create) {
        panic!("redis-cli --cluster create failed: {e}");
    }
    // Every node must see every slot assigned before a client can use it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (proc, port) in &nodes {
        while !redis_cli(*port, &["CLUSTER", "INFO"]).is_ok_and(|info| info.contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the Redis Cluster never became ready:\n{}", tail(&proc.log(), 30));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    RedisServers { mode: RedisMode::Cluster, nodes, sentinels: Vec::new() }
}

async fn start_sentinel(dir: &Arc<Dir>, logs: &LogList) -> RedisServers {
    let master = start_node(dir, logs, "redis-master", None, &[]).await;
    let replica_of = ["--replicaof".to_string(), "127.0.0.1".to_string(), master.1.to_string()];
    let replica = start_node(dir, logs, "redis-replica", None, &replica_of).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis_cli(replica.1, &["INFO", "replication"]).is_ok_and(|info| info.contains("master_link_status:up")) {
        assert!(Instant::now() < deadline, "the replica never synced:\n{}", tail(&replica.0.log(), 30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sentinels = Vec::new();
    for i in 1..=3 {
        sentinels.push(start_sentinel_process(dir, logs, i, master.1).await);
    }
    // Ready once every Sentinel knows the replica and the other Sentinels.
    for (proc, port) in &sentinels {
        while !redis_cli(*port, &["SENTINEL", "master", SENTINEL_SERVICE])
            .is_ok_and(|info| sentinel_field(&info, "num-slaves") == Some(1) && sentinel_field(&info, "num-other-sentinels") == Some(2))
        {
            assert!(Instant::now() < deadline, "the Sentinels never saw each other:\n{}", tail(&proc.log(), 30));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    RedisServers { mode: RedisMode::Sentinel, nodes: vec![master, replica], sentinels }
}

/// A numeric field of `SENTINEL master`'s answer (alternating name and value lines).
fn sentinel_field(info: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = info.lines().map(str::trim).collect();
    lines.windows(2).find(|pair| pair[0] == name).and_then(|pair| pair[1].parse().ok())
}

/// `broker-config/redis-ha/<name>`.
fn ha_config(name: &str) -> PathBuf {
    workspace_root().join("broker-config/redis-ha").join(name)
}

/// `broker-config/redis-ha/sentinel.conf` with this test's ports and a failover after 1 s down.
fn sentinel_config(port: u16, master_port: u16) -> String {
    let template = std::fs::read_to_string(ha_config("sentinel.conf")).expect("reading broker-config/redis-ha/sentinel.conf");
    let monitor = format!("sentinel monitor {SENTINEL_SERVICE} ");
    assert!(template.contains(&monitor), "sentinel.conf watches a master named {SENTINEL_SERVICE}");
    template
        .lines()
        .map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["port", _] => format!("port {port}"),
            ["bind", ..] => "bind 127.0.0.1".to_string(),
            ["sentinel", "monitor", name, _, _, quorum] => format!("sentinel monitor {name} 127.0.0.1 {master_port} {quorum}"),
            ["sentinel", "down-after-milliseconds", name, _] => format!("sentinel down-after-milliseconds {name} 1000"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn start_sentinel_process(dir: &Arc<Dir>, logs: &LogList, i: usize, master_port: u16) -> (Proc, u16) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        // Sentinel rewrites its configuration file: one per process.
        let config = dir.path().join(format!("sentinel-{i}-{attempt}.conf"));
        std::fs::write(&config, sentinel_config(port, master_port)).expect("writing a sentinel config");
        let mut command = Command::new(redis_server_bin());
        command.arg(&config).arg("--sentinel");
        let proc = Proc::spawn(&format!("redis-sentinel-{i}-{attempt}"), command, dir, logs);
        if wait_for_port(&proc, port, answers_ping).await {
            return (proc, port);
        }
    }
    panic!("redis-sentinel {i} did not start after {PORT_ATTEMPTS} attempts");
}
