//! Where batches live: their records in a JetStream key-value bucket (`SY_BATCHES`, updated by
//! compare-and-set so the api's cancel and the scheduler's progress never overwrite each other),
//! and their line results in the `SY_BATCH_RESULTS` stream, one message per line, written once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, kv, stream};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use switchyard_broker::BrokerError;
use switchyard_openai::Limits;
use switchyard_schemas::subject;

use super::object::{Batch, BatchStatus, OutputLine};

/// Who submitted a batch: its lines run with this caller's permissions, and only this user
/// sees it and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub user: String,
    pub groups: Vec<String>,
    /// The api ran with `--no-auth`: every model may be used.
    pub unrestricted: bool,
}

impl Owner {
    pub fn may_use(&self, card: &switchyard_schemas::ModelCard) -> bool {
        self.unrestricted || card.permissions.allows(&self.user, &self.groups)
    }
}

/// A batch as stored: OpenAI's object and what the scheduler needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    #[serde(flatten)]
    pub batch: Batch,
    pub owner: Owner,
    /// The request limits of the api that accepted the batch: its lines are held to them.
    pub limits: Limits,
    /// Most lines the input may have.
    pub max_requests: u64,
    /// Ids the output and error files get, chosen up front so that a scheduler taking over a
    /// half-written finalization rewrites the same files instead of leaving orphans.
    pub output_file: String,
    pub error_file: String,
    /// Seconds after finalization that the output and error files expire (`None`: never).
    pub output_expires_after: Option<u64>,
    /// The terminal status finalization ends in (`completed`, `expired` or `cancelled`).
    pub ending: Option<BatchStatus>,
}

/// Why a batch store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch storage (NATS) failed: {0}")]
    Broker(String),
    #[error("a stored batch record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

fn broker(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Broker(format!("{what}: {e}"))
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> Self {
        BrokerError::JetStream(error.to_string())
    }
}

/// Batch records. Cheap to clone (clones share what they learned of ended batches).
#[derive(Clone)]
pub struct BatchStore {
    kv: kv::Store,
    /// Batches seen in a terminal status: they never change again, so [`Self::unfinished`]
    /// does not read them again.
    ended: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl BatchStore {
    pub async fn open(js: &jetstream::Context) -> Result<BatchStore, BrokerError> {
        let kv =
            switchyard_broker::key_value(js, subject::BATCHES_BUCKET, "Switchyard's /v1/batches: one record per batch", Duration::ZERO)
                .await?;
        Ok(BatchStore { kv, ended: Default::default() })
    }

    pub async fn create(&self, record: &BatchRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record)?;
        self.kv.create(&record.batch.id, value.into()).await.map_err(|e| broker("storing a new batch", e))?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self.entry(id).await?.map(|(record, _)| record))
    }

    async fn entry(&self, id: &str) -> Result<Option<(BatchRecord, u64)>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let entry = self.kv.entry(id).await.map_err(|e| broker("reading a batch", e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some((serde_json::from_slice(&entry.value)?, entry.revision))),
            _ => Ok(None),
        }
    }

    /// Applies `change` to the stored record and writes it back unless someone else wrote in
    /// between (then it reads again and retries). `change` returns false to leave the record
    /// as it is. Returns the record as it stands afterwards; `None` if there is no such batch.
    pub async fn update(&self, id: &str, mut change: impl FnMut(&mut BatchRecord) -> bool) -> Result<Option<BatchRecord>, StoreError> {
        loop {
            let Some((mut record, revision)) = self.entry(id).await? else { return Ok(None) };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            let value = serde_json::to_vec(&record)?;
            match self.kv.update(id, value.into(), revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(broker("updating a batch", e)),
            }
        }
    }

    /// Every batch id.
    pub async fn ids(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.kv.keys().await.map_err(|e| broker("listing batches", e))?;
        keys.map(|key| key.map_err(|e| broker("listing batches", e))).try_collect().await
    }

    /// Every batch not in a terminal status: one read per batch not yet seen ended.
    pub async fn unfinished(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.unfinished_except(|_| false).await
    }

    /// [`Self::unfinished`], without reading the batches `skip` names.
    pub async fn unfinished_except(&self, skip: impl Fn(&str) -> bool) -> Result<Vec<BatchRecord>, StoreError> {
        let mut records = Vec::new();
        for id in self.ids().await? {
            if skip(&id) || self.ended.lock().unwrap().contains(&id) {
                continue;
            }
            match self.get(&id).await? {
                Some(record) if record.batch.status.is_terminal() => {
                    self.ended.lock().unwrap().insert(id);
                }
                Some(record) => records.push(record),
                None => {}
            }
        }
        Ok(records)
    }

    /// Every batch record.
    pub async fn list(&self) -> Result<Vec<BatchRecord>, StoreError> {
        let mut records = Vec::new();
        for id in self.ids().await? {
            if let Some(record) = self.get(&id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Fires whenever a batch record is written.
    pub async fn watch(&self) -> Result<kv::Watch, StoreError> {
        self.kv.watch_all().await.map_err(|e| broker("watching batches", e))
    }
}

/// Batch ids are ours (`batch_` and hex); anything else names no batch (and must not reach a
/// key-value key).
fn valid_id(id: &str) -> bool {
    id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Header of a result message telling the output file's lines from the error file's.
const OUTCOME: &str = "Sy-Outcome";

/// One recorded line, read back.
pub struct RecordedLine {
    pub line: u64,
    pub succeeded: bool,
    /// The output or error file line (empty when read with `with_bodies` false).
    pub body: Bytes,
}

/// The batch results stream.
#[derive(Clone)]
pub struct Results {
    js: jetstream::Context,
}

impl Results {
    pub async fn open(js: &jetstream::Context) -> Result<Results, BrokerError> {
        // With the replica count every part uses (R3 on a cluster).
        switchyard_broker::jobs::ensure_stream(
            js,
            stream::Config {
                name: subject::BATCH_RESULTS_STREAM.into(),
                subjects: vec![subject::BATCH_RESULTS_SUBJECTS.into()],
                storage: stream::StorageType::File,
                // Finalization purges a batch's results; this only catches what a lost batch left.
                max_age: Duration::from_secs(30 * 24 * 3600),
                max_messages_per_subject: 1,
                ..Default::default()
            },
        )
        .await?;
        Ok(Results { js: js.clone() })
    }

    /// Records line `line`'s result unless it already has one: `Ok(true)` if this call
    /// recorded it. Durable (acknowledged by JetStream) when it returns.
    pub async fn record(&self, batch_id: &str, line: u64, output: &OutputLine) -> Result<bool, StoreError> {
        let mut payload = serde_json::to_vec(output)?;
        let mut outcome = if output.succeeded() { "ok" } else { "error" };
        let publish = |payload: Vec<u8>, outcome: &str| {
            jetstream::message::PublishMessage::build().payload(payload.into()).expected_last_subject_sequence(0).header(OUTCOME, outcome)
        };
        let subject = subject::batch_result(batch_id, line);
        let mut sent = self.js.send_publish(subject.clone(), publish(payload, outcome)).await;
        if matches!(&sent, Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded) {
            // A body too large for one message still gets a line: an error saying so.
            let body = switchyard_openai::response::ErrorResponse::new(
                "The response is larger than the broker's largest message (max_payload); ask for less per request.".into(),
                "server_error",
                None,
                Some("response_too_large"),
            );
            let error = OutputLine::answered(output.custom_id.clone(), 500, serde_json::to_value(body)?);
            payload = serde_json::to_vec(&error)?;
            outcome = "error";
            sent = self.js.send_publish(subject, publish(payload, outcome)).await;
        }
        let ack = sent.map_err(|e| broker("recording a line result", e))?.await;
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(broker("recording a line result", e)),
        }
    }

    /// Every recorded line of a batch, in the order they were recorded; `with_bodies` false
    /// reads only which lines are done and how.
    pub async fn read(
        &self,
        batch_id: &str,
        with_bodies: bool,
    ) -> Result<impl futures::Stream<Item = Result<RecordedLine, StoreError>> + use<>, StoreError> {
        let stream = self.js.get_stream(subject::BATCH_RESULTS_STREAM).await.map_err(|e| broker("opening the results stream", e))?;
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject::batch_results_of(batch_id),
                headers_only: !with_bodies,
                ..Default::default()
            })
            .await
            .map_err(|e| broker("reading results", e))?;
        let pending = consumer.info().await.map_err(|e| broker("reading results", e))?.num_pending;
        let messages = consumer.messages().await.map_err(|e| broker("reading results", e))?;
        Ok(messages.take(pending as usize).map(|message| {
            let message = message.map_err(|e| broker("reading results", e))?;
            let line = subject::batch_line_of(&message.subject)
                .ok_or_else(|| StoreError::Broker(format!("unexpected subject {}", message.subject)))?;
            let succeeded = message.headers.as_ref().and_then(|h| h.get(OUTCOME)).is_some_and(|v| v.as_str() == "ok");
            Ok(RecordedLine { line, succeeded, body: message.payload.clone() })
        }))
    }

    /// Drops a finished batch's results.
    pub async fn purge(&self, batch_id: &str) -> Result<(), StoreError> {
        let stream = self.js.get_stream(subject::BATCH_RESULTS_STREAM).await.map_err(|e| broker("opening the results stream", e))?;
        stream.purge().filter(subject::batch_results_of(batch_id)).await.map_err(|e| broker("purging results", e))?;
        Ok(())
    }
}
