//! The files store against a real nats-server with JetStream, on a free port, one per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use switchyard_broker::files::{FileError, FileRecord, FileStore, LEFTOVER_GRACE, new_file_id};
use switchyard_schemas::subject::FILES_BUCKET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Nats {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    async fn start() -> Nats {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let bin = switchyard_broker::find_executable("nats-server", &root.join(".switchyard/bin"))
            .expect("nats-server on PATH or in .switchyard/bin (scripts/setup.sh installs it)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("sy-files-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(bin);
        command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(&dir).stdout(Stdio::null()).stderr(Stdio::null());
        switchyard_broker::die_with_parent(&mut command);
        let server = Nats { child: command.spawn().unwrap(), dir, url: format!("nats://127.0.0.1:{port}") };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nats-server did not listen on {port}");
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(switchyard_broker::connect_nats(&self.url, "files-test", &Default::default()).await.unwrap())
    }

    /// A store on a connection of its own, as another api replica would have.
    async fn store(&self) -> FileStore {
        FileStore::open(&self.js().await).await.unwrap()
    }

    /// Bytes held by the bucket's stream: chunks and metadata.
    async fn stored_bytes(&self) -> u64 {
        let mut stream = self.js().await.get_stream(format!("OBJ_{FILES_BUCKET}")).await.unwrap();
        stream.info().await.unwrap().state.bytes
    }
}

fn record(owner: &str, purpose: &str, created_at: u64) -> FileRecord {
    FileRecord {
        id: new_file_id(),
        owner: owner.into(),
        filename: "input.jsonl".into(),
        purpose: purpose.into(),
        bytes: 0,
        created_at,
        expires_at: None,
        lines: None,
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// JSONL of at least `size` bytes, with empty lines among the requests and a last line without
/// a newline.
fn jsonl(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 200);
    let mut i = 0;
    while out.len() < size {
        if i % 50 == 7 {
            out.push(b'\n');
        } else {
            let pad = "x".repeat(i % 90);
            out.extend_from_slice(format!("{{\"custom_id\":\"r{i}\",\"pad\":\"{pad}\"}}\n").as_bytes());
        }
        i += 1;
    }
    out.extend_from_slice(b"{\"custom_id\":\"last\"}");
    out
}

fn lines_in(data: &[u8]) -> u64 {
    data.split(|&b| b == b'\n').filter(|line| !line.is_empty()).count() as u64
}

/// A body that arrives through a pipe in small writes, as an HTTP upload does: the store never
/// gets it whole.
fn piped(data: Vec<u8>) -> tokio::io::DuplexStream {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        for piece in data.chunks(1000) {
            if writer.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    reader
}

async fn read_all(store: &FileStore, id: &str) -> Vec<u8> {
    let mut content = store.content(id).await.unwrap();
    let mut out = Vec::new();
    content.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_5_mb_upload_streams_in_and_out_identically_on_any_replica() {
    let nats = Nats::start().await;
    let store = nats.store().await;
    let data = jsonl(5 * 1024 * 1024);
    let put = store.put(record("alice", "batch", 1000), piped(data.clone()), 10 * 1024 * 1024).await.unwrap();
    assert_eq!(put.bytes, data.len() as u64);
    assert_eq!(put.lines, Some(lines_in(&data)));
    assert!(put.lines.unwrap() > 50_000, "{put:?}");
    assert_eq!(store.get(&put.id).await.unwrap(), Some(put.clone()));
    assert!(read_all(&store, &put.id).await == data, "the body read back differs");

    // The object store cut it into chunks.
    let raw = nats.js().await.get_object_store(FILES_BUCKET).await.unwrap();
    let info = raw.info(&put.id).await.unwrap();
    assert!(info.chunks >= 5 * 1024 * 1024 / (128 * 1024), "{} chunks", info.chunks);

    // Another replica, on its own connection, sees and serves the same file.
    let other = nats.store().await;
    assert_eq!(other.get(&put.id).await.unwrap(), Some(put.clone()));
    assert_eq!(other.list("alice", None, None, 10, true).await.unwrap(), (vec![put.clone()], false));
    assert!(read_all(&other, &put.id).await == data, "the other replica reads a different body");
    assert!(other.delete(&put.id).await.unwrap());
    assert_eq!(store.get(&put.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_body_over_the_limit_or_broken_off_leaves_nothing_behind() {
    let nats = Nats::start().await;
    let store = nats.store().await;
    let empty = nats.stored_bytes().await;

    let over = record("alice", "batch", 1);
    let err = store.put(over.clone(), piped(jsonl(1024 * 1024)), 300_000).await.unwrap_err();
    assert!(matches!(err, FileError::TooLarge { limit: 300_000 }), "{err}");
    assert_eq!(err.to_string(), "the file is larger than the limit of 300000 bytes");
    assert_eq!(store.get(&over.id).await.unwrap(), None);
    assert!(matches!(store.content(&over.id).await.err(), Some(FileError::NotFound)));
    assert_eq!(store.list("alice", None, None, 10, true).await.unwrap(), (vec![], false));
    // Only the deleted object's marker remains; its chunks are purged.
    let left = nats.stored_bytes().await - empty;
    assert!(left < 1000, "{left} bytes left after a refused upload");

    // A body that stops with an error (a client that went away) is an Io error, and is gone too.
    let broken = record("alice", "batch", 2);
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let body = reader.chain(Failing);
    tokio::spawn(async move {
        writer.write_all(&jsonl(400_000)).await.unwrap();
    });
    let err = store.put(broken.clone(), body, 10_000_000).await.unwrap_err();
    assert!(matches!(&err, FileError::Io(message) if message.contains("connection reset")), "{err}");
    assert_eq!(store.get(&broken.id).await.unwrap(), None);
    let left = nats.stored_bytes().await - empty;
    assert!(left < 2000, "{left} bytes left after a broken upload");

    // Exactly the limit is fine, and so is an empty file.
    let data = jsonl(200_000);
    let exact = store.put(record("alice", "batch", 3), &data[..], data.len() as u64).await.unwrap();
    assert_eq!(exact.bytes, data.len() as u64);
    let nothing = store.put(record("alice", "batch", 4), &b""[..], 10).await.unwrap();
    assert_eq!((nothing.bytes, nothing.lines), (0, Some(0)));
    assert_eq!(read_all(&store, &nothing.id).await, b"");
}

/// A reader that fails at once, as a dropped connection does.
struct Failing;

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset")))
    }
}

#[tokio::test]
async fn lists_filter_by_owner_and_purpose_and_page_in_either_order() {
    let nats = Nats::start().await;
    let store = nats.store().await;
    let mut alice = Vec::new();
    // Two files share a second: the id breaks the tie.
    for (i, created_at) in [100, 101, 101, 102, 103].into_iter().enumerate() {
        let purpose = if i % 2 == 0 { "batch" } else { "user_data" };
        let line = format!("{{\"n\":{i}}}\n");
        alice.push(store.put(record("alice", purpose, created_at), line.as_bytes(), 1000).await.unwrap());
    }
    let bob = store.put(record("bob", "batch", 100), &b"{}"[..], 1000).await.unwrap();
    let ids = |records: &[FileRecord]| records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let all = ids(&alice);

    let (page, more) = store.list("alice", None, None, 100, true).await.unwrap();
    assert_eq!((ids(&page), more), (all.clone(), false));
    assert_eq!(page[0], alice[0]);
    assert_eq!(store.list("bob", None, None, 100, true).await.unwrap(), (vec![bob.clone()], false));
    assert_eq!(store.list("carol", None, None, 100, true).await.unwrap(), (vec![], false));

    // Pages of two, ascending, each starting after the last one seen.
    let (page, more) = store.list("alice", None, None, 2, true).await.unwrap();
    assert_eq!((ids(&page), more), (all[0..2].to_vec(), true));
    let (page, more) = store.list("alice", None, Some(&all[1]), 2, true).await.unwrap();
    assert_eq!((ids(&page), more), (all[2..4].to_vec(), true));
    let (page, more) = store.list("alice", None, Some(&all[3]), 2, true).await.unwrap();
    assert_eq!((ids(&page), more), (all[4..5].to_vec(), false));
    let (page, more) = store.list("alice", None, Some(&all[4]), 2, true).await.unwrap();
    assert_eq!((page, more), (vec![], false));

    // Newest first.
    let mut newest_first = all.clone();
    newest_first.reverse();
    let (page, more) = store.list("alice", None, None, 3, false).await.unwrap();
    assert_eq!((ids(&page), more), (newest_first[0..3].to_vec(), true));
    let (page, more) = store.list("alice", None, Some(&newest_first[2]), 3, false).await.unwrap();
    assert_eq!((ids(&page), more), (newest_first[3..5].to_vec(), false));

    // By purpose, with paging over the filtered files only.
    let batch = [all[0].clone(), all[2].clone(), all[4].clone()];
    let (page, more) = store.list("alice", Some("batch"), None, 2, true).await.unwrap();
    assert_eq!((ids(&page), more), (batch[0..2].to_vec(), true));
    let (page, more) = store.list("alice", Some("batch"), Some(&batch[1]), 2, true).await.unwrap();
    assert_eq!((ids(&page), more), (batch[2..3].to_vec(), false));
    let (page, more) = store.list("alice", Some("user_data"), None, 10, false).await.unwrap();
    assert_eq!((ids(&page), more), (vec![all[3].clone(), all[1].clone()], false));
    // Another owner's file is no cursor into alice's list... but a deleted one of hers still is
    // a position (by id).
    assert!(store.delete(&all[1]).await.unwrap());
    let (page, _) = store.list("alice", None, Some(&all[1]), 10, true).await.unwrap();
    assert_eq!(ids(&page), all[2..5].to_vec());
    let (page, _) = store.list("alice", None, Some(&all[1]), 10, false).await.unwrap();
    assert_eq!(ids(&page), vec![all[0].clone()]);
}

#[tokio::test]
async fn delete_and_expiry_remove_files() {
    let nats = Nats::start().await;
    let store = nats.store().await;
    let now = now_secs();
    assert_eq!(store.get("file-doesnotexist").await.unwrap(), None);
    assert_eq!(store.get("").await.unwrap(), None);
    assert!(matches!(store.content("file-doesnotexist").await.err(), Some(FileError::NotFound)));
    assert!(!store.delete("file-doesnotexist").await.unwrap());

    let kept = store.put(record("alice", "batch", now), &b"a\nb\n"[..], 100).await.unwrap();
    assert_eq!(kept.lines, Some(2));
    let doomed = store.put(record("alice", "batch", now), &b"x"[..], 100).await.unwrap();
    assert!(store.delete(&doomed.id).await.unwrap());
    assert!(!store.delete(&doomed.id).await.unwrap(), "a second delete finds nothing");
    assert_eq!(store.get(&doomed.id).await.unwrap(), None);
    assert!(matches!(store.content(&doomed.id).await.err(), Some(FileError::NotFound)));

    let expiring = |at| FileRecord { expires_at: Some(at), ..record("alice", "batch_output", now) };
    let past = store.put(expiring(now - 10), &b"1"[..], 100).await.unwrap();
    let due = store.put(expiring(now), &b"2"[..], 100).await.unwrap();
    let later = store.put(expiring(now + 3600), &b"3"[..], 100).await.unwrap();
    assert_eq!(store.delete_expired(now).await.unwrap(), 2);
    assert_eq!(store.get(&past.id).await.unwrap(), None);
    assert_eq!(store.get(&due.id).await.unwrap(), None);
    let (left, _) = store.list("alice", None, None, 10, true).await.unwrap();
    assert_eq!(left, vec![kept.clone(), later.clone()]);
    assert_eq!(store.delete_expired(now).await.unwrap(), 0);
    assert_eq!(store.delete_expired(now + 3600).await.unwrap(), 1);
    assert_eq!(store.list("alice", None, None, 10, true).await.unwrap(), (vec![kept], false));
}

#[tokio::test]
async fn leftovers_of_dead_uploads_are_swept_after_the_grace_period() {
    let nats = Nats::start().await;
    let store = nats.store().await;
    let empty = nats.stored_bytes().await;
    let raw = nats.js().await.get_object_store(FILES_BUCKET).await.unwrap();
    // An api that died after the body was in but before it wrote the record.
    raw.put("file-halfdone", &mut &jsonl(300_000)[..]).await.unwrap();
    // One that died mid-body: chunks that no metadata names.
    let body = jsonl(300_000);
    let mut broken = (&body[..]).chain(Failing);
    assert!(raw.put("file-neverdone", &mut broken).await.is_err());
    assert!(nats.stored_bytes().await - empty > 500_000);
    assert_eq!(store.get("file-halfdone").await.unwrap(), None, "an object without a record is no file");
    assert_eq!(store.list("", None, None, 10, true).await.unwrap(), (vec![], false));

    let kept = store.put(record("alice", "batch", 1), &b"{}\n"[..], 100).await.unwrap();
    // Recent leftovers may be uploads in progress: left alone.
    let now = now_secs();
    assert_eq!(store.delete_expired(now).await.unwrap(), 0);
    assert!(nats.stored_bytes().await - empty > 500_000);
    let later = now + LEFTOVER_GRACE.as_secs() + 60;
    assert_eq!(store.delete_expired(later).await.unwrap(), 2);
    let left = nats.stored_bytes().await - empty;
    assert!(left < 2000, "{left} bytes left after the sweep");
    assert_eq!(read_all(&store, &kept.id).await, b"{}\n");
}
