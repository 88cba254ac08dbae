//! The harness for Switchyard's cross-part integration tests (the tests live in `tests/`).
//!
//! It owns everything a test needs to run the real system on one machine, and nothing else:
//!
//! * [`Servers`]: a real `nats-server` (JetStream on) and `redis-server` on free ports, each
//!   with its own temporary data directory. Never mocks. [`Servers::start_secured`] runs them
//!   with the secured configuration of `broker-config/secure/` (only ports and directories set
//!   on the command line) and fresh passwords for every [`Role`]; [`Servers::connection`] says
//!   how a process of a role logs in.
//! * [`Stack`]: [`Servers`] plus `switchyard api` (run with `--no-auth` unless
//!   [`StackBuilder::with_auth`]) and `switchyard scheduler`, started on free ports and waited
//!   for (`/ready`, `/health`); with [`StackBuilder::secured`], each under its role. [`Stack::worker`] starts `switchyard worker …` processes
//!   against the same servers. Tests speak HTTP to the api and may watch NATS and Redis.
//! * [`Proc`]: one child process in its own process group, its stdout and stderr captured in a
//!   log file. Dropping it kills the whole group, so nothing outlives a test, even one that
//!   panics; children also get `PR_SET_PDEATHSIG`, so they die with a test binary that is
//!   itself killed. When a test panics, the [`Servers`] print the tail of every log started
//!   under them and keep the directory that holds them (so does `SWITCHYARD_KEEP_LOGS=1`).
//! * Binaries: `nats-server` from `PATH` or `<repo>/.switchyard/bin` (where `scripts/setup.sh`
//!   puts it), `redis-server` from `PATH`, and `switchyard` from `$SWITCHYARD_BIN` or else
//!   built once per test binary with `cargo build -p switchyard` into the target directory the
//!   tests were built in (see [`switchyard_bin`]); a Python with the `openai` SDK for the SDK
//!   test ([`python_with_openai`]).
//! * What the tests check, written once: OpenAI's response and stream shapes ([`openai`]), SSE
//!   framing ([`sse`]), the stream events workers publish on reply subjects ([`ReplyTap`]),
//!   OpenAI's error body ([`assert_openai_error`]), a part's `/metrics` ([`prometheus`]), the registry ([`Stack::worker_id`]), and
//!   polling with a deadline ([`eventually`]).
//!
//! Every [`Stack`] has its own ports and directories, so tests run in parallel and share
//! nothing. Run them with `cargo test -p switchyard-tests`.

pub mod batch;
pub mod cluster;
pub mod openai;
pub mod prometheus;
pub mod redis_servers;
pub mod sse;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::AsyncCommands;
use switchyard_schemas::{EventBody, StreamEvent, WorkerRecord, decode, keys};

pub use redis_servers::{RedisMode, RedisServers};

pub use reqwest;
pub use serde_json::{Value, json};

/// The repository root (the Cargo workspace).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// `nats-server` from `PATH`, else `<repo>/.switchyard/bin/nats-server`.
pub fn nats_server_bin() -> PathBuf {
    on_path("nats-server")
        .or_else(|| Some(workspace_root().join(".switchyard/bin/nats-server")).filter(|p| p.is_file()))
        .expect("nats-server is neither on PATH nor in .switchyard/bin: run scripts/setup.sh")
}

/// `redis-server` from `PATH`.
pub fn redis_server_bin() -> PathBuf {
    on_path("redis-server").expect("redis-server is not on PATH: run scripts/setup.sh")
}

/// Runs `cargo build <args>` in this test binary's profile and target directory (a no-op when
/// up to date), failing the test with cargo's output (and `hint`) if it fails. Returns the
/// profile directory, where the built binaries are.
pub fn cargo_build(args: &[&str], hint: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).arg("build").args(args);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    build.env("CARGO_TARGET_DIR", profile_dir.parent().expect("profile dir has a parent"));
    let command = format!("cargo build {}", args.join(" "));
    let output = build.output().unwrap_or_else(|e| panic!("running {command}: {e}"));
    assert!(output.status.success(), "`{command}` failed{hint}:\n{}", String::from_utf8_lossy(&output.stderr));
    profile_dir
}

/// The `switchyard` binary the tests drive.
///
/// `$SWITCHYARD_BIN` if set. Otherwise `<target dir>/<profile>/switchyard`, the target
/// directory being the one this test binary lives in (`target/debug/deps/x` →
/// `target/debug/switchyard`); `cargo build -p switchyard` runs once per test binary first
/// (a no-op when it is up to date), so the tests never drive a stale build of the api or
/// worker. A failed build fails the tests with cargo's output.
pub fn switchyard_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SWITCHYARD_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "SWITCHYARD_BIN={} does not exist", bin.display());
            return bin;
        }
        let started = Instant::now();
        let profile_dir = cargo_build(&["-p", "switchyard", "--bin", "switchyard"], " (set SWITCHYARD_BIN to use a prebuilt binary)");
        let bin = profile_dir.join("switchyard");
        assert!(bin.is_file(), "cargo built switchyard but {} does not exist", bin.display());
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("[harness] built {} in {:.1?}", bin.display(), started.elapsed());
        }
        bin
    })
    .clone()
}

/// `<target dir>/<profile>` of this test binary (`target/debug/deps/x` → `target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test binary has a directory").to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// A Python interpreter that can `import openai`: `$SWITCHYARD_TEST_PYTHON` if set, else a
/// virtual environment made once under `<target dir>/switchyard-tests-venv` with
/// `python3 -m venv` and `pip install openai` (kept for later runs).
pub fn python_with_openai() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(python) = std::env::var_os("SWITCHYARD_TEST_PYTHON") {
                return PathBuf::from(python);
            }
            let target_dir = profile_dir().parent().expect("profile dir has a parent").to_path_buf();
            let venv = target_dir.join("switchyard-tests-venv");
            let python = venv.join("bin/python");
            if venv.join(".complete").is_file() {
                return python;
            }
            let _ = std::fs::remove_dir_all(&venv);
            let run = |command: &mut Command| {
                let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
                assert!(
                    output.status.success(),
                    "{command:?} failed (set SWITCHYARD_TEST_PYTHON to a python that has `openai`):\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            };
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "openai"]));
            File::create(venv.join(".complete")).expect("marking the venv complete");
            python
        })
        .clone()
}

/// A reqwest client builder. The `switchyard` binary's reqwest has rustls without a built-in
/// crypto provider, and cargo builds one reqwest for the whole workspace, so every client here
/// needs the provider installed first, as the binary does.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The client a stack's tests speak HTTP to it with: no proxy, generous timeouts.
pub(crate) fn stack_http() -> reqwest::Client {
    http_client().no_proxy().timeout(Duration::from_secs(120)).connect_timeout(Duration::from_secs(5)).build().expect("reqwest client")
}

/// A port nobody listens on right now. Servers started on it can still lose a race for it, so
/// [`Stack`] retries a server that exits at start.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`; panics with
/// `what` when it never does.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs of every process a [`Stack`] started, by name, for the report on failure.
type LogList = Arc<Mutex<Vec<(String, PathBuf)>>>;

/// One child process in its own process group, its output captured in a log file.
/// Dropping it kills the group (SIGKILL) and reaps the child.
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    log: PathBuf,
    /// Keeps the directory holding the log alive while the process may still write to it.
    _dir: Arc<Dir>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, dir: &Arc<Dir>, logs: &LogList) -> Proc {
        let log = dir.path().join(format!("{name}.log"));
        let file = File::options().create(true).append(true).open(&log).expect("creating log file");
        let _ = writeln!(&file, "[harness] {:?}", command);
        command.stdin(Stdio::null()).stdout(file.try_clone().expect("dup log")).stderr(file);
        command.process_group(0);
        // The child gets SIGKILL when the thread that spawned it exits: a test binary killed
        // from outside leaves nothing behind. (So spawn from the test's thread or a runtime
        // worker, never from a `spawn_blocking` thread, which may exit while the test runs.)
        switchyard_broker::die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("spawning {name} ({:?}): {e}", command.get_program()));
        logs.lock().unwrap().push((name.to_string(), log.clone()));
        Proc { name: name.to_string(), pid: child.id(), child: Mutex::new(child), status: Mutex::new(None), log, _dir: dir.clone() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        if self.try_status().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on the group we created; a group that is gone yields ESRCH.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), signal);
        }
    }

    /// SIGKILL to the process group, and reap it.
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
        let mut child = self.child.lock().unwrap();
        if let Ok(status) = child.wait() {
            self.status.lock().unwrap().get_or_insert(status);
        }
    }

    /// SIGTERM to the process group; see [`Proc::wait_exit`].
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap();
        if status.is_none()
            && let Ok(Some(exited)) = self.child.lock().unwrap().try_wait()
        {
            *status = Some(exited);
        }
        *status
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Describes how the process ended, for assertion messages.
    pub fn describe_exit(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => format!("{status:?}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proc({} pid {})", self.name, self.pid)
    }
}

/// A temporary directory that stays on disk when a test fails (or `SWITCHYARD_KEEP_LOGS` is
/// set), so its logs can be read afterwards.
struct Dir {
    dir: Mutex<Option<tempfile::TempDir>>,
    path: PathBuf,
}

impl Dir {
    fn new() -> Arc<Dir> {
        let dir = tempfile::Builder::new().prefix("switchyard-test-").tempdir().expect("creating temp dir");
        let path = dir.path().to_path_buf();
        Arc::new(Dir { dir: Mutex::new(Some(dir)), path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(&self) {
        if let Some(dir) = self.dir.lock().unwrap().take() {
            let _ = dir.keep();
        }
    }
}

/// Options for [`Stack::start_with`]; [`Stack::builder`] sets them.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `--queue-timeout` of the api: how long a job waits for a worker before a 503.
    pub queue_timeout: Duration,
    /// `--body-limit` of the api, in bytes; the api's default when `None`.
    pub body_limit: Option<u64>,
    /// Whether to run `switchyard scheduler` (registry reaping, dead letters).
    pub scheduler: bool,
    /// `--reap-interval` of the scheduler.
    pub reap_interval: Duration,
    /// Run the api with `--no-auth` (no API key needed). On by default: most tests are about
    /// something else; the auth tests turn it off and create keys.
    pub no_auth: bool,
    /// Extra arguments for `switchyard api`.
    pub api_args: Vec<String>,
    /// Extra arguments for `switchyard scheduler`.
    pub scheduler_args: Vec<String>,
    /// Extra environment for every Switchyard process (api, scheduler, workers).
    pub env: Vec<(String, String)>,
    /// Run the servers with the secured configuration ([`Servers::start_secured`]) and every
    /// Switchyard process under its [`Role`].
    pub secured: bool,
    /// How Redis runs (not secured): `SWITCHYARD_TEST_REDIS` by default ([`RedisMode::from_env`]).
    pub redis: RedisMode,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            queue_timeout: Duration::from_secs(30),
            body_limit: None,
            scheduler: true,
            reap_interval: Duration::from_secs(1),
            no_auth: true,
            api_args: Vec::new(),
            scheduler_args: Vec::new(),
            env: Vec::new(),
            secured: false,
            redis: RedisMode::from_env(),
        }
    }
}

/// Builder for a [`Stack`] with non-default options.
#[derive(Debug, Clone, Default)]
pub struct StackBuilder {
    options: StackOptions,
}

impl StackBuilder {
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.options.queue_timeout = timeout;
        self
    }

    pub fn body_limit(mut self, bytes: u64) -> Self {
        self.options.body_limit = Some(bytes);
        self
    }

    pub fn without_scheduler(mut self) -> Self {
        self.options.scheduler = false;
        self
    }

    /// Require API keys (drop `--no-auth`).
    pub fn with_auth(mut self) -> Self {
        self.options.no_auth = false;
        self
    }

    pub fn reap_interval(mut self, interval: Duration) -> Self {
        self.options.reap_interval = interval;
        self
    }

    pub fn api_arg(mut self, arg: impl Into<String>) -> Self {
        self.options.api_args.push(arg.into());
        self
    }

    pub fn scheduler_arg(mut self, arg: impl Into<String>) -> Self {
        self.options.scheduler_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.env.push((key.into(), value.into()));
        self
    }

    /// The secured broker configuration, every process under its role (see [`Servers::start_secured`]).
    pub fn secured(mut self) -> Self {
        self.options.secured = true;
        self
    }

    /// Redis run as `mode`, whatever `SWITCHYARD_TEST_REDIS` says.
    pub fn redis(mut self, mode: RedisMode) -> Self {
        self.options.redis = mode;
        self
    }

    pub async fn start(self) -> Stack {
        Stack::start_with(self.options).await
    }
}

/// `250ms`-style duration for command lines.
pub fn duration_arg(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// A real nats-server (JetStream on) and redis-server on free ports, with temporary data
/// directories; both killed on drop. When dropped during a panic it prints the tail of every
/// log in its directory (its own, and those of the Switchyard processes of a [`Stack`]) and
/// keeps the directory.
pub struct Servers {
    nats: Proc,
    redis: RedisServers,
    nats_port: u16,
    secrets: Option<Secrets>,
    logs: LogList,
    dir: Arc<Dir>,
}

/// A role of the secured broker (`broker-config/secure/`): the NATS and Redis user a process
/// logs in as, and its NATS inbox prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Api,
    Scheduler,
    Worker,
    /// `switchyard keys` and the test itself (Redis: everything; NATS: revocations only).
    Admin,
    /// The configuration's example direct publisher: instance `example-publisher`, model `echo`.
    Publisher,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Api, Role::Scheduler, Role::Worker, Role::Admin, Role::Publisher];

    /// Its user in `nats-server.conf`.
    pub fn nats_user(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Publisher => "example-publisher",
        }
    }

    /// Its user in the Redis ACL file (`redis-users.sh`).
    pub fn redis_user(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            role => role.nats_user(),
        }
    }

    /// The inbox prefix its NATS permissions allow (none for admin, which receives nothing).
    pub fn inbox_prefix(self) -> Option<&'static str> {
        match self {
            Role::Api => Some("_INBOX_api"),
            Role::Scheduler => Some("_INBOX_scheduler"),
            Role::Worker => Some("_INBOX_worker"),
            Role::Admin => None,
            Role::Publisher => Some("_INBOX_example-publisher"),
        }
    }

    fn env_name(self) -> &'static str {
        match self {
            Role::Api => "API",
            Role::Scheduler => "SCHEDULER",
            Role::Worker => "WORKER",
            Role::Admin => "ADMIN",
            Role::Publisher => "PUBLISHER",
        }
    }

    /// The variable `nats-server.conf` reads this role's password from.
    pub fn nats_password_var(self) -> String {
        match self {
            Role::Publisher => "SY_NATS_EXAMPLE_PUBLISHER_PASSWORD".into(),
            role => format!("SY_NATS_{}_PASSWORD", role.env_name()),
        }
    }

    /// The variable `redis-users.sh` reads this role's password from.
    pub fn redis_password_var(self) -> String {
        format!("SY_REDIS_{}_PASSWORD", self.env_name())
    }
}

/// The passwords of a secured [`Servers`], per role (NATS, Redis).
#[derive(Debug, Clone)]
struct Secrets {
    passwords: Vec<(Role, String, String)>,
}

impl Secrets {
    /// Fresh passwords, with characters a URL must percent-encode (`@`, `:`, `/`), so the parts'
    /// reading of credentials in URLs is under test too.
    fn generate() -> Secrets {
        let mut random = [0u8; 16 * 5 * 2];
        File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).expect("reading /dev/urandom");
        let mut chunks = random.chunks(16).map(|chunk| chunk.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let passwords = Role::ALL
            .iter()
            .map(|role| (*role, format!("n@ts:{}/x", chunks.next().unwrap()), format!("r@dis:{}/x", chunks.next().unwrap())))
            .collect();
        Secrets { passwords }
    }

    fn nats(&self, role: Role) -> &str {
        &self.passwords.iter().find(|(r, _, _)| *r == role).expect("every role has passwords").1
    }

    fn redis(&self, role: Role) -> &str {
        &self.passwords.iter().find(|(r, _, _)| *r == role).expect("every role has passwords").2
    }
}

/// How a process of one role reaches the servers: URLs with its credentials, and the
/// environment that goes with them (its inbox prefix).
#[derive(Debug, Clone)]
pub struct Connection {
    pub nats_url: String,
    pub redis_url: String,
    pub env: Vec<(String, String)>,
}

/// `text` with every character a URL's user information cannot hold percent-encoded.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl Servers {
    /// The servers, Redis as `SWITCHYARD_TEST_REDIS` says ([`RedisMode::from_env`]).
    pub async fn start() -> Servers {
        Servers::start_with(None, RedisMode::from_env()).await
    }

    /// The servers with Redis run as `mode`.
    pub async fn start_redis_as(mode: RedisMode) -> Servers {
        Servers::start_with(None, mode).await
    }

    /// The servers with `broker-config/secure/`: nats-server with `nats-server.conf` (users,
    /// passwords, permissions per role), redis-server with `redis.conf` and the ACL file
    /// `redis-users.sh` writes. Only addresses, ports and data directories are given on the
    /// command line; every role gets fresh passwords through the variables the files read.
    pub async fn start_secured() -> Servers {
        Servers::start_with(Some(Secrets::generate()), RedisMode::Single).await
    }

    async fn start_with(secrets: Option<Secrets>, redis: RedisMode) -> Servers {
        let dir = Dir::new();
        let logs: LogList = Arc::default();
        // From here on a panic must still show the logs gathered so far.
        let guard = StartGuard { dir: dir.clone(), logs: logs.clone(), done: false };
        let (nats, nats_port) = start_nats(&dir, &logs, secrets.as_ref()).await;
        let redis = match &secrets {
            Some(secrets) => RedisServers::single(start_redis(&dir, &logs, Some(secrets)).await),
            None => RedisServers::start(redis, &dir, &logs).await,
        };
        let mut guard = guard;
        guard.done = true;
        Servers { nats, redis, nats_port, secrets, logs, dir }
    }

    /// Whether these servers run the secured configuration.
    pub fn is_secured(&self) -> bool {
        self.secrets.is_some()
    }

    /// How a process of `role` logs in: with its credentials and inbox prefix on secured
    /// servers, the plain URLs otherwise.
    pub fn connection(&self, role: Role) -> Connection {
        let Some(secrets) = &self.secrets else {
            return Connection { nats_url: self.nats_url(), redis_url: self.redis_url(), env: Vec::new() };
        };
        let nats_url = format!("nats://{}:{}@127.0.0.1:{}", role.nats_user(), url_encode(secrets.nats(role)), self.nats_port);
        let redis_url =
            self.redis.url().replacen("redis://", &format!("redis://{}:{}@", role.redis_user(), url_encode(secrets.redis(role))), 1);
        let env = role.inbox_prefix().map(|prefix| ("SWITCHYARD_NATS_INBOX_PREFIX".to_string(), prefix.to_string())).into_iter().collect();
        Connection { nats_url, redis_url, env }
    }

    /// The NATS password of `role` on secured servers.
    pub fn nats_password(&self, role: Role) -> Option<String> {
        self.secrets.as_ref().map(|secrets| secrets.nats(role).to_string())
    }

    /// The Redis password of `role` on secured servers.
    pub fn redis_password(&self, role: Role) -> Option<String> {
        self.secrets.as_ref().map(|secrets| secrets.redis(role).to_string())
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn nats(&self) -> &Proc {
        &self.nats
    }

    /// The (first) Redis data server.
    pub fn redis(&self) -> &Proc {
        self.redis.nodes().next().expect("a Redis server")
    }

    /// Every Redis server of this test (the cluster's masters, the Sentinels' master and replica).
    pub fn redis_servers(&self) -> &RedisServers {
        &self.redis
    }

    /// Where the logs (and the servers' data) are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts any command as a [`Proc`] logging into this directory.
    pub fn spawn(&self, name: &str, command: Command) -> Proc {
        Proc::spawn(name, command, &self.dir, &self.logs)
    }

    /// Prints the last `lines` lines of every log started here.
    pub fn print_logs(&self, lines: usize) {
        print_logs(&self.logs, lines);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SWITCHYARD_KEEP_LOGS").is_some() {
            self.print_logs(60);
            self.dir.keep();
            eprintln!("[harness] logs kept in {}", self.dir.path().display());
        }
    }
}

/// [`Servers`] + `switchyard api` (+ `switchyard scheduler`), torn down on drop.
pub struct Stack {
    // Fields drop in order: Switchyard processes before the servers they use.
    api: Proc,
    scheduler: Option<Proc>,
    servers: Servers,
    api_port: u16,
    scheduler_port: Option<u16>,
    options: StackOptions,
    http: reqwest::Client,
    worker_count: Mutex<u32>,
    replica_count: Mutex<u32>,
}

/// How many times a server whose port was taken in between is restarted on a new one.
const PORT_ATTEMPTS: usize = 5;

impl Stack {
    /// Everything with default options.
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    pub async fn start_with(options: StackOptions) -> Stack {
        let servers = if options.secured { Servers::start_secured().await } else { Servers::start_redis_as(options.redis).await };
        let (dir, logs) = (servers.dir.clone(), servers.logs.clone());
        let http = stack_http();
        let (scheduler, scheduler_port) = if options.scheduler {
            let (proc, port) = start_scheduler(&dir, &logs, &http, "scheduler", &options, &servers.connection(Role::Scheduler)).await;
            (Some(proc), Some(port))
        } else {
            (None, None)
        };

        let (api, api_port) = start_api(&dir, &logs, &http, "api", &options, &servers.connection(Role::Api)).await;

        Stack {
            api,
            scheduler,
            servers,
            api_port,
            scheduler_port,
            options,
            http,
            worker_count: Mutex::new(0),
            replica_count: Mutex::new(0),
        }
    }

    pub fn options(&self) -> &StackOptions {
        &self.options
    }

    /// Starts one more `switchyard api` on this stack's NATS and Redis, with the same options
    /// (auth, queue timeout, extra arguments): a second replica, sharing the registry, the API
    /// keys and the rate limits through Redis. Waits until its `/ready` answers 200.
    pub async fn api_replica(&self) -> ApiReplica {
        let n = {
            let mut count = self.replica_count.lock().unwrap();
            *count += 1;
            *count
        };
        let (dir, logs) = (self.servers.dir.clone(), self.servers.logs.clone());
        let name = format!("api-replica-{n}");
        let (proc, port) = start_api(&dir, &logs, &self.http, &name, &self.options, &self.servers.connection(Role::Api)).await;
        ApiReplica { proc, port }
    }

    /// Starts one more `switchyard scheduler` with the same options, and waits for its `/health`.
    pub async fn scheduler_replica(&self) -> Proc {
        let n = {
            let mut count = self.replica_count.lock().unwrap();
            *count += 1;
            *count
        };
        let (dir, logs) = (self.servers.dir.clone(), self.servers.logs.clone());
        let name = format!("scheduler-replica-{n}");
        start_scheduler(&dir, &logs, &self.http, &name, &self.options, &self.servers.connection(Role::Scheduler)).await.0
    }

    /// Runs `switchyard <args…>` against this stack's servers (`SWITCHYARD_NATS_URL` and
    /// `SWITCHYARD_REDIS_URL` set; as [`Role::Admin`] when secured) to completion, e.g.
    /// `["keys", "create", "--user", "u"]`.
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        let admin = self.servers.connection(Role::Admin);
        let mut command =
            switchyard_command(&switchyard_bin(), &admin.nats_url, &admin.redis_url, &with_env(&self.options.env, &admin.env));
        command.args(args).stdin(Stdio::null());
        command.output().unwrap_or_else(|e| panic!("running switchyard {args:?}: {e}"))
    }

    /// `http://127.0.0.1:<api port><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// `http://127.0.0.1:<scheduler port><path>`; panics without a scheduler.
    pub fn scheduler_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.scheduler_port.expect("this stack runs no scheduler"))
    }

    pub fn nats_url(&self) -> String {
        self.servers.nats_url()
    }

    pub fn redis_url(&self) -> String {
        self.servers.redis_url()
    }

    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    /// The HTTP client the harness uses (no proxy, 120 s total timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn api(&self) -> &Proc {
        &self.api
    }

    pub fn scheduler(&self) -> Option<&Proc> {
        self.scheduler.as_ref()
    }

    pub fn nats(&self) -> &Proc {
        self.servers.nats()
    }

    pub fn redis(&self) -> &Proc {
        self.servers.redis()
    }

    /// Starts `switchyard worker <args…>` against this stack's servers (the URLs go in
    /// through `SWITCHYARD_NATS_URL` / `SWITCHYARD_REDIS_URL`; as [`Role::Worker`] when
    /// secured). It returns at once; see
    /// [`Stack::worker_id`] and [`Stack::wait_for_model`] to wait until it serves.
    pub fn worker(&self, args: &[&str]) -> Proc {
        let n = {
            let mut count = self.worker_count.lock().unwrap();
            *count += 1;
            *count
        };
        let name = format!("worker-{n}-{}", args.first().copied().unwrap_or("none"));
        let worker = self.servers.connection(Role::Worker);
        let mut command =
            switchyard_command(&switchyard_bin(), &worker.nats_url, &worker.redis_url, &with_env(&self.options.env, &worker.env));
        single_threaded(&mut command, &self.options.env);
        command.arg("worker").args(args);
        self.servers.spawn(&name, command)
    }

    /// A new NATS client connected to this stack's server.
    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats_url()).await.expect("connecting to nats-server")
    }

    /// A new Redis connection to this stack's Redis, whichever way it runs (as [`Role::Admin`]
    /// when secured).
    pub async fn redis_conn(&self) -> switchyard_broker::Redis {
        switchyard_broker::connect_redis(&self.servers.connection(Role::Admin).redis_url).await.expect("connecting to Redis")
    }

    /// Subscribes to every reply subject (`sy.reply.>`) and decodes the stream events.
    pub async fn tap_replies(&self) -> ReplyTap {
        ReplyTap::new(self.nats_client().await).await
    }

    /// Worker ids in the `sy:workers` sorted set, live or not.
    pub async fn registered_worker_ids(&self) -> Vec<String> {
        let mut redis = self.redis_conn().await;
        redis.zrange(keys::WORKERS, 0, -1).await.expect("ZRANGE sy:workers")
    }

    /// The registry record of `worker` (matched by pid), if it has one.
    pub async fn worker_record(&self, worker: &Proc) -> Option<WorkerRecord> {
        let mut redis = self.redis_conn().await;
        for id in self.registered_worker_ids().await {
            let blob: Option<Vec<u8>> = redis.get(keys::worker(&id)).await.ok()?;
            if let Some(record) = blob.and_then(|blob| decode::<WorkerRecord>(&blob).ok())
                && record.pid == worker.pid()
            {
                return Some(record);
            }
        }
        None
    }

    /// Waits (up to 60 s) until `worker` is in the registry, and returns its worker id.
    pub async fn worker_id(&self, worker: &Proc) -> String {
        eventually(Duration::from_secs(60), &format!("{} to register", worker.name()), || async {
            if let Some(status) = worker.try_status() {
                panic!("{} exited ({}) before registering:\n{}", worker.name(), Proc::describe_exit(status), tail(&worker.log(), 40));
            }
            self.worker_record(worker).await.map(|record| record.worker_id)
        })
        .await
    }

    /// Model ids in `GET /v1/models`.
    pub async fn models(&self) -> Vec<String> {
        let response = self.http.get(self.api_url("/v1/models")).send().await.expect("GET /v1/models");
        let status = response.status();
        let body: Value = response.json().await.expect("GET /v1/models returns JSON");
        assert_eq!(status, 200, "GET /v1/models: {body}");
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /v1/models has no data array: {body}"))
            .iter()
            .map(|model| model["id"].as_str().unwrap_or_else(|| panic!("model without id: {model}")).to_string())
            .collect()
    }

    /// Waits (up to 60 s) until `model` is listed in `GET /v1/models`.
    pub async fn wait_for_model(&self, model: &str) {
        eventually(Duration::from_secs(60), &format!("model {model} in /v1/models"), || async {
            self.models().await.iter().any(|m| m == model).then_some(())
        })
        .await
    }

    /// Starts a worker and waits until it is registered and `model` is listed.
    pub async fn ready_worker(&self, args: &[&str], model: &str) -> (Proc, String) {
        let worker = self.worker(args);
        let id = self.worker_id(&worker).await;
        self.wait_for_model(model).await;
        (worker, id)
    }

    /// `POST <path>` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.api_url(path)).json(body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST <path>` and the response's status and JSON body (panics if the body is not JSON).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("reading response body");
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path} → {status}: body is not JSON ({e}): {text:?}"));
        (status, value)
    }

    /// `POST <path>` expecting a 200 `text/event-stream` response, read as it arrives.
    pub async fn post_stream(&self, path: &str, body: &Value) -> sse::SseReader {
        let response = self.post(path, body).await;
        let status = response.status();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            panic!("POST {path} (stream) → {status}: {text}");
        }
        assert!(content_type.starts_with("text/event-stream"), "POST {path} (stream): content-type {content_type:?}");
        sse::SseReader::new(response)
    }

    /// `POST <path>` expecting a 200 `text/event-stream` response; reads it to the end, checks
    /// its framing ([`sse::parse_body`]) and returns the JSON events before `[DONE]`.
    pub async fn post_stream_all(&self, path: &str, body: &Value) -> Vec<Value> {
        let response = self.post(path, body).await;
        let status = response.status();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = response.text().await.expect("reading the stream");
        assert_eq!(status, 200, "POST {path} (stream): {text}");
        assert!(content_type.starts_with("text/event-stream"), "POST {path} (stream): content-type {content_type:?}");
        sse::parse_body(&text)
    }

    /// Where this stack's logs are.
    pub fn log_dir(&self) -> &Path {
        self.servers.dir()
    }

    /// Prints the last lines of every log this stack started.
    pub fn print_logs(&self, lines: usize) {
        self.servers.print_logs(lines);
    }
}

/// A further `switchyard api` process started by [`Stack::api_replica`]; killed on drop.
pub struct ApiReplica {
    proc: Proc,
    port: u16,
}

impl ApiReplica {
    /// `http://127.0.0.1:<replica port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}

/// Starts `switchyard scheduler` with `options` and waits for `/health`.
async fn start_scheduler(
    dir: &Arc<Dir>,
    logs: &LogList,
    http: &reqwest::Client,
    name: &str,
    options: &StackOptions,
    connection: &Connection,
) -> (Proc, u16) {
    let bin = switchyard_bin();
    let (nats_url, redis_url) = (connection.nats_url.as_str(), connection.redis_url.as_str());
    let env = with_env(&options.env, &connection.env);
    start_http_process(dir, logs, http, name, "/health", |port| {
        let mut command = switchyard_command(&bin, nats_url, redis_url, &env);
        command.args(["scheduler", "--nats-url", nats_url, "--redis-url", redis_url]);
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
        command.args(["--reap-interval", &duration_arg(options.reap_interval)]);
        command.args(&options.scheduler_args);
        command
    })
    .await
}

/// Starts `switchyard api` with `options` and waits for `/ready`.
async fn start_api(
    dir: &Arc<Dir>,
    logs: &LogList,
    http: &reqwest::Client,
    name: &str,
    options: &StackOptions,
    connection: &Connection,
) -> (Proc, u16) {
    let bin = switchyard_bin();
    let (nats_url, redis_url) = (connection.nats_url.as_str(), connection.redis_url.as_str());
    let env = with_env(&options.env, &connection.env);
    start_http_process(dir, logs, http, name, "/ready", |port| {
        let mut command = switchyard_command(&bin, nats_url, redis_url, &env);
        if name == "api" {
            single_threaded(&mut command, &options.env);
        }
        command.args(["api", "--listen", &format!("127.0.0.1:{port}")]);
        command.args(["--nats-url", nats_url, "--redis-url", redis_url]);
        command.args(["--queue-timeout", &duration_arg(options.queue_timeout)]);
        if let Some(limit) = options.body_limit {
            command.args(["--body-limit", &limit.to_string()]);
        }
        if options.no_auth {
            command.arg("--no-auth");
        }
        command.args(&options.api_args);
        command
    })
    .await
}

/// Prints logs when [`Servers::start`] panics half-way.
struct StartGuard {
    dir: Arc<Dir>,
    logs: LogList,
    done: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.done {
            print_logs(&self.logs, 60);
            self.dir.keep();
            eprintln!("[harness] stack failed to start; logs kept in {}", self.dir.path().display());
        }
    }
}

fn print_logs(logs: &LogList, lines: usize) {
    for (name, path) in logs.lock().unwrap().iter() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        eprintln!("===== {name} ({}) — last {lines} lines =====\n{}", path.display(), tail(&text, lines));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first api and every worker run on one thread, as `switchyard dev` runs them on a small
/// machine; api replicas and the scheduler keep the default (a thread per core), so both
/// runtimes are under test. A test's own `SWITCHYARD_THREADS` wins.
fn single_threaded(command: &mut Command, env: &[(String, String)]) {
    if !env.iter().any(|(key, _)| key == "SWITCHYARD_THREADS") {
        command.env("SWITCHYARD_THREADS", "1");
    }
}

/// A test's own environment for a process, and a role's on top (the role's wins).
fn with_env(env: &[(String, String)], role: &[(String, String)]) -> Vec<(String, String)> {
    env.iter().filter(|(key, _)| !role.iter().any(|(k, _)| k == key)).chain(role).cloned().collect()
}

fn switchyard_command(bin: &Path, nats_url: &str, redis_url: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        // The test's own SWITCHYARD_* settings must not leak into the stack (the log filter may).
        if key.to_string_lossy().starts_with("SWITCHYARD_") && key != "SWITCHYARD_LOG" {
            command.env_remove(key);
        }
    }
    command.env("SWITCHYARD_NATS_URL", nats_url).env("SWITCHYARD_REDIS_URL", redis_url);
    command.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// `broker-config/secure/<name>`.
pub fn secure_config(name: &str) -> PathBuf {
    workspace_root().join("broker-config/secure").join(name)
}

async fn start_nats(dir: &Arc<Dir>, logs: &LogList, secrets: Option<&Secrets>) -> (Proc, u16) {
    let bin = nats_server_bin();
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        let store = dir.path().join(format!("nats-{attempt}"));
        let mut command = Command::new(&bin);
        if let Some(secrets) = secrets {
            command.arg("-c").arg(secure_config("nats-server.conf"));
            for role in Role::ALL {
                command.env(role.nats_password_var(), secrets.nats(role));
            }
        }
        command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(&store);
        // For debugging: e.g. SWITCHYARD_TEST_NATS_ARGS="-DV" traces the protocol into the log.
        if let Ok(extra) = std::env::var("SWITCHYARD_TEST_NATS_ARGS") {
            command.args(extra.split_whitespace());
        }
        let proc = Proc::spawn(&format!("nats-server-{attempt}"), command, dir, logs);
        if wait_for_port(&proc, port, |stream| {
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
        })
        .await
        {
            return (proc, port);
        }
    }
    panic!("nats-server did not start after {PORT_ATTEMPTS} attempts");
}

async fn start_redis(dir: &Arc<Dir>, logs: &LogList, secrets: Option<&Secrets>) -> (Proc, u16) {
    let Some(secrets) = secrets else { return redis_servers::start_node(dir, logs, "redis-server", None, &[]).await };
    // The ACL file as the secured configuration makes it: redis-users.sh from the passwords.
    let acl_file = dir.path().join("redis-acl/users.acl");
    let mut write = Command::new("sh");
    write.arg(secure_config("redis-users.sh")).arg(&acl_file);
    for role in Role::ALL {
        write.env(role.redis_password_var(), secrets.redis(role));
    }
    let output = write.output().expect("running broker-config/secure/redis-users.sh");
    assert!(output.status.success(), "redis-users.sh failed: {}", String::from_utf8_lossy(&output.stderr));
    let extra = ["--aclfile".to_string(), acl_file.display().to_string()];
    redis_servers::start_node(dir, logs, "redis-server", Some(&secure_config("redis.conf")), &extra).await
}

/// Waits until `proc` answers on `port` as `answers` expects; false if it exited first
/// (typically: the port was taken), panics if it never answers.
async fn wait_for_port(proc: &Proc, port: u16, answers: impl Fn(TcpStream) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if proc.try_status().is_some() {
            eprintln!("[harness] {} exited at start; retrying on another port:\n{}", proc.name(), tail(&proc.log(), 10));
            return false;
        }
        if let Ok(stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            if answers(stream) {
                return true;
            }
        }
        assert!(Instant::now() < deadline, "{} does not answer on port {port}:\n{}", proc.name(), tail(&proc.log(), 40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a Switchyard process that serves HTTP, retrying on another port if it exits at
/// start, and waits (up to 60 s) until `ready_path` answers 200.
async fn start_http_process(
    dir: &Arc<Dir>,
    logs: &LogList,
    http: &reqwest::Client,
    name: &str,
    ready_path: &str,
    command: impl Fn(u16) -> Command,
) -> (Proc, u16) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        let proc = Proc::spawn(&format!("{name}-{attempt}"), command(port), dir, logs);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.try_status() {
                let log = proc.log();
                let port_taken = log.contains("in use") || log.contains("AddrInUse");
                if port_taken && attempt < PORT_ATTEMPTS {
                    break;
                }
                panic!("switchyard {name} exited at start ({}):\n{}", Proc::describe_exit(status), tail(&log, 40));
            }
            let last = match http.get(format!("http://127.0.0.1:{port}{ready_path}")).timeout(Duration::from_secs(2)).send().await {
                Ok(response) if response.status() == 200 => return (proc, port),
                Ok(response) => format!("{} {}", response.status(), response.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "switchyard {name}: GET {ready_path} never answered 200 (last: {last}):\n{}",
                tail(&proc.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    unreachable!()
}

/// One event seen on a reply subject, with the job and message it came in.
#[derive(Debug, Clone)]
pub struct TapEvent {
    pub job_id: String,
    pub seq: u64,
    pub body: EventBody,
}

/// Every event published on `sy.reply.>` since the tap was created, one at a time (a
/// message of several events is split).
pub struct ReplyTap {
    subscriber: async_nats::Subscriber,
    pending: VecDeque<TapEvent>,
    seen: Vec<(String, TapEvent)>,
    _client: async_nats::Client,
}

impl ReplyTap {
    async fn new(client: async_nats::Client) -> ReplyTap {
        let subscriber = client.subscribe("sy.reply.>").await.expect("subscribing to sy.reply.>");
        // The subscription must be in place on the server before the test publishes anything.
        switchyard_broker::sync_with_server(&client).await.expect("a round trip to nats-server");
        ReplyTap { subscriber, pending: VecDeque::new(), seen: Vec::new(), _client: client }
    }

    /// The next event, waiting at most `timeout`; panics on a message that does not decode.
    pub async fn next(&mut self, timeout: Duration) -> Option<TapEvent> {
        while self.pending.is_empty() {
            let message = tokio::time::timeout(timeout, self.subscriber.next()).await.ok()??;
            let decoded: StreamEvent = decode(&message.payload).unwrap_or_else(|e| panic!("undecodable event on {}: {e}", message.subject));
            for body in decoded.events {
                let event = TapEvent { job_id: decoded.job_id.clone(), seq: decoded.seq, body };
                self.seen.push((message.subject.to_string(), event.clone()));
                self.pending.push_back(event);
            }
        }
        self.pending.pop_front()
    }

    /// Waits up to `timeout` for an event matching `pred`, keeping all others in [`ReplyTap::seen`].
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&TapEvent) -> bool) -> Option<TapEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await?;
            if pred(&event) {
                return Some(event);
            }
        }
    }

    /// Reads whatever arrives within `quiet` of the previous event.
    pub async fn drain(&mut self, quiet: Duration) {
        while self.next(quiet).await.is_some() {}
    }

    /// Every event received so far, with its subject.
    pub fn seen(&self) -> &[(String, TapEvent)] {
        &self.seen
    }

    /// Job ids with a `Started` event from each worker id.
    pub fn started_by(&self) -> Vec<(String, String, u32)> {
        self.seen
            .iter()
            .filter_map(|(_, event)| match &event.body {
                EventBody::Started { worker_id, attempt, .. } => Some((event.job_id.clone(), worker_id.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    /// The distinct worker ids that started a job.
    pub fn workers_seen(&self) -> HashSet<String> {
        self.started_by().into_iter().map(|(_, worker, _)| worker).collect()
    }
}

/// Asserts the OpenAI error body: `{"error": {"message": str, "type": str, "param": str|null,
/// "code": str|null}}`, and returns the inner object.
pub fn assert_openai_error(body: &Value) -> &serde_json::Map<String, Value> {
    let error = body.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("not an OpenAI error body: {body}"));
    let message = error.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("error.message missing: {body}"));
    assert!(!message.trim().is_empty(), "error.message is empty: {body}");
    assert!(error.get("type").is_some_and(Value::is_string), "error.type must be a string: {body}");
    assert!(error.get("param").is_some_and(|p| p.is_null() || p.is_string()), "error.param must be present (string or null): {body}");
    assert!(error.get("code").is_some_and(|c| c.is_null() || c.is_string()), "error.code must be present (string or null): {body}");
    error
}
