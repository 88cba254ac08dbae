//! The clients people run batches with, unchanged, against the real stack: the official OpenAI
//! Python SDK (Files + Batch API, embeddings too, and a cancel) and the `switchyard batch` CLI
//! (submit --wait, status, list, download, cancel, a malformed file, and an api that wants keys).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::batch::{BatchClient, chat_input};
use switchyard_tests::{Stack, python_with_openai, switchyard_bin};
use switchyard_worker::backends::echo::debug_vector;

const CHAT: &str = "/v1/chat/completions";

/// The slow model of a stack: an echo worker pausing 50 ms between tokens, on few slots, so a
/// batch of it is still running when the test cancels it.
const SLOW: &str = "slow-echo";

async fn slow_worker(stack: &Stack, slots: &str) -> switchyard_tests::Proc {
    let args = ["echo", "--name", SLOW, "--embedding-name", "slow-echo-embedding", "--slots", slots, "--delay", "50ms"];
    stack.ready_worker(&args, SLOW).await.0
}

const SDK_SCRIPT: &str = r#"
import base64, json, os, struct, sys, time
import openai
from openai import OpenAI
from openai.types import Batch, FileDeleted, FileObject

base_url, workdir, slow_model, expected_json = sys.argv[1:5]
expected = json.loads(expected_json)
client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
TERMINAL = ("completed", "failed", "expired", "cancelled")

def strict(model, response):
    """The parsed object of a raw response, after checking its JSON against the SDK's own type
    strictly (types and literals exactly as the SDK declares them, not coerced)."""
    raw = json.loads(response.http_response.text)
    model.model_validate(raw, strict=True)
    return response.parse()

def strict_page(model, response):
    raw = json.loads(response.http_response.text)
    assert raw["object"] == "list" and isinstance(raw["has_more"], bool), raw
    for item in raw["data"]:
        model.model_validate(item, strict=True)
    ids = [item["id"] for item in raw["data"]]
    assert (raw.get("first_id"), raw.get("last_id")) == ((ids[0], ids[-1]) if ids else (None, None)), raw
    return response.parse()

def write_jsonl(name, lines):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return path

def upload(path):
    with open(path, "rb") as f:
        uploaded = strict(FileObject, client.files.with_raw_response.create(file=f, purpose="batch"))
    assert uploaded.object == "file" and uploaded.purpose == "batch", uploaded
    assert uploaded.bytes == os.path.getsize(path), (uploaded.bytes, os.path.getsize(path))
    assert uploaded.filename == os.path.basename(path), uploaded
    assert uploaded.id and uploaded.created_at > 0, uploaded
    return uploaded

def wait(batch_id, done=lambda b: b.status in TERMINAL, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        batch = strict(Batch, client.batches.with_raw_response.retrieve(batch_id))
        assert batch.id == batch_id and batch.object == "batch", batch
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status} after {timeout}s: {batch}"
        time.sleep(0.1)

def lines_of(file_id):
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    assert text.endswith("\n"), repr(text[-100:])
    return [json.loads(line) for line in text.splitlines()]

def by_custom_id(custom_ids, *files):
    seen = {}
    for line in (line for lines in files for line in lines):
        assert line["custom_id"] not in seen, ("answered twice", line)
        assert line["id"].startswith("batch_req_"), line
        seen[line["custom_id"]] = line
    assert sorted(seen) == sorted(custom_ids), (sorted(seen), sorted(custom_ids))
    return seen

# --- A chat batch: upload, create with metadata, poll to completed, read the output file.
N = 40
chat_ids = [f"chat-{i}" for i in range(N)]
prompts = {cid: f"sdk line {i} says hello" for i, cid in enumerate(chat_ids)}
chat_path = write_jsonl("chat.jsonl", [
    {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "echo", "messages": [{"role": "user", "content": prompts[cid]}], "max_tokens": 64}}
    for cid in chat_ids])
chat_file = upload(chat_path)
assert strict(FileObject, client.files.with_raw_response.retrieve(chat_file.id)).id == chat_file.id
metadata = {"suite": "batch_clients", "client": "openai-python"}
batch = strict(Batch, client.batches.with_raw_response.create(input_file_id=chat_file.id, endpoint="/v1/chat/completions",
                                                             completion_window="24h", metadata=metadata))
assert batch.id.startswith("batch_") and batch.object == "batch", batch
assert batch.status == "validating" and batch.endpoint == "/v1/chat/completions", batch
assert batch.input_file_id == chat_file.id and batch.completion_window == "24h", batch
assert batch.metadata == metadata and batch.created_at > 0 and batch.expires_at > batch.created_at, batch
done = wait(batch.id)
assert done.status == "completed", done
assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (N, N, 0), done.request_counts
assert done.in_progress_at and done.finalizing_at and done.completed_at, done
assert done.output_file_id and done.error_file_id is None and done.errors is None, done
assert done.metadata == metadata, done
lines = by_custom_id(chat_ids, lines_of(done.output_file_id))
for cid, line in lines.items():
    assert line["error"] is None, line
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"], line
    body = response["body"]
    assert body["object"] == "chat.completion" and body["model"] == "echo", line
    assert body["choices"][0]["message"]["role"] == "assistant", line
    assert body["choices"][0]["message"]["content"] == prompts[cid], (prompts[cid], line)
    assert body["choices"][0]["finish_reason"] == "stop", line
output_info = strict(FileObject, client.files.with_raw_response.retrieve(done.output_file_id))
assert output_info.purpose == "batch_output" and output_info.object == "file", output_info
assert output_info.bytes == len(client.files.content(done.output_file_id).content), output_info

# --- An embeddings batch: floats by default, base64 when the line asks for it.
emb_ids = [f"emb-{i}" for i in range(10)] + ["emb-base64"]
emb_path = write_jsonl("embeddings.jsonl", [
    {"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
     "body": dict({"model": "echo-embedding", "input": ["one input", "two inputs"]},
                  **({"encoding_format": "base64"} if cid == "emb-base64" else {}))}
    for cid in emb_ids])
# Both with an expiry: the upload's (multipart `expires_after[...]`), the output file's (JSON).
with open(emb_path, "rb") as f:
    emb_file = strict(FileObject, client.files.with_raw_response.create(
        file=f, purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}))
assert emb_file.expires_at == emb_file.created_at + 3600, emb_file
emb = client.batches.create(input_file_id=emb_file.id, endpoint="/v1/embeddings", completion_window="24h",
                            output_expires_after={"anchor": "created_at", "seconds": 7200})
assert emb.endpoint == "/v1/embeddings" and emb.metadata in (None, {}), emb
emb_done = wait(emb.id)
assert emb_done.status == "completed", emb_done
emb_output = client.files.retrieve(emb_done.output_file_id)
assert emb_output.expires_at == emb_output.created_at + 7200, emb_output
assert emb_done.request_counts.completed == len(emb_ids) and emb_done.request_counts.failed == 0, emb_done
for cid, line in by_custom_id(emb_ids, lines_of(emb_done.output_file_id)).items():
    assert line["response"]["status_code"] == 200, line
    body = line["response"]["body"]
    assert body["object"] == "list" and body["model"] == "echo-embedding", line
    assert [d["index"] for d in body["data"]] == [0, 1], line
    for d, want in zip(body["data"], expected):
        got = d["embedding"]
        if cid == "emb-base64":
            raw = base64.b64decode(got)
            got = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert len(got) == len(want) and all(abs(a - b) < 1e-6 for a, b in zip(got, want)), (cid, got, want)
    assert body["usage"]["prompt_tokens"] == 4, line

# --- A batch whose file does not validate: failed, with the SDK's errors.data[].line.
bad_path = os.path.join(workdir, "bad.jsonl")
with open(bad_path, "w") as f:
    f.write(json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}}) + "\n{not json\n")
bad = client.batches.create(input_file_id=upload(bad_path).id, endpoint="/v1/chat/completions", completion_window="24h")
bad_done = wait(bad.id)
assert bad_done.status == "failed" and bad_done.failed_at and bad_done.output_file_id is None, bad_done
assert bad_done.errors.object == "list", bad_done.errors
assert [(e.line, e.code) for e in bad_done.errors.data] == [(2, "invalid_json_line")], bad_done.errors
assert bad_done.errors.data[0].message, bad_done.errors

# --- A slow batch, cancelled while it runs: cancelling, then cancelled; every line answered once.
SLOW_N = 300
slow_ids = [f"slow-{i}" for i in range(SLOW_N)]
slow_path = write_jsonl("slow.jsonl", [
    {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": slow_model, "messages": [{"role": "user", "content": f"slow line {i} says hello"}]}}
    for i, cid in enumerate(slow_ids)])
slow = client.batches.create(input_file_id=upload(slow_path).id, endpoint="/v1/chat/completions", completion_window="24h")
wait(slow.id, lambda b: b.request_counts.completed >= 1 or b.status in TERMINAL)
cancelling = strict(Batch, client.batches.with_raw_response.cancel(slow.id))
assert cancelling.id == slow.id and cancelling.status in ("cancelling", "cancelled"), cancelling
assert cancelling.cancelling_at, cancelling
cancelled = wait(slow.id)
assert cancelled.status == "cancelled", cancelled
assert cancelled.cancelled_at and cancelled.cancelling_at, cancelled
counts = cancelled.request_counts
assert counts.total == SLOW_N and 1 <= counts.completed < SLOW_N and counts.completed + counts.failed == SLOW_N, counts
finished, not_run = lines_of(cancelled.output_file_id), lines_of(cancelled.error_file_id)
by_custom_id(slow_ids, finished, not_run)
assert len(finished) == counts.completed and len(not_run) == counts.failed, (len(finished), len(not_run), counts)
assert all(l["response"]["status_code"] == 200 for l in finished), finished[:3]
assert all(l["response"] is None and l["error"]["code"] == "batch_cancelled" for l in not_run), not_run[:3]
again = client.batches.cancel(slow.id)
assert again.status == "cancelled", again

# --- Listing: newest first, and the SDK's auto-pagination (limit=1 follows `after` page by page).
ours = [slow.id, bad.id, emb.id, batch.id]
listed = [b.id for b in client.batches.list()]
assert listed == ours, (listed, ours)
paged = [b.id for b in client.batches.list(limit=1)]
assert paged == listed, (paged, listed)
page = strict_page(Batch, client.batches.with_raw_response.list(limit=2))
assert [b.id for b in page.data] == ours[:2] and page.has_more, page

file_ids = [f.id for f in strict_page(FileObject, client.files.with_raw_response.list())]
for f in (chat_file.id, emb_file.id, done.output_file_id, emb_done.output_file_id, cancelled.error_file_id):
    assert f in file_ids, (f, file_ids)
inputs = [f.id for f in client.files.list(purpose="batch")]
assert chat_file.id in inputs and done.output_file_id not in inputs, inputs
outputs = [f.id for f in client.files.list(purpose="batch_output")]
assert done.output_file_id in outputs and chat_file.id not in outputs, outputs

# --- Deleting a file: gone from retrieve, content and list.
deleted = strict(FileDeleted, client.files.with_raw_response.delete(chat_file.id))
assert deleted.id == chat_file.id and deleted.deleted is True and deleted.object == "file", deleted
for call in (lambda: client.files.retrieve(chat_file.id), lambda: client.files.content(chat_file.id)):
    try:
        call()
        raise AssertionError("expected NotFoundError for a deleted file")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
assert chat_file.id not in [f.id for f in client.files.list()]
try:
    client.batches.retrieve("batch_does_not_exist")
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404, e

print("sdk batches ok")
"#;

#[tokio::test]
async fn the_openai_python_sdk_runs_lists_and_cancels_batches() {
    let python = tokio::task::spawn_blocking(python_with_openai).await.unwrap();
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "16"], "echo").await;
    stack.wait_for_model("echo-embedding").await;
    let _slow = slow_worker(&stack, "2").await;
    let workdir = tempfile::tempdir().unwrap();
    let expected = serde_json::to_string(&[debug_vector("one input", 16), debug_vector("two inputs", 16)]).unwrap();
    let mut command = Command::new(python);
    command.arg("-c").arg(SDK_SCRIPT).arg(stack.api_url("/v1")).arg(workdir.path()).arg(SLOW).arg(expected);
    command.env_remove("OPENAI_API_KEY").env_remove("OPENAI_BASE_URL");
    without_proxies(&mut command);
    let output = tokio::time::timeout(Duration::from_secs(300), tokio::task::spawn_blocking(move || command.output()))
        .await
        .expect("the SDK script finishes within 300 s")
        .unwrap()
        .expect("running python");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("sdk batches ok"), "the SDK script failed:\n{stdout}\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// `switchyard batch`.

/// Proxies from the environment would take the clients' requests to 127.0.0.1 elsewhere.
fn without_proxies(command: &mut Command) {
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        command.env_remove(name);
    }
}

/// `switchyard batch --api-url <api> <args…>`, run in `dir`, with no key from this process's
/// environment (`extra_env` may set one).
async fn batch_cli(dir: &Path, api: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(switchyard_bin());
    command.current_dir(dir).env_remove("OPENAI_API_KEY").env_remove("SWITCHYARD_API_URL").env("NO_COLOR", "1");
    without_proxies(&mut command);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.arg("batch").arg("--api-url").arg(api).args(args);
    let what = format!("switchyard batch {args:?}");
    tokio::time::timeout(Duration::from_secs(180), tokio::task::spawn_blocking(move || command.output()))
        .await
        .unwrap_or_else(|_| panic!("{what} finishes within 180 s"))
        .unwrap()
        .unwrap_or_else(|e| panic!("running {what}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with the command's output unless it exited 0; returns stdout.
fn succeeded(what: &str, output: &Output) -> String {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{what}: {:?}\nstdout: {stdout}\nstderr: {stderr}", output.status);
    stdout
}

/// The lines of a JSONL file, parsed.
fn jsonl(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text(&bytes)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display())))
        .collect()
}

/// Every `req-<i>` of `0..n` exactly once across the files; the lines by custom_id.
fn one_line_per_custom_id(n: usize, files: &[&[Value]]) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    for line in files.iter().flat_map(|lines| lines.iter()) {
        let id = line["custom_id"].as_str().unwrap_or_else(|| panic!("no custom_id: {line}")).to_string();
        assert!(seen.insert(id.clone(), line.clone()).is_none(), "custom_id {id} answered twice");
    }
    assert_eq!(seen.len(), n, "every line answered once");
    for i in 0..n {
        assert!(seen.contains_key(&format!("req-{i}")), "req-{i} missing");
    }
    seen
}

/// The echo worker's answer to `chat_input`'s line `req-<i>`: its own prompt.
fn assert_echoed(id: &str, line: &Value) {
    let i: usize = id.strip_prefix("req-").unwrap().parse().unwrap();
    assert_eq!(line["error"], Value::Null, "{line}");
    assert_eq!(line["response"]["status_code"], 200, "{line}");
    assert_eq!(line["response"]["body"]["choices"][0]["message"]["content"], format!("line {i} says hello"), "{line}");
}

/// The batch id: the first line `submit` prints on stdout.
fn batch_id(stdout: &str) -> String {
    let id = stdout.lines().next().unwrap_or_default().trim().to_string();
    assert!(id.starts_with("batch_"), "submit prints the batch id first: {stdout:?}");
    id
}

#[tokio::test]
async fn the_switchyard_batch_cli_submits_follows_lists_downloads_and_cancels() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "16"], "echo").await;
    let _slow = slow_worker(&stack, "1").await;
    let api = stack.api_url("/v1");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(cwd.join("requests.jsonl"), chat_input(60, "echo", &json!({ "max_tokens": 64 }))).unwrap();

    // submit --wait: uploads, follows, downloads; exit 0 and one output line per custom_id.
    let output = batch_cli(
        cwd,
        &api,
        &[
            "submit",
            "requests.jsonl",
            "--endpoint",
            CHAT,
            "--metadata",
            "suite=batch_clients",
            "--wait",
            "-o",
            "out.jsonl",
            "--errors",
            "err.jsonl",
        ],
        &[],
    )
    .await;
    let stdout = succeeded("submit --wait", &output);
    let id = batch_id(&stdout);
    assert!(stdout.contains(&format!("{id} completed: 60 done, 0 failed of 60")), "{stdout}");
    let lines = jsonl(&cwd.join("out.jsonl"));
    assert_eq!(lines.len(), 60);
    for (custom_id, line) in one_line_per_custom_id(60, &[&lines]) {
        assert_echoed(&custom_id, &line);
    }
    assert!(!cwd.join("err.jsonl").exists(), "no failed line, no error file");

    // status --json: the api's object as it is.
    let status = serde_json::from_str::<Value>(&succeeded("status --json", &batch_cli(cwd, &api, &["status", &id, "--json"], &[]).await))
        .expect("status --json prints JSON");
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["request_counts"], json!({ "total": 60, "completed": 60, "failed": 0 }), "{status}");
    assert_eq!(status["metadata"], json!({ "suite": "batch_clients" }), "{status}");
    assert_eq!(status["endpoint"], CHAT);
    let human = succeeded("status", &batch_cli(cwd, &api, &["status", &id], &[]).await);
    assert!(human.contains("status:       completed\n"), "{human}");
    assert!(human.contains("requests:     60 completed, 0 failed, 60 total\n"), "{human}");
    assert!(human.contains(&format!("output file:  {}\n", status["output_file_id"].as_str().unwrap())), "{human}");

    // download: the same output file again, byte for byte.
    let stdout =
        succeeded("download", &batch_cli(cwd, &api, &["download", &id, "-o", "again/out.jsonl", "--errors", "again/err.jsonl"], &[]).await);
    assert!(stdout.contains("output → again/out.jsonl"), "{stdout}");
    assert_eq!(std::fs::read(cwd.join("again/out.jsonl")).unwrap(), std::fs::read(cwd.join("out.jsonl")).unwrap());

    // A malformed file: submit --wait exits non-zero and names the bad lines.
    let good = |custom_id: &str| {
        json!({ "custom_id": custom_id, "method": "POST", "url": CHAT, "body": { "model": "echo", "messages": [{ "role": "user", "content": "hi" }] } }).to_string()
    };
    let bad_url =
        json!({ "custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": { "model": "echo-embedding", "input": "x" } })
            .to_string();
    std::fs::write(cwd.join("bad.jsonl"), [good("a"), "{not json".to_string(), bad_url, good("d")].join("\n") + "\n").unwrap();
    let output = batch_cli(cwd, &api, &["submit", "bad.jsonl", "--endpoint", CHAT, "--wait"], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a batch that fails validation exits 1: {stderr}");
    let bad_id = batch_id(&text(&output.stdout));
    assert!(stderr.contains("line 2: invalid_json_line: "), "{stderr}");
    assert!(stderr.contains("line 3: mismatched_endpoint: ") && stderr.contains("(param: url)"), "{stderr}");
    assert!(stderr.contains(&format!("batch {bad_id} failed")), "{stderr}");
    assert!(!cwd.join("bad.output.jsonl").exists() && !cwd.join("bad.errors.jsonl").exists());

    // cancel: a slow batch, cancelled while it runs; status --wait then ends non-zero, and
    // download (to <ID>.output.jsonl and <ID>.errors.jsonl here) has every line once.
    std::fs::write(cwd.join("slow.jsonl"), chat_input(200, SLOW, &json!({}))).unwrap();
    let stdout = succeeded("submit", &batch_cli(cwd, &api, &["submit", "slow.jsonl", "--endpoint", CHAT], &[]).await);
    let slow_id = batch_id(&stdout);
    let client = BatchClient::new(stack.http(), stack.api_url(""), None);
    client.wait_for(&slow_id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(1)).await;
    let stdout = succeeded("cancel", &batch_cli(cwd, &api, &["cancel", &slow_id], &[]).await);
    assert!(stdout == format!("{slow_id} cancelling\n") || stdout == format!("{slow_id} cancelled\n"), "{stdout:?}");
    let output = batch_cli(cwd, &api, &["status", &slow_id, "--wait"], &[]).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "a cancelled batch is not a success: {stdout}\n{stderr}");
    assert!(stdout.contains("status:       cancelled\n"), "{stdout}");
    assert!(stderr.contains(&format!("batch {slow_id} ended cancelled")), "{stderr}");
    succeeded("download", &batch_cli(cwd, &api, &["download", &slow_id], &[]).await);
    let finished = jsonl(&cwd.join(format!("{slow_id}.output.jsonl")));
    let not_run = jsonl(&cwd.join(format!("{slow_id}.errors.jsonl")));
    let lines = one_line_per_custom_id(200, &[&finished, &not_run]);
    assert!(!finished.is_empty() && !not_run.is_empty(), "{} finished, {} not run", finished.len(), not_run.len());
    for line in &not_run {
        assert_eq!(line["error"]["code"], "batch_cancelled", "{line}");
    }
    for line in &finished {
        let custom_id = line["custom_id"].as_str().unwrap();
        let i: usize = custom_id.strip_prefix("req-").unwrap().parse().unwrap();
        assert_eq!(lines[custom_id]["response"]["body"]["choices"][0]["message"]["content"], format!("line {i} says hello"), "{line}");
    }

    // list: newest first, every batch of this user, paged.
    let stdout = succeeded("list", &batch_cli(cwd, &api, &["list"], &[]).await);
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("ID ") && rows[0].contains("STATUS") && rows[0].contains("DONE/FAILED/TOTAL"), "{stdout}");
    let ids: Vec<&str> = rows[1..].iter().map(|row| row.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids, [slow_id.as_str(), bad_id.as_str(), id.as_str()], "{stdout}");
    let row = |batch: &str| rows.iter().find(|row| row.starts_with(batch)).unwrap().split_whitespace().collect::<Vec<_>>();
    assert_eq!(row(&id)[1..4], ["completed", CHAT, "60/0/60"], "{stdout}");
    assert_eq!(row(&bad_id)[1], "failed", "{stdout}");
    assert_eq!(row(&slow_id)[1], "cancelled", "{stdout}");
    let output = batch_cli(cwd, &api, &["list", "--limit", "1"], &[]).await;
    let stdout = succeeded("list --limit 1", &output);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.lines().nth(1).unwrap().starts_with(&slow_id), "{stdout}");
    assert!(text(&output.stderr).contains(&format!("switchyard batch list --after {slow_id}")), "{}", text(&output.stderr));
    let stdout = succeeded("list --after", &batch_cli(cwd, &api, &["list", "--limit", "1", "--after", &slow_id], &[]).await);
    assert!(stdout.lines().nth(1).unwrap().starts_with(&bad_id), "{stdout}");

    // An unknown batch: the api's 404 and its message.
    let output = batch_cli(cwd, &api, &["status", "batch_nope"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("HTTP 404 Not Found"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn the_switchyard_batch_cli_sends_the_key_an_api_with_auth_wants() {
    let stack = Stack::builder().with_auth().start().await;
    // (Not `ready_worker`: listing the models would need a key too. Registered is enough.)
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let created = stack.run_cli(&["keys", "create", "--user", "u"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let printed = text(&created.stdout);
    let key =
        printed.split_whitespace().find(|w| w.starts_with("sy-")).unwrap_or_else(|| panic!("no sy- secret in {printed:?}")).to_string();
    let api = stack.api_url("/v1");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(cwd.join("requests.jsonl"), chat_input(20, "echo", &json!({}))).unwrap();

    // Without a key the api refuses, and the CLI says so.
    let output = batch_cli(cwd, &api, &["submit", "requests.jsonl", "--endpoint", CHAT, "--wait"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("HTTP 401 Unauthorized"), "{}", text(&output.stderr));

    let output =
        batch_cli(cwd, &api, &["--api-key", &key, "submit", "requests.jsonl", "--endpoint", CHAT, "--wait", "-o", "out.jsonl"], &[]).await;
    let id = batch_id(&succeeded("submit --api-key --wait", &output));
    let lines = jsonl(&cwd.join("out.jsonl"));
    for (custom_id, line) in one_line_per_custom_id(20, &[&lines]) {
        assert_echoed(&custom_id, &line);
    }
    // The batch is the key's user's: OPENAI_API_KEY works too, no key does not.
    let status = succeeded(
        "status with OPENAI_API_KEY",
        &batch_cli(cwd, &api, &["status", &id, "--json"], &[("OPENAI_API_KEY", key.as_str())]).await,
    );
    assert_eq!(serde_json::from_str::<Value>(&status).unwrap()["status"], "completed");
    let output = batch_cli(cwd, &api, &["status", &id], &[]).await;
    assert!(text(&output.stderr).contains("HTTP 401 Unauthorized"), "{}", text(&output.stderr));

    // The dev key file (what `switchyard dev` writes) stands in for a key, for an api on this
    // machine: 127.0.0.1 and localhost alike.
    std::fs::create_dir(cwd.join(".switchyard")).unwrap();
    std::fs::write(cwd.join(".switchyard/dev-api-key"), format!("{key}\n")).unwrap();
    for url in [api.clone(), api.replace("127.0.0.1", "localhost")] {
        let status =
            succeeded(&format!("status via the dev key file at {url}"), &batch_cli(cwd, &url, &["status", &id, "--json"], &[]).await);
        assert_eq!(serde_json::from_str::<Value>(&status).unwrap()["id"], id.as_str());
    }
}
