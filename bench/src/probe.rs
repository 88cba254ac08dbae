//! `--only probe`: the floors under the job path, measured now on this machine against the
//! stack's own nats-server and redis-server, one operation at a time (concurrency 1), so the
//! end-to-end figures can be compared with what the transport alone costs:
//!
//! * core NATS request/reply between two connections (what a reply-subject hop costs);
//! * JetStream publish → ack, on a scratch work-queue stream with file storage like `SY_JOBS`,
//!   and the same with memory storage;
//! * JetStream publish → delivery to a waiting pull request on another connection (what the
//!   api → worker hop costs);
//! * one Redis `EXISTS` (the worker's cancel-flag check).
//!
//! The scratch stream (`SY_BENCH_PROBE`, subjects `sybench.probe.>`) is deleted afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Stats;

const STREAM: &str = "SY_BENCH_PROBE";

pub async fn transport(nats_url: &str, redis_url: Option<&str>, warmup: usize, n: usize) -> anyhow::Result<Vec<(String, Stats)>> {
    let mut out = Vec::new();
    // Roughly the size of a job envelope for "hello world".
    let payload = bytes::Bytes::from(vec![b'x'; 300]);
    let a = async_nats::connect(nats_url).await.context("connecting to NATS")?;
    let b = async_nats::connect(nats_url).await.context("connecting to NATS")?;

    // Core request/reply: b answers, a asks.
    let mut requests = b.subscribe("sybench.probe.rr").await?;
    let responder = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                if let Some(reply) = message.reply {
                    let _ = b.publish(reply, message.payload).await;
                }
            }
        })
    };
    switchyard_broker::sync_with_server(&b).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        a.request("sybench.probe.rr", payload.clone()).await.context("core NATS request/reply probe")?;
        if i >= warmup {
            samples.push(t0.elapsed());
        }
    }
    responder.abort();
    out.push(("core NATS request/reply (2 connections)".to_string(), Stats::of(samples)));

    for storage in [stream::StorageType::File, stream::StorageType::Memory] {
        let (acks, deliveries) = jetstream_round(&a, &b, storage, &payload, warmup, n)
            .await
            .with_context(|| format!("JetStream probe ({storage:?} storage)"))?;
        let what = if storage == stream::StorageType::File { "file store" } else { "memory store" };
        out.push((format!("JetStream publish → ack ({what}, work queue)"), Stats::of(acks)));
        out.push((format!("JetStream publish → delivered to a waiting pull on another connection ({what})"), Stats::of(deliveries)));
    }

    if let Some(redis_url) = redis_url {
        let authority = redis_url.strip_prefix("redis://").unwrap_or(redis_url).split('/').next().unwrap_or("");
        let addr: SocketAddr = authority.parse().with_context(|| format!("redis address {authority:?}"))?;
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let command = b"*2\r\n$6\r\nEXISTS\r\n$19\r\nsybench:probe:nokey\r\n";
        let mut buf = [0u8; 64];
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup + n {
            let t0 = Instant::now();
            tcp.write_all(command).await?;
            let mut got = 0;
            while !buf[..got].ends_with(b"\r\n") {
                let read = tcp.read(&mut buf[got..]).await?;
                anyhow::ensure!(read > 0, "redis closed the connection");
                got += read;
            }
            if i >= warmup {
                samples.push(t0.elapsed());
            }
        }
        out.push(("one Redis EXISTS".to_string(), Stats::of(samples)));
    }
    Ok(out)
}

/// Publishes `warmup + n` jobs one at a time onto a scratch work-queue stream while a puller
/// like the worker's waits on another connection; the publish→ack and publish→delivery times.
async fn jetstream_round(
    a: &async_nats::Client,
    b: &async_nats::Client,
    storage: stream::StorageType,
    payload: &bytes::Bytes,
    warmup: usize,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let js_a = jetstream::new(a.clone());
    let js_b = jetstream::new(b.clone());
    let _ = js_a.delete_stream(STREAM).await;
    let created = js_a
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["sybench.probe.js.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    let result = async {
        created.context("creating the scratch stream")?;
        // The consumer is opened through the puller's own connection, like a worker's.
        let s = js_b.get_stream(STREAM).await.context("opening the scratch stream")?;
        let consumer: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some("probe".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .context("creating the scratch consumer")?;
        // A puller like the worker's: a batch waiting for up to 256 messages.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let puller = tokio::spawn(async move {
            loop {
                let Ok(mut batch) = consumer.batch().max_messages(256).expires(Duration::from_secs(2)).messages().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while let Some(Ok(message)) = batch.next().await {
                    let _ = tx.send(Instant::now());
                    let _ = message.ack().await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut acks, mut deliveries) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let tag = format!("{storage:?}-{}", std::process::id());
        for i in 0..warmup + n {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("probe-{tag}-{i}").as_str());
            let mut attempt = 0;
            let (t0, acked) = loop {
                let t0 = Instant::now();
                let published =
                    async { js_a.publish_with_headers("sybench.probe.js.x", headers.clone(), payload.clone()).await?.await }.await;
                match published {
                    Ok(_) => break (t0, t0.elapsed()),
                    // A stream just created may not take publishes for a moment ("no responders").
                    Err(e) if i == 0 && attempt < 50 => {
                        attempt += 1;
                        retry_pause(e).await;
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("publishing message {i}"))),
                }
            };
            let delivered = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.context("puller gone")? - t0;
            if i >= warmup {
                acks.push(acked);
                deliveries.push(delivered);
            }
        }
        puller.abort();
        Ok::<_, anyhow::Error>((acks, deliveries))
    }
    .await;
    let _ = js_a.delete_stream(STREAM).await;
    result
}

async fn retry_pause<E>(_: E) {
    tokio::time::sleep(Duration::from_millis(20)).await;
}
