//! `switchyard-bench nats-cluster`: the echo job path (`switchyard-bench echo`'s (a), (b) and
//! (d)) on a three-node NATS cluster with R3 streams (`broker-config/cluster/`) against one
//! nats-server with R1 streams, in the same run on the same machine: both stacks are started
//! at once and measured in turns, so a change in the machine's state hits both alike. Prints
//! one table and the cluster/single ratio of every figure. No target: it shows what
//! replication costs (every job publish is acknowledged once two of three nodes hold it, and
//! every ack of a worker is replicated too).

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;

use crate::client::{Conn, Target};
use crate::stack::{free_ports, wait_for_port};

/// Cluster nodes take longer to listen than a single server.
const CLUSTER_PORT_WAIT: Duration = Duration::from_secs(20);
use crate::{Stats, chat_body, check_completion, load, sequential, stream_once, thousands, wait_for_model};

#[derive(Debug, clap::Args, Clone)]
pub struct ClusterOptions {
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// (a): sequential non-stream requests measured per round.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// (b): sequential stream requests measured per round.
    #[arg(long, default_value_t = 500)]
    stream_requests: usize,
    /// Unmeasured requests before (a) and (b).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// (d): how long the concurrent clients run, measured, per round.
    #[arg(long, default_value = "5s", value_parser = switchyard_broker::parse_duration)]
    duration: std::time::Duration,
    /// (d): concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds: each measures the single server, then the cluster (the figures pool them).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Slots of each stack's echo worker.
    #[arg(long, default_value_t = 256)]
    worker_slots: u32,
    /// Keep both stacks' logs.
    #[arg(long)]
    keep_logs: bool,
}

struct Part {
    name: String,
    child: Child,
}

/// nats-server (one, or three in a cluster), redis-server, api and echo worker on free ports.
struct MiniStack {
    label: &'static str,
    api_url: String,
    dir: PathBuf,
    parts: Vec<Part>,
    keep: bool,
}

impl Drop for MiniStack {
    fn drop(&mut self) {
        // Switchyard parts first (they drain while the brokers are up), then the brokers.
        for part in self.parts.iter().rev() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(part.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for part in self.parts.iter_mut().rev() {
            while matches!(part.child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = part.child.kill();
                    let _ = part.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.keep {
            eprintln!("{} stack logs kept in {}", self.label, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until a cluster node's `/healthz` says ok: JetStream has its meta leader.
fn wait_healthy(monitor_port: u16, what: &str, dir: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        let answer =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, monitor_port).into(), Duration::from_millis(500)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
        if answer.is_ok_and(|text| text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} was not healthy within 30 s; see {}", dir.join(format!("{what}.log")).display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl MiniStack {
    fn spawn(&mut self, name: &str, command: &mut Command) -> anyhow::Result<()> {
        let log = File::create(self.dir.join(format!("{name}.log")))?;
        switchyard_broker::die_with_parent(command);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        self.parts.push(Part { name: name.to_string(), child });
        Ok(())
    }

    /// `nodes` nats-servers (a cluster from `broker-config/cluster/` when 3), and the rest.
    fn start(label: &'static str, nodes: usize, options: &ClusterOptions) -> anyhow::Result<MiniStack> {
        let switchyard = options.binaries.switchyard()?;
        let setup_bin = crate::stack::repo_root().join(".switchyard/bin");
        let nats_bin = match &options.binaries.nats_server {
            Some(path) => path.clone(),
            None => switchyard_broker::find_executable("nats-server", &setup_bin).context("nats-server not found (scripts/setup.sh)")?,
        };
        let redis_bin = match &options.binaries.redis_server {
            Some(path) => path.clone(),
            None => switchyard_broker::find_executable("redis-server", &setup_bin).context("redis-server not found")?,
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let dir = std::env::temp_dir().join(format!("switchyard-bench-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ports = free_ports(3 * nodes + 2)?;
        let (redis_port, api_port) = (ports[3 * nodes], ports[3 * nodes + 1]);
        let mut stack =
            MiniStack { label, api_url: format!("http://127.0.0.1:{api_port}"), dir: dir.clone(), parts: Vec::new(), keep: false };
        let shared = switchyard_broker::SharedMachine::this_machine();
        let routes = (0..nodes).map(|i| format!("nats://127.0.0.1:{}", ports[3 * i + 1])).collect::<Vec<_>>().join(",");
        let cluster_dir = crate::stack::repo_root().join("broker-config/cluster");
        if nodes > 1 {
            std::fs::copy(cluster_dir.join("common.conf"), dir.join("common.conf"))?;
        }
        for i in 0..nodes {
            let mut nats = Command::new(&nats_bin);
            let store = dir.join(format!("nats-{}", i + 1));
            if nodes > 1 {
                // The node's own file, its JetStream folder made this stack's.
                let text = std::fs::read_to_string(cluster_dir.join(format!("node-{}.conf", i + 1)))?;
                let text: Vec<String> =
                    text.lines()
                        .map(|l| {
                            if l.trim_start().starts_with("store_dir:") {
                                format!("  store_dir: \"{}\"", store.display())
                            } else {
                                l.into()
                            }
                        })
                        .collect();
                let config = dir.join(format!("node-{}.conf", i + 1));
                std::fs::write(&config, text.join("\n"))?;
                nats.arg("-c").arg(&config).args(["--cluster", &format!("nats://127.0.0.1:{}", ports[3 * i + 1]), "--routes", &routes]);
                nats.args(["-m", &ports[3 * i + 2].to_string()]);
            } else {
                nats.args(["-js", "-sd"]).arg(&store);
            }
            nats.args(["-a", "127.0.0.1", "-p", &ports[3 * i].to_string()]);
            if let Some((name, value)) = shared.nats_env() {
                nats.env(name, value);
            }
            stack.spawn(&format!("nats-{}", i + 1), &mut nats)?;
        }
        let mut redis = Command::new(&redis_bin);
        redis.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no", "--dir"]).arg(&dir);
        stack.spawn("redis-server", &mut redis)?;
        for i in 0..nodes {
            wait_for_port(ports[3 * i], &format!("nats-{}", i + 1), &dir, CLUSTER_PORT_WAIT)?;
        }
        wait_for_port(redis_port, "redis-server", &dir, CLUSTER_PORT_WAIT)?;
        if nodes > 1 {
            for i in 0..nodes {
                wait_healthy(ports[3 * i + 2], &format!("nats-{}", i + 1), &dir)?;
            }
        }
        let nats_url = (0..nodes).map(|i| format!("nats://127.0.0.1:{}", ports[3 * i])).collect::<Vec<_>>().join(",");
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let urls = ["--nats-url", nats_url.as_str(), "--redis-url", redis_url.as_str()];
        let part_env = shared.part_env();
        let mut api = Command::new(&switchyard);
        api.arg("api").args(urls).args(["--listen", &format!("127.0.0.1:{api_port}"), "--no-auth"]);
        api.envs(part_env.clone());
        stack.spawn("api", &mut api)?;
        let mut worker = Command::new(&switchyard);
        worker.args(["worker", "echo"]).args(urls).args(["--delay", "0ms", "--slots", &options.worker_slots.to_string()]);
        worker.envs(part_env);
        stack.spawn("worker-echo", &mut worker)?;
        Ok(stack)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for part in &mut self.parts {
            if let Some(status) = part.child.try_wait()? {
                self.keep = true;
                bail!(
                    "{} of the {} stack exited ({status}); its log: {}",
                    part.name,
                    self.label,
                    self.dir.join(format!("{}.log", part.name)).display()
                );
            }
        }
        Ok(())
    }
}

/// Pooled figures of one stack.
#[derive(Default)]
struct Figures {
    latency: Vec<Duration>,
    first_token: Vec<Duration>,
    stream_done: Vec<Duration>,
    ok: u64,
    seconds: f64,
    /// (d)'s p50 latency of each round.
    load_p50s: Vec<Duration>,
    problems: u64,
    first_problem: Option<String>,
}

async fn measure(target: &Target, options: &ClusterOptions, figures: &mut Figures) -> anyhow::Result<()> {
    let message = "hello world";
    let body = chat_body(message, false);
    figures.latency.extend(
        sequential(target, Method::POST, "/v1/chat/completions", &body, options.warmup, options.requests, |b| check_completion(b, message))
            .await?,
    );
    let stream_body = chat_body(message, true);
    let mut conn = Conn::open(target).await?;
    for i in 0..options.warmup + options.stream_requests {
        let r = stream_once(&mut conn, &stream_body, message).await?;
        if i >= options.warmup {
            figures.first_token.push(r.first_token);
            figures.stream_done.push(r.done);
        }
    }
    let result =
        load(target, options.concurrency, Duration::from_secs(1), options.duration, Method::POST, "/v1/chat/completions", &body).await?;
    figures.ok += result.ok;
    figures.seconds += result.elapsed.as_secs_f64();
    figures.problems += result.non_200 + result.errors;
    if figures.first_problem.is_none() {
        figures.first_problem = result.first_problem.clone();
    }
    figures.load_p50s.push(result.latency.p50);
    Ok(())
}

pub async fn run(options: ClusterOptions) -> anyhow::Result<()> {
    eprintln!("starting a single nats-server stack (R1) and a three-node cluster stack (R3) on free ports");
    let mut single = MiniStack::start("single", 1, &options)?;
    let mut cluster = MiniStack::start("cluster", 3, &options)?;
    single.keep = options.keep_logs;
    cluster.keep = options.keep_logs;
    let result = async {
        let mut stacks = [(&mut single, Figures::default()), (&mut cluster, Figures::default())];
        for (stack, _) in stacks.iter_mut() {
            let target = Target::parse(&stack.api_url, None)?;
            stack.check_alive()?;
            wait_for_model(&target, None, "echo", false, Duration::from_secs(90))
                .await
                .with_context(|| format!("the {} stack", stack.label))?;
        }
        for round in 1..=options.rounds {
            for (stack, figures) in stacks.iter_mut() {
                eprintln!("· round {round}/{}: {}", options.rounds, stack.label);
                let target = Target::parse(&stack.api_url, None)?;
                measure(&target, &options, figures).await.with_context(|| format!("measuring the {} stack", stack.label))?;
                stack.check_alive()?;
            }
        }
        let [(_, single_figures), (_, cluster_figures)] = stacks;
        println!("{}", render(&options, &single_figures, &cluster_figures));
        Ok::<_, anyhow::Error>(())
    };
    let result = tokio::select! {
        result = result => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() {
        single.keep = true;
        cluster.keep = true;
    }
    result
}

fn render(options: &ClusterOptions, single: &Figures, cluster: &Figures) -> String {
    let s = |v: &Vec<Duration>| Stats::of(v.clone());
    let rows: Vec<(String, f64, f64, &str)> = vec![
        ("(a) chat, non-stream, 1 client: p50 ms".into(), ms_f(s(&single.latency).p50), ms_f(s(&cluster.latency).p50), "ms"),
        ("(a) p99 ms".into(), ms_f(s(&single.latency).p99), ms_f(s(&cluster.latency).p99), "ms"),
        ("(b) stream, 1 client: first token p50 ms".into(), ms_f(s(&single.first_token).p50), ms_f(s(&cluster.first_token).p50), "ms"),
        ("(b) stream, whole answer p50 ms".into(), ms_f(s(&single.stream_done).p50), ms_f(s(&cluster.stream_done).p50), "ms"),
        (
            format!("(d) {} clients: requests/s", options.concurrency),
            single.ok as f64 / single.seconds.max(1e-9),
            cluster.ok as f64 / cluster.seconds.max(1e-9),
            "/s",
        ),
        (
            format!("(d) {} clients: p50 ms (mean of rounds)", options.concurrency),
            ms_f(mean(&single.load_p50s)),
            ms_f(mean(&cluster.load_p50s)),
            "ms",
        ),
    ];
    let mut out = format!(
        "## The echo job path: one nats-server (R1) against a three-node cluster (R3)\n\n{} rounds, each: {} sequential requests, {} \
         sequential streams, {:?} of {} clients, on the single server then on the cluster. {}\n\n| figure | single node, R1 | 3 nodes, R3 | \
         cluster / single |\n|---|---|---|---|\n",
        options.rounds,
        options.requests,
        options.stream_requests,
        options.duration,
        options.concurrency,
        crate::machine()
    );
    for (name, a, b, unit) in rows {
        let show = |x: f64| if unit == "/s" { thousands(x) } else { format!("{x:.3}") };
        out.push_str(&format!("| {name} | {} | {} | {:.2}× |\n", show(a), show(b), b / a.max(1e-12)));
    }
    for (label, figures) in [("single", single), ("cluster", cluster)] {
        if figures.problems > 0 {
            out.push_str(&format!(
                "\n{label}: {} requests of (d) failed, e.g. {}\n",
                figures.problems,
                figures.first_problem.as_deref().unwrap_or("?")
            ));
        }
    }
    out
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() { Duration::ZERO } else { v.iter().sum::<Duration>() / v.len() as u32 }
}
