//! How long one Redis round trip takes from here, back to back and after an idle gap (what a
//! request at concurrency 1 sees: Redis has gone to sleep since the previous request), through
//! a raw socket, redis-rs's connection manager, and the rate limiter's admission script.
//!
//! `cargo run --release -p switchyard-broker --example redis_round_trip -- redis://127.0.0.1:6379 [GAP_US …]`
//! (default gaps: 0 and 300 µs). It writes only keys under `sy:bench:`.

use std::time::{Duration, Instant};

use switchyard_broker::ratelimit::{Limit, LimitKind, RateLimiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 3000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let gaps: Vec<u64> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let gaps = if gaps.is_empty() { vec![0, 300] } else { gaps };

    let manager = switchyard_broker::connect_redis(&url).await?;
    let limiter = RateLimiter::new(manager.clone());
    let address = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_string();
    let mut raw = tokio::net::TcpStream::connect(&address).await?;
    raw.set_nodelay(true)?;
    let limits = [
        Limit { kind: LimitKind::RequestsPerMinute, key: "sy:bench:rpm".into(), limit: 100_000_000, cost: 1 },
        Limit { kind: LimitKind::TokensPerMinute, key: "sy:bench:tpm".into(), limit: 1_000_000_000, cost: 300 },
    ];

    println!("| idle gap before each call | raw socket EXISTS p50 / p90 | connection manager EXISTS | admission script (+ settle) |");
    println!("|---|---|---|---|");
    for gap in gaps {
        let gap = Duration::from_micros(gap);
        let mut buf = [0u8; 64];
        let (mut raw_times, mut manager_times, mut admit_times) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let start = after_idle(gap);
            raw.write_all(b"*2\r\n$6\r\nEXISTS\r\n$1\r\nx\r\n").await?;
            anyhow::ensure!(raw.read(&mut buf).await? > 0, "redis closed the connection");
            raw_times.push(start.elapsed());
        }
        for _ in 0..ROUNDS {
            let start = after_idle(gap);
            let _: bool = redis::AsyncCommands::exists(&mut manager.clone(), "x").await?;
            manager_times.push(start.elapsed());
        }
        for n in 0..ROUNDS {
            let member = format!("m{n}");
            let start = after_idle(gap);
            limiter.admit(&limits, &member, 0, 60_000).await?;
            admit_times.push(start.elapsed());
            limiter.settle(&limits, &member, -200);
        }
        println!("| {:?} | {} | {} | {} |", gap, percentiles(raw_times), percentiles(manager_times), percentiles(admit_times));
    }
    Ok(())
}

/// Busy-waits `gap` (the thread stays busy, as it would be serving the rest of a request;
/// Redis meanwhile has nothing to do), then returns the instant the call starts.
fn after_idle(gap: Duration) -> Instant {
    let idle = Instant::now();
    while idle.elapsed() < gap {
        std::hint::spin_loop();
    }
    Instant::now()
}

fn percentiles(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    format!("{:.3} / {:.3} ms", at(0.5), at(0.9))
}
