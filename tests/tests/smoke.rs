//! The harness itself: real nats-server and redis-server start, answer, and die with their
//! `Servers`. Needs no Switchyard binary.

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use switchyard_tests::Servers;

#[tokio::test]
async fn nats_and_redis_answer_and_die_with_the_harness() {
    let servers = Servers::start().await;

    // NATS with JetStream: a publish/subscribe round trip and a JetStream account query.
    let client = async_nats::connect(servers.nats_url()).await.expect("nats-server accepts clients");
    let mut sub = client.subscribe("smoke.>").await.unwrap();
    client.flush().await.unwrap();
    client.publish("smoke.a", "hi".into()).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("message within 5 s").unwrap();
    assert_eq!(&message.payload[..], b"hi");
    async_nats::jetstream::new(client.clone()).query_account().await.expect("JetStream is on");

    // Redis: a SET/GET round trip.
    let mut redis = redis::Client::open(servers.redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis.set("smoke", "ok").await.unwrap();
    let value: String = redis.get("smoke").await.unwrap();
    assert_eq!(value, "ok");

    // Dropping the servers kills both processes: nothing is left behind.
    let pids = [servers.nats().pid(), servers.redis().pid()];
    let urls = [servers.nats_url(), servers.redis_url()];
    drop(servers);
    for pid in pids {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "process {pid} outlived the harness");
    }
    for url in urls {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "{url} still answers");
    }
}

/// Two sets of servers side by side get distinct ports (tests run in parallel).
#[tokio::test]
async fn parallel_servers_do_not_collide() {
    let (a, b) = tokio::join!(Servers::start(), Servers::start());
    assert_ne!(a.nats_url(), b.nats_url());
    assert_ne!(a.redis_url(), b.redis_url());
    let mut ra = redis::Client::open(a.redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut rb = redis::Client::open(b.redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = ra.set("k", "a").await.unwrap();
    let in_b: Option<String> = rb.get("k").await.unwrap();
    assert_eq!(in_b, None, "the two redis-servers share data");
}
