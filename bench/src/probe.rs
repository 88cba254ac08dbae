//! `--only probe`: the floors under the job path, measured now on this machine against the
//! stack's own nats-server and redis-server, one operation at a time (concurrency 1), so the
//! end-to-end figures can be compared with what the transport alone costs:
//!
//! * core NATS request/reply between two connections (what a reply-subject hop costs);
//! * JetStream publish → ack, on a scratch work-queue stream with file storage like `SY_JOBS`;
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
    b.flush().await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        a.request("sybench.probe.rr", payload.clone()).await?;
        if i >= warmup {
            samples.push(t0.elapsed());
        }
    }
    responder.abort();
    out.push(("core NATS request/reply (2 connections)".to_string(), Stats::of(samples)));

    // JetStream: a scratch stream like SY_JOBS.
    let js_a = jetstream::new(a.clone());
    let js_b = jetstream::new(b.clone());
    let _ = js_a.delete_stream(STREAM).await;
    let created = js_a
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["sybench.probe.js.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    let result = async {
        let s = created.context("creating the scratch stream")?;
        let consumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some("probe".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let _ = js_b;
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
        for i in 0..warmup + n {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("probe-{i}-{}", std::process::id()).as_str());
            let t0 = Instant::now();
            js_a.publish_with_headers("sybench.probe.js.x", headers, payload.clone()).await?.await?;
            let acked = t0.elapsed();
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
    let (acks, deliveries) = result?;
    out.push(("JetStream publish → ack (file store, work queue)".to_string(), Stats::of(acks)));
    out.push(("JetStream publish → delivered to a waiting pull (other connection)".to_string(), Stats::of(deliveries)));

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
