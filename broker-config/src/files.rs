//! Storage of the files of OpenAI's Files API (`/v1/files`): their bodies and their records.
//!
//! Bodies live in the JetStream object store bucket `SY_FILES`
//! ([`subject::FILES_BUCKET`]), so every api replica serves every file and none is tied to a
//! disk. The object name is the file id ([`new_file_id`]); the object store cuts a body into
//! chunks as it streams in, so no part ever holds a whole file in memory.
//!
//! A file's [`FileRecord`] sits in its object's metadata, as JSON in the `description` field:
//! listing the bucket lists the records, with no second store to keep in step. The record is
//! only known once the body has been read (its size and line count), and the object store
//! writes an object's metadata when its body ends, so [`FileStore::put`] stores the body
//! without a record and adds the record with `update_metadata` (which can change the
//! `description`, not the `metadata` map). An object without a record is an upload in
//! progress, or the leftover of one that died: [`FileStore::get`], [`FileStore::list`] and
//! [`FileStore::content`] don't see it, and [`FileStore::delete_expired`] removes it once
//! [`LEFTOVER_GRACE`] has passed, along with the chunks of uploads that died before the object
//! store wrote any metadata.
//!
//! The OpenAI response shape is built from the record elsewhere (the api).

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{
    self,
    object_store::{self, ObjectInfo, ObjectMetadata, ObjectStore, UpdateMetadata},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard_schemas::subject;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::BrokerError;

/// How long an object without a record, or chunks without an object, may sit before
/// [`FileStore::delete_expired`] takes them for the leftovers of a dead upload. An upload in
/// progress writes a chunk at least this often (longer than any upload may stall).
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(3600);

/// One file: what `/v1/files` answers about it. Stored as JSON in its object's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `file-…`, from [`new_file_id`]; also the object's name.
    pub id: String,
    /// Who uploaded it (the key's owner); lists are filtered by it.
    pub owner: String,
    pub filename: String,
    /// OpenAI's purpose: `batch`, `batch_output`, `fine-tune`, `assistants`, `user_data`, …
    pub purpose: String,
    /// Size of the body, set by [`FileStore::put`].
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which [`FileStore::delete_expired`] deletes it; `None`: never.
    pub expires_at: Option<u64>,
    /// Lines that hold anything but ASCII whitespace (a batch input's requests), set by
    /// [`FileStore::put`]; a last line without a newline counts.
    pub lines: Option<u64>,
}

/// A fresh file id: OpenAI's `file-` prefix and a UUID v7, so ids sort by creation time.
pub fn new_file_id() -> String {
    crate::new_id("file-")
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the uploaded file failed: {0}")]
    Io(String),
    #[error("file storage (NATS object store {bucket}) failed: {0}", bucket = subject::FILES_BUCKET)]
    Broker(String),
}

fn broker(what: impl std::fmt::Display, e: impl std::fmt::Display) -> FileError {
    FileError::Broker(format!("{what}: {e}"))
}

/// The files bucket. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct FileStore {
    js: jetstream::Context,
    store: ObjectStore,
}

impl FileStore {
    /// Opens the files bucket, creating it (file storage, no age limit: files leave by
    /// [`FileStore::delete`] and [`FileStore::delete_expired`]) when it does not exist. An
    /// existing bucket keeps whatever limits an operator gave it, but gets the replica count of
    /// [`crate::placement::replicas`].
    pub async fn open(js: &jetstream::Context) -> Result<FileStore, BrokerError> {
        let bucket = subject::FILES_BUCKET;
        let store = match js.get_object_store(bucket).await {
            Ok(store) => {
                crate::placement::ensure_replicas(js, &format!("OBJ_{bucket}")).await?;
                store
            }
            Err(_) => {
                crate::jobs::query_account(js).await?;
                let config = object_store::Config {
                    bucket: bucket.into(),
                    description: Some("Switchyard's /v1/files: one object per file, named by its id".into()),
                    storage: jetstream::stream::StorageType::File,
                    max_age: Duration::ZERO,
                    ..Default::default()
                };
                let name = format!("OBJ_{bucket}");
                crate::placement::retry_placement(&name, |replicas| {
                    let config = object_store::Config { num_replicas: replicas, ..config.clone() };
                    async move {
                        match js.create_object_store(config).await {
                            Ok(store) => Ok(store),
                            // Another part created it in between.
                            Err(e) => js.get_object_store(bucket).await.map_err(|_| e),
                        }
                    }
                })
                .await?
                .0
            }
        };
        Ok(FileStore { js: js.clone(), store })
    }

    /// Streams `body` into a new file described by `record` (its `bytes` and `lines` are
    /// ignored and set here) and returns the stored record. More than `max_bytes` bytes fail
    /// with [`FileError::TooLarge`], a body that fails to read with [`FileError::Io`]; either
    /// way nothing of the upload stays behind. An existing file of the same id is replaced.
    pub async fn put(&self, mut record: FileRecord, body: impl AsyncRead + Unpin, max_bytes: u64) -> Result<FileRecord, FileError> {
        if record.id.is_empty() {
            return Err(FileError::Broker("a file needs an id".into()));
        }
        let id = record.id.clone();
        let mut body = Counted::new(body.take(max_bytes.saturating_add(1)));
        // No description: the object has no record, and nobody sees it, until the body is in.
        let info = self
            .store
            .put(ObjectMetadata { name: id.clone(), ..Default::default() }, &mut body)
            .await
            .map_err(|e| broker(format!("storing {id}"), e))?;
        let failure = if let Some(e) = body.failed.take() {
            Some(FileError::Io(e.to_string()))
        } else if body.bytes > max_bytes {
            Some(FileError::TooLarge { limit: max_bytes })
        } else {
            None
        };
        if let Some(failure) = failure {
            // The body was cut short (read as if it ended) so that the object store wrote
            // metadata naming its chunks: deleting the object purges them.
            self.store.delete(&id).await.map_err(|e| broker(format!("deleting the partial {id}"), e))?;
            return Err(failure);
        }
        record.bytes = info.size as u64;
        record.lines = Some(body.lines());
        let description = serde_json::to_string(&record).map_err(|e| broker("encoding a file record", e))?;
        let update = UpdateMetadata { name: id.clone(), description: Some(description), ..Default::default() };
        // A replica that serves direct gets may not have the new object yet.
        let mut tries = 0;
        loop {
            match self.store.update_metadata(&id, update.clone()).await {
                Ok(_) => return Ok(record),
                Err(e) if e.kind() == object_store::UpdateMetadataErrorKind::NotFound && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                }
                Err(e) => {
                    let _ = self.store.delete(&id).await;
                    return Err(broker(format!("recording {id}"), e));
                }
            }
        }
    }

    /// The record of file `id`; `None` when there is none (unknown, deleted, or still uploading).
    pub async fn get(&self, id: &str) -> Result<Option<FileRecord>, FileError> {
        Ok(self.info(id).await?.as_ref().and_then(record_of))
    }

    /// The owner's files, OpenAI's way: purpose filter, ordered by `created_at` then id
    /// (ascending or descending), starting after the file `after`, at most `limit` of them,
    /// and whether more follow. An `after` that is none of the owner's files is taken as a
    /// position by id (ids sort by creation time).
    ///
    /// Reads every record in the bucket (one ordered consumer over the metadata subjects).
    pub async fn list(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<(Vec<FileRecord>, bool), FileError> {
        let mut owned: Vec<FileRecord> = self.all().await?.iter().filter_map(record_of).filter(|r| r.owner == owner).collect();
        owned.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        if !ascending {
            owned.reverse();
        }
        let start = match after {
            None => 0,
            Some(after) => match owned.iter().position(|r| r.id == after) {
                Some(at) => at + 1,
                None => owned.iter().position(|r| (r.id.as_str() > after) == ascending).unwrap_or(owned.len()),
            },
        };
        let mut rest = owned.into_iter().skip(start).filter(|r| purpose.is_none_or(|p| r.purpose == p));
        let page: Vec<FileRecord> = rest.by_ref().take(limit).collect();
        let has_more = rest.next().is_some();
        Ok((page, has_more))
    }

    /// Streams the body of file `id`.
    pub async fn content(&self, id: &str) -> Result<impl AsyncRead + Unpin + Send + use<>, FileError> {
        let object = match self.store.get(id).await {
            Ok(object) => object,
            Err(e) => {
                return Err(match e.kind() {
                    object_store::GetErrorKind::NotFound | object_store::GetErrorKind::InvalidName => FileError::NotFound,
                    _ => broker(format!("reading {id}"), e),
                });
            }
        };
        if record_of(object.info()).is_none() {
            return Err(FileError::NotFound);
        }
        Ok(object)
    }

    /// Deletes file `id`, body and record; `false` when there was no such file.
    pub async fn delete(&self, id: &str) -> Result<bool, FileError> {
        let Some(info) = self.info(id).await? else { return Ok(false) };
        let existed = record_of(&info).is_some();
        self.store.delete(id).await.map_err(|e| broker(format!("deleting {id}"), e))?;
        Ok(existed)
    }

    /// Deletes every file whose `expires_at` is `now_secs` or earlier, and the leftovers of
    /// uploads that died more than [`LEFTOVER_GRACE`] ago (objects without a record, chunks
    /// without an object); returns how many files and leftovers it deleted.
    pub async fn delete_expired(&self, now_secs: u64) -> Result<usize, FileError> {
        let stale_before = now_secs.saturating_sub(LEFTOVER_GRACE.as_secs());
        let mut deleted = 0;
        let mut live = HashSet::new();
        for info in self.all().await? {
            let expired = match record_of(&info) {
                Some(record) => record.expires_at.is_some_and(|at| at <= now_secs),
                None => info.modified.is_none_or(|at| unix_secs(at.into()) < stale_before),
            };
            if expired {
                self.store.delete(&info.name).await.map_err(|e| broker(format!("deleting {}", info.name), e))?;
                deleted += 1;
            } else {
                live.insert(info.nuid);
            }
        }
        deleted += self.purge_orphan_chunks(&live, stale_before).await?;
        Ok(deleted)
    }

    /// Purges chunks no object names whose last chunk is older than `stale_before`: those of
    /// an upload whose api died before the object store wrote its metadata.
    async fn purge_orphan_chunks(&self, live: &HashSet<String>, stale_before: u64) -> Result<usize, FileError> {
        let bucket = subject::FILES_BUCKET;
        let chunks = format!("$O.{bucket}.C.");
        let stream = self.js.get_stream(format!("OBJ_{bucket}")).await.map_err(|e| broker("opening the bucket's stream", e))?;
        let mut subjects = stream.info_with_subjects(format!("{chunks}>")).await.map_err(|e| broker("listing chunk subjects", e))?;
        let mut orphans = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(|e| broker("listing chunk subjects", e))?;
            if subject.strip_prefix(&chunks).is_some_and(|nuid| !live.contains(nuid)) {
                orphans.push(subject);
            }
        }
        let mut purged = 0;
        for subject in orphans {
            // An upload in progress has no metadata yet either, but it wrote a chunk lately.
            let last = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => unix_secs(message.time.into()),
                Err(_) => continue,
            };
            if last < stale_before {
                stream.purge().filter(&subject).await.map_err(|e| broker(format!("purging {subject}"), e))?;
                tracing::info!(subject, "purged the chunks of an upload that died");
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The object's info, deleted or not, `None` when the name was never used.
    async fn info(&self, id: &str) -> Result<Option<ObjectInfo>, FileError> {
        match self.store.info(id).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) => match e.kind() {
                object_store::InfoErrorKind::NotFound | object_store::InfoErrorKind::InvalidName => Ok(None),
                _ => Err(broker(format!("looking up {id}"), e)),
            },
        }
    }

    /// Every object that is not deleted.
    async fn all(&self) -> Result<Vec<ObjectInfo>, FileError> {
        let mut list = self.store.list().await.map_err(|e| broker("listing files", e))?;
        let mut infos = Vec::new();
        while let Some(info) = list.next().await {
            infos.push(info.map_err(|e| broker("listing files", e))?);
        }
        Ok(infos)
    }
}

/// The record in an object's metadata; `None` for an upload that has not finished.
fn record_of(info: &ObjectInfo) -> Option<FileRecord> {
    let description = info.description.as_deref()?;
    match serde_json::from_str(description) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(object = info.name, "object in {} without a readable file record: {e}", subject::FILES_BUCKET);
            None
        }
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The upload body as the object store reads it: counts bytes and lines, hands on as much as
/// is ready at once (each read becomes one chunk), and turns a read error into the end of the
/// body, kept in `failed`, so that the object store still writes metadata naming the chunks
/// (and [`FileStore::put`] can delete them) instead of leaving them nameless.
struct Counted<R> {
    inner: R,
    bytes: u64,
    full_lines: u64,
    /// The current line holds something other than whitespace.
    in_line: bool,
    done: bool,
    failed: Option<io::Error>,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Self { inner, bytes: 0, full_lines: 0, in_line: false, done: false, failed: None }
    }

    fn count(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &byte in data {
            if byte == b'\n' {
                self.full_lines += self.in_line as u64;
                self.in_line = false;
            } else if !byte.is_ascii_whitespace() {
                self.in_line = true;
            }
        }
    }

    fn lines(&self) -> u64 {
        self.full_lines + self.in_line as u64
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    this.failed = Some(e);
                    this.done = true;
                }
                Poll::Ready(Ok(())) => this.done = buf.filled().len() == before,
            }
            if this.done {
                break;
            }
        }
        this.count(&buf.filled()[start..]);
        if buf.filled().len() == start && !this.done {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(data: &[u8]) -> (u64, u64) {
        let mut counted = Counted::new(data);
        let mut sink = Vec::new();
        counted.read_to_end(&mut sink).await.unwrap();
        assert_eq!(sink, data);
        (counted.bytes, counted.lines())
    }

    #[tokio::test]
    async fn lines_with_content_count_and_a_last_line_needs_no_newline() {
        assert_eq!(count(b"").await, (0, 0));
        assert_eq!(count(b"a").await, (1, 1));
        assert_eq!(count(b"a\n").await, (2, 1));
        assert_eq!(count(b"a\n\n\r\n  \nb").await, (9, 2));
        assert_eq!(count(b"{}\r\n{}\r\n").await, (8, 2));
    }

    #[test]
    fn ids_carry_the_prefix_and_sort_by_time() {
        let first = new_file_id();
        std::thread::sleep(Duration::from_millis(2));
        let second = new_file_id();
        assert!(first.starts_with("file-") && first.len() == 5 + 32, "{first}");
        assert!(first < second);
    }
}
