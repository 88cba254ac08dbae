//! `switchyard dev`, the README's run command, as a user runs it: the whole stack comes up
//! on the ports it is given, serves a chat request with the key it printed, gives each part
//! its share of the machine's threads, and Ctrl-C stops every part it started.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_tests::openai::chat_request;
use switchyard_tests::{eventually, free_port, nats_server_bin, redis_server_bin, switchyard_bin, workspace_root};

/// `switchyard dev`, interrupted (and, failing that, killed) when dropped.
struct Dev {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Dev {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it printed, and the last lines it logged, for failure messages.
    fn report(&self) -> String {
        let log = std::fs::read_to_string(&self.err).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("{}\nstderr (last lines):\n{}", self.output(), lines[lines.len().saturating_sub(20)..].join("\n"))
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for switchyard dev") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
            if self.wait(Duration::from_secs(60)).is_none() {
                let _ = self.child.kill();
            }
        }
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Starts `switchyard dev` on free ports with a temporary home; returns it, the home and the
/// ports (api, nats, redis, scheduler).
fn start_dev() -> (Dev, tempfile::TempDir, [u16; 4]) {
    let home = tempfile::tempdir().expect("temporary home");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let [api, nats, redis, scheduler] = ports;
    // The brokers come from where the harness finds them, as setup puts them on PATH or in home.
    let path = [nats_server_bin(), redis_server_bin()]
        .iter()
        .map(|bin| bin.parent().expect("a folder").to_path_buf())
        .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()))
        .collect::<Vec<_>>();
    let (out, err) = (home.path().join("dev.out"), home.path().join("dev.err"));
    let mut command = Command::new(switchyard_bin());
    command
        .arg("dev")
        .arg("--home")
        .arg(home.path())
        .args(["--api-port", &api.to_string(), "--nats-port", &nats.to_string()])
        .args(["--redis-port", &redis.to_string(), "--scheduler-port", &scheduler.to_string()])
        // Parallel dev stacks: each worker any free port for its metrics.
        .args(["--worker-metrics-port", "0"])
        .arg("--chat-model")
        .arg(workspace_root().join("models/tiny-llama"))
        .arg("--embedding-model")
        .arg(workspace_root().join(".switchyard/models/all-minilm-l6-v2"))
        .env("PATH", std::env::join_paths(path).unwrap())
        .env_remove("SWITCHYARD_THREADS")
        .env_remove("GOMAXPROCS")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&err).unwrap());
    (Dev { child: command.spawn().expect("starting switchyard dev"), out, err }, home, ports)
}

/// The API key `switchyard dev` prints once the stack is up.
async fn printed_key(dev: &Dev) -> String {
    eventually(Duration::from_secs(120), "switchyard dev to print its API key", || {
        let printed = dev.output();
        async move {
            printed
                .lines()
                .find_map(|line| line.trim().strip_prefix("api key").map(|rest| rest.split_whitespace().next().unwrap_or("").to_string()))
        }
    })
    .await
}

#[tokio::test]
async fn dev_starts_the_stack_serves_and_stops_everything_on_ctrl_c() {
    let (mut dev, home, ports) = start_dev();
    let [api, ..] = ports;
    let key = printed_key(&dev).await;
    let printed = dev.output();
    assert!(key.starts_with("sy-"), "the dev key: {printed}");
    assert!(printed.contains(&format!("http://127.0.0.1:{api}/v1")), "{printed}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = format!("{} per part, {} for nats-server", (cores / 4).max(1), (cores / 2).max(1));
    assert!(printed.contains(&threads), "each part's share of the machine ({threads}): {printed}");

    let http = switchyard_tests::http_client().build().unwrap();
    let base = format!("http://127.0.0.1:{api}");
    let models = eventually(Duration::from_secs(60), "every default model to register", || {
        let request = http.get(format!("{base}/v1/models")).bearer_auth(&key).send();
        async move {
            let body: Value = request.await.ok()?.json().await.ok()?;
            let ids: Vec<String> = body["data"].as_array()?.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect();
            ["echo", "echo-embedding", "dummy", "tiny-llama", "all-minilm-l6-v2"]
                .iter()
                .all(|m| ids.iter().any(|id| id == m))
                .then_some(ids)
        }
    })
    .await;
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_request("echo", "hello from dev"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "models {models:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "hello from dev", "{body}");
    assert_eq!(std::fs::read_to_string(home.path().join("dev-api-key")).unwrap().trim(), key, "the key is kept in the home folder");

    dev.interrupt();
    let status = dev.wait(Duration::from_secs(90)).unwrap_or_else(|| panic!("switchyard dev did not stop on Ctrl-C: {}", dev.output()));
    assert!(status.success(), "switchyard dev exits 0 on Ctrl-C: {status:?}\n{}", dev.output());
    for port in ports {
        assert!(!listening(port), "port {port} still served after Ctrl-C: a part outlived dev");
    }
}

/// A second Ctrl-C exits at once (no drain, status 130), and still leaves no part running.
#[tokio::test]
async fn a_second_ctrl_c_leaves_no_part_behind() {
    use std::os::unix::process::ExitStatusExt;
    let (mut dev, _home, ports) = start_dev();
    printed_key(&dev).await;
    assert!(!dev.output().contains("stopping"), "the stack stopped before any Ctrl-C: {}", dev.report());
    dev.interrupt();
    // The second signal only counts once the first was handled (two pending signals may be
    // taken as one): dev prints "stopping…" when it was.
    eventually(Duration::from_secs(10), "switchyard dev to start stopping on the first Ctrl-C", || {
        let printed = dev.output();
        async move { printed.lines().any(|line| line.starts_with("stopping")).then_some(()) }
    })
    .await;
    dev.interrupt();
    let second = Instant::now();
    let status =
        dev.wait(Duration::from_secs(10)).unwrap_or_else(|| panic!("switchyard dev did not exit on a second Ctrl-C: {}", dev.report()));
    assert_eq!(
        (status.code(), status.signal()),
        (Some(130), None),
        "a second Ctrl-C exits at once with 130, without the drain ({:?} after it): {}",
        second.elapsed(),
        dev.report()
    );
    eventually(Duration::from_secs(10), "every part to die with dev", || async {
        ports.iter().all(|port| !listening(*port)).then_some(())
    })
    .await;
}
