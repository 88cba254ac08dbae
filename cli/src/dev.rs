//! `switchyard dev`: the whole stack on this machine, with working defaults.
//!
//! Starts nats-server (JetStream, data under `.switchyard/nats`) and redis-server, then the
//! api, the scheduler and the default workers as child processes of this binary (the same
//! commands an operator would run by hand), prints what is where, and on Ctrl-C stops them in
//! order: workers drain first, the broker goes last. Each child logs to `.switchyard/logs/`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DevOptions {
    /// Folder for data, logs and tools installed by scripts/setup.sh.
    #[arg(long, env = "SWITCHYARD_HOME", default_value = ".switchyard")]
    home: PathBuf,
    /// Interface every part listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    #[arg(long, default_value_t = 8081)]
    scheduler_port: u16,
    /// The first worker's `/metrics` (and `/health`, `/ready`) port; each further worker takes
    /// the next free one. 0: each worker any free port (it logs which).
    #[arg(long, default_value_t = 9100)]
    worker_metrics_port: u16,
    /// Serve without API keys or rate limits (local experiments only).
    #[arg(long)]
    no_auth: bool,
    /// Start no workers (add your own with `switchyard worker …`).
    #[arg(long)]
    no_workers: bool,
    /// The chat model folder the torch worker serves by default.
    #[arg(long, default_value = "models/tiny-llama")]
    chat_model: PathBuf,
    /// The embedding model folder the torch worker serves by default (installed by setup).
    #[arg(long, default_value = ".switchyard/models/all-minilm-l6-v2")]
    embedding_model: PathBuf,
}

struct Part {
    name: String,
    child: Child,
}

pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let home = std::path::absolute(&options.home)?;
    let logs = home.join("logs");
    std::fs::create_dir_all(&logs)?;
    for port in [options.api_port, options.nats_port, options.redis_port, options.scheduler_port] {
        if TcpStream::connect((options.host.as_str(), port)).is_ok() {
            bail!(
                "port {port} on {} is already in use — is another stack running? Pick other ports with --api-port/--nats-port/--redis-port/--scheduler-port",
                options.host
            );
        }
    }
    let nats_url = format!("nats://{}:{}", options.host, options.nats_port);
    let redis_url = format!("redis://{}:{}", options.host, options.redis_port);
    let mut broker = Vec::new();
    let mut parts = Vec::new();
    let shared = switchyard_broker::SharedMachine::this_machine();
    let result = async {
        let nats_data = home.join("nats");
        std::fs::create_dir_all(&nats_data)?;
        let mut nats = Command::new(find_tool("nats-server", &home)?);
        nats.args(["-js", "-a", &options.host, "-p", &options.nats_port.to_string(), "-sd"])
            .arg(&nats_data)
            .args(["-n", "switchyard-dev"])
            .envs(shared.nats_env());
        broker.push(spawn("nats-server", &mut nats, &logs)?);
        let redis_data = home.join("redis");
        std::fs::create_dir_all(&redis_data)?;
        let mut redis = Command::new(find_tool("redis-server", &home)?);
        redis
            .arg(repo_file("broker-config/redis.conf"))
            .args(["--bind", &options.host, "--port", &options.redis_port.to_string(), "--dir"])
            .arg(&redis_data);
        broker.push(spawn("redis-server", &mut redis, &logs)?);
        wait_for_port(&options.host, options.nats_port, "nats-server").await?;
        wait_for_port(&options.host, options.redis_port, "redis-server").await?;

        let me = std::env::current_exe()?;
        // Every part started from here runs with its share of the machine's threads.
        let part = |args: &[&str]| {
            let mut command = Command::new(&me);
            command.args(args).envs(shared.part_env());
            command
        };
        let urls = ["--nats-url", &nats_url, "--redis-url", &redis_url];
        let api_listen = format!("{}:{}", options.host, options.api_port);
        let scheduler_listen = format!("{}:{}", options.host, options.scheduler_port);
        let key = if options.no_auth { None } else { Some(dev_api_key(&home, &redis_url).await?) };
        let mut api = part(&["api"]);
        api.args(urls).args(["--listen", &api_listen]);
        if options.no_auth {
            api.arg("--no-auth");
        }
        parts.push(spawn("api", &mut api, &logs)?);
        parts.push(spawn("scheduler", part(&["scheduler"]).args(urls).args(["--listen", &scheduler_listen]), &logs)?);
        let mut models = Vec::new();
        // Each worker its own metrics port, in the order they start, skipping ports in use.
        let mut metrics_ports = Vec::new();
        let mut next_metrics = || {
            let port = match options.worker_metrics_port {
                0 => 0,
                first => (metrics_ports.last().map_or(first, |last| last + 1)..=u16::MAX)
                    .find(|&port| std::net::TcpListener::bind((options.host.as_str(), port)).is_ok())
                    .unwrap_or(0),
            };
            metrics_ports.push(port);
            format!("{}:{port}", options.host)
        };
        let worker_part = |args: &[&str], metrics: String| {
            let mut command = part(args);
            command.args(urls).args(["--metrics-listen", &metrics]);
            command
        };
        if !options.no_workers {
            parts.push(spawn("worker-echo", &mut worker_part(&["worker", "echo", "--tools-name", "echo-tools"], next_metrics()), &logs)?);
            models.push("echo (chat, debug)".to_string());
            models.push("echo-embedding (embeddings, debug)".to_string());
            parts.push(spawn("worker-dummy", &mut worker_part(&["worker", "dummy"], next_metrics()), &logs)?);
            models.push("dummy (chat, debug)".to_string());
            parts.push(spawn("worker-tools-demo", &mut worker_part(&["worker", "tools-demo"], next_metrics()), &logs)?);
            models.push("demo-tools (hosted functions: custom_method, get_stream, get_info)".to_string());
            if cfg!(feature = "torch") {
                for (folder, kind) in [(&options.chat_model, "chat"), (&options.embedding_model, "embeddings")] {
                    let name = folder.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    if !folder.join("config.json").exists() {
                        tracing::warn!("{} not found: run scripts/setup.sh to install it; not serving {name}", folder.display());
                        continue;
                    }
                    let folder = folder.to_string_lossy();
                    let mut worker = worker_part(&["worker", "torch", "--model-path", &folder], next_metrics());
                    parts.push(spawn(&format!("worker-{name}"), &mut worker, &logs)?);
                    models.push(format!("{name} ({kind}, torch)"));
                }
            }
        }
        wait_for_ready(&format!("http://{api_listen}/ready")).await?;
        println!();
        println!("  Switchyard dev stack is up");
        println!("  api         http://{api_listen}/v1   (OpenAI-compatible)");
        println!("  nats        {nats_url}   (JetStream data in {})", nats_data.display());
        println!("  redis       {redis_url}");
        println!("  scheduler   http://{scheduler_listen}/health");
        println!("  status      http://{api_listen}/status   (admin keys; `switchyard status` in a terminal)");
        let worker_ports = match options.worker_metrics_port {
            0 => "chosen by each (see its log)".to_string(),
            _ => metrics_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        };
        println!(
            "  metrics     http://{api_listen}/metrics, http://{scheduler_listen}/metrics, workers on ports {worker_ports} (/metrics)"
        );
        println!(
            "  threads     {} per part, {} for nats-server (this machine's share; SWITCHYARD_THREADS / GOMAXPROCS override)",
            shared.part_threads, shared.nats_threads
        );
        for model in &models {
            println!("  model       {model}");
        }
        match &key {
            Some(key) => println!("  api key     {key}   (also in {})", home.join("dev-api-key").display()),
            None => println!("  api key     none: --no-auth, every caller may use everything"),
        }
        println!("  logs        {}/", logs.display());
        println!();
        println!("  Add a worker from another terminal:  switchyard worker echo --nats-url {nats_url} --redis-url {redis_url}");
        println!("  Ctrl-C stops everything.");
        println!();
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            exited = first_exit(&mut parts) => Err(anyhow::anyhow!("{exited} exited; see {}", logs.display())),
        }
    }
    .await;
    println!("stopping…");
    // Workers drain while NATS and Redis are still there; the broker stops last.
    stop_all(&mut parts).await;
    stop_all(&mut broker).await;
    result
}

/// The dev user's API key: the one in `.switchyard/dev-api-key` while Redis still knows it,
/// otherwise a new one (written there).
async fn dev_api_key(home: &Path, redis_url: &str) -> anyhow::Result<String> {
    use switchyard_broker::apikeys::{ApiKeys, KeySpec, hash_secret};
    let keys = ApiKeys::new(switchyard_broker::connect_redis(redis_url).await?);
    let file = home.join("dev-api-key");
    if let Ok(secret) = std::fs::read_to_string(&file) {
        let secret = secret.trim().to_string();
        if keys.lookup(&hash_secret(&secret)).await?.is_some_and(|k| !k.revoked) {
            return Ok(secret);
        }
    }
    let (secret, record) = keys.create(KeySpec { user: "dev".into(), admin: true, ..Default::default() }).await?;
    std::fs::write(&file, format!("{secret}\n"))?;
    tracing::info!(key_id = %record.id, "created the dev user's API key");
    Ok(secret)
}

fn spawn(name: &str, command: &mut Command, logs: &Path) -> anyhow::Result<Part> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    // A second Ctrl-C exits `dev` at once; its parts must not outlive it.
    switchyard_broker::die_with_parent(command.as_std_mut());
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: Ctrl-C reaches only `dev`, which then stops the parts in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Part { name: name.to_string(), child })
}

async fn first_exit(parts: &mut [Part]) -> String {
    loop {
        for part in parts.iter_mut() {
            if let Ok(Some(status)) = part.child.try_wait() {
                return format!("{} ({status})", part.name);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stop_all(parts: &mut Vec<Part>) {
    for part in parts.iter() {
        if let Some(pid) = part.child.id() {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for part in parts.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(40), part.child.wait()).await.is_err() {
            let _ = part.child.kill().await;
        }
    }
    parts.clear();
}

/// `nats-server` / `redis-server` from PATH, or from `.switchyard/bin` where setup puts them.
fn find_tool(name: &str, home: &Path) -> anyhow::Result<PathBuf> {
    let setup_bin = home.join("bin");
    switchyard_broker::find_executable(name, &setup_bin)
        .with_context(|| format!("{name} not found on PATH or in {}: run scripts/setup.sh", setup_bin.display()))
}

/// A file of the repository, for a binary run from the repository root or its target folder.
fn repo_file(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

async fn wait_for_port(host: &str, port: u16, what: &str) -> anyhow::Result<()> {
    let address: SocketAddr = format!("{host}:{port}").parse()?;
    let start = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("{what} did not open port {port} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Polls the api's `/ready` with a bare HTTP/1.0 request (no client library needed for one GET).
async fn wait_for_ready(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (address, path) = rest.split_once('/').context("URL with a path")?;
    let start = Instant::now();
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(address).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the api did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
