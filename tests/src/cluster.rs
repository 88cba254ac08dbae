//! A three-node nats-server cluster (JetStream on every node, routes between them) on free
//! ports, run from `broker-config/cluster/node-N.conf`, and a Switchyard stack on it
//! ([`ClusterStack`]): redis-server, `switchyard api` and `switchyard scheduler` given all three
//! NATS URLs, and workers. Nodes can be SIGKILLed and restarted on their ports and data
//! folders, as a machine that dies and comes back.
//!
//! The node files are run as they are but for two lines: the copy each node reads (in the
//! test's folder, beside `common.conf`) names its own JetStream folder, and the ports come from
//! the command line (`-p`, `-m`, `--cluster`, `--routes`), which takes precedence.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    Connection, Dir, LogList, Proc, StackOptions, StartGuard, eventually, http_client, nats_server_bin, print_logs, start_api, start_redis,
    start_scheduler, switchyard_bin, switchyard_command, tail, wait_for_port, workspace_root,
};

/// The nodes of a cluster.
pub const NODES: usize = 3;

/// `broker-config/cluster/<name>`.
pub fn cluster_config(name: &str) -> PathBuf {
    workspace_root().join("broker-config/cluster").join(name)
}

struct Node {
    /// `switchyard-<n>`, as `server_name` in its file.
    name: String,
    config: PathBuf,
    client_port: u16,
    route_port: u16,
    monitor_port: u16,
    proc: Mutex<Option<Arc<Proc>>>,
    starts: Mutex<u32>,
}

/// Three nats-server processes in one cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: Arc<Dir>,
    logs: LogList,
}

impl NatsCluster {
    async fn start(dir: &Arc<Dir>, logs: &LogList) -> NatsCluster {
        let common = std::fs::read_to_string(cluster_config("common.conf")).expect("reading broker-config/cluster/common.conf");
        std::fs::write(dir.path().join("common.conf"), common).expect("copying common.conf");
        // Ports held open together so that they differ.
        let listeners: Vec<std::net::TcpListener> =
            (0..3 * NODES).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let nodes = (0..NODES)
            .map(|i| {
                let n = i + 1;
                let text =
                    std::fs::read_to_string(cluster_config(&format!("node-{n}.conf"))).expect("reading broker-config/cluster/node-N.conf");
                let store = dir.path().join(format!("nats-node-{n}"));
                let text = text
                    .lines()
                    .map(|line| {
                        if line.trim_start().starts_with("store_dir:") {
                            format!("  store_dir: \"{}\"", store.display())
                        } else {
                            line.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                let config = dir.path().join(format!("node-{n}.conf"));
                std::fs::write(&config, text).expect("writing a node's configuration");
                Node {
                    name: format!("switchyard-{n}"),
                    config,
                    client_port: ports[3 * i],
                    route_port: ports[3 * i + 1],
                    monitor_port: ports[3 * i + 2],
                    proc: Mutex::new(None),
                    starts: Mutex::new(0),
                }
            })
            .collect();
        let cluster = NatsCluster { nodes, dir: dir.clone(), logs: logs.clone() };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_listening(i).await;
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&self, i: usize) {
        let node = &self.nodes[i];
        let routes = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.route_port)).collect::<Vec<_>>().join(",");
        let mut command = Command::new(nats_server_bin());
        command.arg("-c").arg(&node.config);
        command.args(["-a", "127.0.0.1", "-p", &node.client_port.to_string(), "-m", &node.monitor_port.to_string()]);
        command.args(["--cluster", &format!("nats://127.0.0.1:{}", node.route_port), "--routes", &routes]);
        let start = {
            let mut starts = node.starts.lock().unwrap();
            *starts += 1;
            *starts
        };
        let proc = Proc::spawn(&format!("nats-node-{}-start-{start}", i + 1), command, &self.dir, &self.logs);
        *node.proc.lock().unwrap() = Some(Arc::new(proc));
    }

    async fn wait_listening(&self, i: usize) {
        let node = &self.nodes[i];
        let proc = node.proc.lock().unwrap().clone().expect("a started node");
        // The ports were free a moment ago; a node that loses one fails the test plainly.
        let up = wait_for_port(&proc, node.client_port, |stream| {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
        })
        .await;
        assert!(up, "{} exited at start:\n{}", node.name, tail(&proc.log(), 30));
    }

    /// `nats://127.0.0.1:<port>` of every node, comma-separated: what the parts are given.
    pub fn url(&self) -> String {
        (0..NODES).map(|i| self.node_url(i)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i` (0-based).
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// `server_name` of node `i`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node named `name` (`switchyard-2` → 1).
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// `http://127.0.0.1:<monitoring port of node i><path>`.
    pub fn monitor_url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].monitor_port)
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].proc.lock().unwrap().as_ref().is_some_and(|proc| proc.is_running())
    }

    /// SIGKILLs node `i`: no lame duck mode, no goodbye to its clients or routes.
    pub fn kill(&self, i: usize) {
        if let Some(proc) = self.nodes[i].proc.lock().unwrap().take() {
            proc.sigkill();
        }
    }

    /// Starts node `i` again, on its ports and with its JetStream data, and waits until it
    /// answers clients (not until it has caught up: see [`NatsCluster::wait_healthy`]).
    pub async fn restart(&self, i: usize) {
        assert!(!self.is_up(i), "node {i} is still running");
        self.spawn(i);
        self.wait_listening(i).await;
    }

    /// Waits until every running node's `/healthz` says ok (JetStream current, its streams
    /// caught up).
    pub async fn wait_healthy(&self, timeout: Duration) {
        let http = http_client().no_proxy().timeout(Duration::from_secs(2)).build().expect("reqwest client");
        eventually(timeout, "every NATS node healthy (/healthz)", || {
            let http = http.clone();
            async move {
                for i in (0..NODES).filter(|i| self.is_up(*i)) {
                    let response = http.get(self.monitor_url(i, "/healthz")).send().await.ok()?;
                    if response.status() != 200 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await
    }
}

/// [`NatsCluster`] + redis-server + `switchyard api` and `switchyard scheduler` on all three
/// NATS URLs; workers through [`ClusterStack::worker`]. Torn down on drop (Switchyard processes
/// first); a panicking test prints every log and keeps the folder.
pub struct ClusterStack {
    api: Proc,
    scheduler: Proc,
    redis: Proc,
    cluster: NatsCluster,
    redis_port: u16,
    api_port: u16,
    options: StackOptions,
    http: reqwest::Client,
    workers: Mutex<u32>,
    dir: Arc<Dir>,
    logs: LogList,
}

impl ClusterStack {
    /// The cluster, Redis, api and scheduler; `options.env` goes to every Switchyard process
    /// (e.g. `SWITCHYARD_STREAM_REPLICAS`).
    pub async fn start(options: StackOptions) -> ClusterStack {
        let dir = Dir::new();
        let logs: LogList = Arc::default();
        let mut guard = StartGuard { dir: dir.clone(), logs: logs.clone(), done: false };
        let cluster = NatsCluster::start(&dir, &logs).await;
        let (redis, redis_port) = start_redis(&dir, &logs, None).await;
        let http = crate::stack_http();
        let connection = Connection { nats_url: cluster.url(), redis_url: format!("redis://127.0.0.1:{redis_port}"), env: Vec::new() };
        // The api first: it creates the job streams, buckets and the files store (waiting out a
        // cluster still settling); the scheduler then finds them.
        let (api, api_port) = start_api(&dir, &logs, &http, "api", &options, &connection).await;
        let (scheduler, _) = start_scheduler(&dir, &logs, &http, "scheduler", &options, &connection).await;
        guard.done = true;
        ClusterStack { api, scheduler, redis, cluster, redis_port, api_port, options, http, workers: Mutex::new(0), dir, logs }
    }

    pub fn cluster(&self) -> &NatsCluster {
        &self.cluster
    }

    pub fn api(&self) -> &Proc {
        &self.api
    }

    pub fn scheduler(&self) -> &Proc {
        &self.scheduler
    }

    pub fn redis(&self) -> &Proc {
        &self.redis
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// `http://127.0.0.1:<api port><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// Starts `switchyard worker <args…>` on all three NATS URLs; returns at once.
    pub fn worker(&self, args: &[&str]) -> Proc {
        let n = {
            let mut count = self.workers.lock().unwrap();
            *count += 1;
            *count
        };
        let name = format!("worker-{n}-{}", args.first().copied().unwrap_or("none"));
        let mut command = switchyard_command(&switchyard_bin(), &self.cluster.url(), &self.redis_url(), &self.options.env);
        if !self.options.env.iter().any(|(key, _)| key == "SWITCHYARD_THREADS") {
            command.env("SWITCHYARD_THREADS", "1");
        }
        command.arg("worker").args(args);
        Proc::spawn(&name, command, &self.dir, &self.logs)
    }

    /// Starts a worker and waits (up to 60 s) until it is in the registry and `model` is listed
    /// in `/v1/models`.
    pub async fn ready_worker(&self, args: &[&str], model: &str) -> Proc {
        use redis::AsyncCommands;
        let worker = self.worker(args);
        let redis = redis::Client::open(self.redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to redis-server");
        eventually(Duration::from_secs(60), &format!("{} to serve {model}", worker.name()), || {
            let mut redis = redis.clone();
            let worker = &worker;
            async move {
                if let Some(status) = worker.try_status() {
                    panic!("{} exited ({}):\n{}", worker.name(), Proc::describe_exit(status), tail(&worker.log(), 40));
                }
                let ids: Vec<String> = redis.zrange(switchyard_schemas::keys::WORKERS, 0, -1).await.ok()?;
                let mut registered = false;
                for id in ids {
                    let blob: Option<Vec<u8>> = redis.get(switchyard_schemas::keys::worker(&id)).await.ok()?;
                    registered |= blob
                        .and_then(|blob| switchyard_schemas::decode::<switchyard_schemas::WorkerRecord>(&blob).ok())
                        .is_some_and(|record| record.pid == worker.pid());
                }
                let response = self.http.get(self.api_url("/v1/models")).send().await.ok()?;
                let body: serde_json::Value = response.json().await.ok()?;
                let listed = body["data"].as_array()?.iter().any(|m| m["id"] == model);
                (registered && listed).then_some(())
            }
        })
        .await;
        worker
    }

    /// A NATS client on all three nodes.
    pub async fn nats_client(&self) -> async_nats::Client {
        switchyard_broker::connect_nats(&self.cluster.url(), "cluster-test", &Default::default()).await.expect("connecting to the cluster")
    }

    /// Subscribes to every reply subject (`sy.reply.>`) through the cluster.
    pub async fn tap_replies(&self) -> super::ReplyTap {
        super::ReplyTap::new(self.nats_client().await).await
    }

    /// Prints the last lines of every log.
    pub fn print_logs(&self, lines: usize) {
        print_logs(&self.logs, lines);
    }

    pub fn log_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SWITCHYARD_KEEP_LOGS").is_some() {
            print_logs(&self.logs, 60);
            self.dir.keep();
            eprintln!("[harness] logs kept in {}", self.dir.path().display());
        }
    }
}
