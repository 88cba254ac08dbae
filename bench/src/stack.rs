//! A private Switchyard stack on free ports: nats-server, redis-server, `switchyard api`,
//! `switchyard worker echo` or `switchyard worker torch` (and optionally the scheduler), torn
//! down when dropped — on normal
//! exit, on an error, on Ctrl-C (the future holding it is dropped) and on panic (unwinding).
//! Each child also gets `PR_SET_PDEATHSIG`, so even a `kill -9` of the bench takes it along.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Stack {
    pub api_url: String,
    pub nats_url: String,
    pub redis_url: String,
    /// The scheduler's health endpoint's base URL, when the stack runs one.
    pub scheduler_url: Option<String>,
    /// The API key the bench created for itself (`None` with `--no-auth`).
    pub api_key: Option<String>,
    pub dir: PathBuf,
    /// JetStream's folder when it is not inside `dir`.
    nats_store: Option<PathBuf>,
    /// Switchyard parts first (stopped first), then the brokers.
    parts: Vec<Proc>,
    switchyard: PathBuf,
    /// The environment every api of this stack starts with.
    api_env: Vec<(String, String)>,
    /// The environment every worker of this stack starts with.
    worker_env: Vec<(String, String)>,
    brokers: Vec<Proc>,
    keep_dir: bool,
}

/// What the stack's one worker serves.
#[derive(Debug, Clone)]
pub enum WorkerBackend {
    /// `switchyard worker echo --delay <worker_delay> --slots <worker_slots>`.
    Echo,
    /// `switchyard worker torch --model-path PATH`, with `--slots <worker_slots>` unless it is 0
    /// (then the worker's own default).
    Torch { model_path: PathBuf },
}

/// Where the stack's programs are: the flags every bench that starts a stack takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Binaries {
    /// The `switchyard` binary (with its default `torch` feature for the torch benches;
    /// default: next to this binary, else target/bench/release, else target/release, else PATH).
    #[arg(long)]
    pub switchyard: Option<PathBuf>,
    /// nats-server binary (default: .switchyard/bin/nats-server, else PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// redis-server binary (default: .switchyard/bin/redis-server, else PATH).
    #[arg(long)]
    pub redis_server: Option<PathBuf>,
}

impl Binaries {
    /// `--switchyard`, else where [`find_switchyard`] finds it.
    pub fn switchyard(&self) -> anyhow::Result<PathBuf> {
        self.switchyard.clone().map_or_else(find_switchyard, Ok)
    }
}

pub struct StackOptions {
    pub switchyard: PathBuf,
    pub nats_server: Option<PathBuf>,
    pub redis_server: Option<PathBuf>,
    pub scheduler: bool,
    /// Arguments of `switchyard scheduler` beyond the URLs and `--listen` (e.g. `--batch-window 4096`).
    pub scheduler_args: Vec<String>,
    pub worker_backend: WorkerBackend,
    pub worker_slots: u32,
    /// `--delay` of the echo worker (between streamed tokens), e.g. `0ms`.
    pub worker_delay: String,
    pub worker_args: Vec<String>,
    /// Start the api with `--no-auth` (no keys, no rate limits) instead of creating a key.
    pub no_auth: bool,
    /// Arguments of `switchyard keys create` beyond `--user` (e.g. `--rpm 1000000`).
    pub key_args: Vec<String>,
    /// Extra environment per part: (part, name, value); part is api, worker, nats, redis,
    /// scheduler or all.
    pub env: Vec<(String, String, String)>,
    /// Where nats-server keeps JetStream data (default: the bench's temporary folder).
    pub nats_store: Option<PathBuf>,
    /// Let every part start a thread per core instead of the share `switchyard dev` gives it.
    pub thread_per_core: bool,
}

impl Stack {
    pub fn start(options: &StackOptions) -> anyhow::Result<Stack> {
        let nats_bin = find_tool("nats-server", options.nats_server.as_deref())?;
        let redis_bin = find_tool("redis-server", options.redis_server.as_deref())?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let dir = std::env::temp_dir().join(format!("switchyard-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("nats"))?;
        let nats_store = match &options.nats_store {
            Some(base) => base.join(format!("switchyard-bench-{}-{nanos}", std::process::id())),
            None => dir.join("nats"),
        };
        std::fs::create_dir_all(&nats_store)?;
        let shared = switchyard_broker::SharedMachine::this_machine();
        let env_of = |part: &str| -> Vec<(String, String)> {
            let share = match part {
                _ if options.thread_per_core => None,
                "nats" => shared.nats_env(),
                "redis" => None,
                _ => shared.part_env(),
            };
            let share = share.map(|(name, value)| (name.to_string(), value));
            let given =
                options.env.iter().filter(|(p, _, _)| p == part || p == "all").map(|(_, name, value)| (name.clone(), value.clone()));
            share.into_iter().chain(given).collect()
        };
        let env = |part: &str, command: &mut Command| {
            command.envs(env_of(part));
        };
        let [api_port, nats_port, redis_port, scheduler_port] = free_ports(4)?[..] else { unreachable!("four ports asked") };
        let host = "127.0.0.1";
        let nats_url = format!("nats://{host}:{nats_port}");
        let redis_url = format!("redis://{host}:{redis_port}");
        let api_url = format!("http://{host}:{api_port}");
        let mut stack = Stack {
            api_url,
            nats_url,
            redis_url,
            scheduler_url: None,
            api_key: None,
            dir: dir.clone(),
            nats_store: options.nats_store.as_ref().map(|_| nats_store.clone()),
            parts: Vec::new(),
            switchyard: options.switchyard.clone(),
            api_env: env_of("api"),
            worker_env: env_of("worker"),
            brokers: Vec::new(),
            keep_dir: false,
        };
        let result = (|| {
            let mut nats = Command::new(&nats_bin);
            nats.args(["-js", "-a", host, "-p", &nats_port.to_string(), "-sd"]).arg(&nats_store);
            env("nats", &mut nats);
            stack.brokers.push(spawn("nats-server", &mut nats, &dir)?);
            let mut redis = Command::new(&redis_bin);
            redis.args(["--bind", host, "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no", "--dir"]).arg(&dir);
            env("redis", &mut redis);
            stack.brokers.push(spawn("redis-server", &mut redis, &dir)?);
            wait_for_port(nats_port, "nats-server", &dir, PORT_WAIT)?;
            wait_for_port(redis_port, "redis-server", &dir, PORT_WAIT)?;

            let urls = ["--nats-url", stack.nats_url.as_str(), "--redis-url", stack.redis_url.as_str()];
            if !options.no_auth {
                stack.api_key = Some(create_key(&options.switchyard, &urls, &options.key_args)?);
            }
            let mut api = Command::new(&options.switchyard);
            api.arg("api").args(urls).args(["--listen", &format!("{host}:{api_port}")]);
            if options.no_auth {
                api.arg("--no-auth");
            }
            env("api", &mut api);
            stack.parts.push(spawn("api", &mut api, &dir)?);
            let mut worker = Command::new(&options.switchyard);
            let name = match &options.worker_backend {
                WorkerBackend::Echo => {
                    worker.args(["worker", "echo"]).args(urls).args([
                        "--delay",
                        &options.worker_delay,
                        "--slots",
                        &options.worker_slots.to_string(),
                    ]);
                    "worker-echo"
                }
                WorkerBackend::Torch { model_path } => {
                    worker.args(["worker", "torch"]).args(urls).arg("--model-path").arg(model_path);
                    if options.worker_slots > 0 {
                        worker.args(["--slots", &options.worker_slots.to_string()]);
                    }
                    "worker-torch"
                }
            };
            worker.args(&options.worker_args);
            env("worker", &mut worker);
            stack.parts.push(spawn(name, &mut worker, &dir)?);
            if options.scheduler {
                let mut scheduler = Command::new(&options.switchyard);
                scheduler.arg("scheduler").args(urls).args(["--listen", &format!("{host}:{scheduler_port}")]).args(&options.scheduler_args);
                env("scheduler", &mut scheduler);
                stack.parts.push(spawn("scheduler", &mut scheduler, &dir)?);
                wait_for_port(scheduler_port, "scheduler", &dir, PORT_WAIT)?;
                stack.scheduler_url = Some(format!("http://{host}:{scheduler_port}"));
            }
            Ok(())
        })();
        if let Err(e) = result {
            stack.keep_dir = true;
            return Err(e);
        }
        Ok(stack)
    }

    /// Starts one more api on this stack's NATS and Redis (e.g. a `--no-auth` one beside the
    /// keyed one, for comparing them in one run) and returns its URL once it listens.
    pub fn add_api(&mut self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let port = free_ports(1)?[0];
        let mut api = Command::new(&self.switchyard);
        api.arg("api")
            .args(["--nats-url", &self.nats_url, "--redis-url", &self.redis_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(self.api_env.iter().cloned());
        self.parts.push(spawn(name, &mut api, &self.dir)?);
        wait_for_port(port, name, &self.dir, PORT_WAIT)?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Starts one more worker on this stack's NATS and Redis: `switchyard worker <args…>`
    /// (e.g. `tools-demo` beside the echo worker), with the workers' environment.
    pub fn add_worker(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut worker = Command::new(&self.switchyard);
        worker.arg("worker").args(args);
        self.add_worker_command(name, worker)
    }

    /// Starts another program as a worker of this stack (e.g. a Python tool worker): it gets
    /// `--nats-url` and `--redis-url` after its own arguments, and the workers' environment.
    pub fn add_worker_command(&mut self, name: &str, mut worker: Command) -> anyhow::Result<()> {
        worker.args(["--nats-url", &self.nats_url, "--redis-url", &self.redis_url]).envs(self.worker_env.iter().cloned());
        self.parts.push(spawn(name, &mut worker, &self.dir)?);
        Ok(())
    }

    /// Creates one more API key for user `bench` (`switchyard keys create` with `key_args`).
    pub fn add_key(&self, key_args: &[String]) -> anyhow::Result<String> {
        create_key(&self.switchyard, &["--nats-url", &self.nats_url, "--redis-url", &self.redis_url], key_args)
    }

    /// The process id of part `name` (`api`, `worker-echo`, `worker-torch`, `scheduler`,
    /// `nats-server`, …).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.procs().find(|p| p.name == name).map(Proc::pid)
    }

    /// Every process of the stack, for CPU accounting.
    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.parts.iter().chain(self.brokers.iter())
    }

    /// Fails if a part has exited (so a dead worker is reported as such, not as a timeout).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for part in self.parts.iter_mut().chain(self.brokers.iter_mut()) {
            if let Some(status) = part.child.try_wait()? {
                self.keep_dir = true;
                bail!("{} exited ({status}); its log: {}", part.name, self.dir.join(format!("{}.log", part.name)).display());
            }
        }
        Ok(())
    }

    /// Keep the logs folder after the stack stops (on failures).
    pub fn keep_logs(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Workers and api drain while NATS and Redis are still up; the brokers go last.
        stop_all(&mut self.parts);
        stop_all(&mut self.brokers);
        if let Some(store) = &self.nats_store {
            let _ = std::fs::remove_dir_all(store);
        }
        if self.keep_dir {
            eprintln!("stack logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn stop_all(procs: &mut Vec<Proc>) {
    for proc in procs.iter() {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(proc.child.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for proc in procs.iter_mut() {
        loop {
            match proc.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = proc.child.kill();
                    let _ = proc.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    procs.clear();
}

fn spawn(name: &str, command: &mut Command, dir: &Path) -> anyhow::Result<Proc> {
    let log = File::create(dir.join(format!("{name}.log")))?;
    switchyard_broker::die_with_parent(command);
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
    Ok(Proc { name: name.to_string(), child })
}

/// `switchyard keys create --user bench …`: the secret it prints.
fn create_key(switchyard: &Path, urls: &[&str], key_args: &[String]) -> anyhow::Result<String> {
    let output = Command::new(switchyard)
        .args(["keys"])
        .args(urls)
        .args(["create", "--user", "bench"])
        .args(key_args)
        .stdin(Stdio::null())
        .output()
        .context("running switchyard keys create")?;
    if !output.status.success() {
        bail!(
            "switchyard keys create failed ({}): {} (a switchyard without API keys? then pass --no-auth)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let secret = String::from_utf8(output.stdout)?.trim().to_string();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        bail!("switchyard keys create printed {secret:?}, not one secret");
    }
    Ok(secret)
}

/// How long a part of a bench stack may take to listen.
const PORT_WAIT: Duration = Duration::from_secs(15);

/// `n` distinct free ports on 127.0.0.1 (held open together so they differ).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Waits up to `limit` for `what` (logging to `dir/<what>.log`) to listen on `port`.
pub(crate) fn wait_for_port(port: u16, what: &str, dir: &Path, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200)).is_err() {
        if start.elapsed() > limit {
            bail!("{what} did not open port {port} within {limit:?}; see {}", dir.join(format!("{what}.log")).display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `given`, else `/work/main/.switchyard/bin/NAME` (the repository's setup folder), else PATH.
fn find_tool(name: &str, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let setup_bin = repo_root().join(".switchyard/bin");
    switchyard_broker::find_executable(name, &setup_bin)
        .with_context(|| format!("{name} not found in {} or on PATH (run scripts/setup.sh)", setup_bin.join(name).display()))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `switchyard` binary: next to this one (same target folder and profile), else the
/// bench's release target folder, else the workspace's, else PATH.
pub fn find_switchyard() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        candidates.push(dir.join("switchyard"));
    }
    let root = repo_root();
    candidates.push(root.join("target/bench/release/switchyard"));
    candidates.push(root.join("target/release/switchyard"));
    if let Some(found) = candidates.into_iter().find(|p| p.exists()) {
        return Ok(found);
    }
    find_tool("switchyard", None).context("build it: cargo build --release -p switchyard --no-default-features")
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15 → indices 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / ticks))
}

/// Context switches (voluntary + involuntary) of every thread a process has now.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(value) = line.strip_prefix("voluntary_ctxt_switches:").or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// CPU time the whole machine has spent busy (all cores, every process), from /proc/stat.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(busy * 1_000_000_000 / ticks))
}
