//! `switchyard keys`: create, list and revoke API keys (stored in Redis as hashes only).

use clap::{Args, Subcommand};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_broker::parse_duration;
use switchyard_schemas::{RateLimits, now_ms};

#[derive(Args)]
pub struct KeysCommand {
    /// Redis URL: `redis://` (one server), `redis+cluster://h1:6379,h2:6379,…` (a Redis Cluster) or
    /// `redis+sentinel://s1:26379,…/<master name>` (the master Sentinel names).
    #[arg(long, env = "SWITCHYARD_REDIS_URL", default_value = "redis://127.0.0.1:6379", global = true)]
    redis_url: String,
    /// NATS URL, to tell running api replicas about revocations at once.
    #[arg(long, env = "SWITCHYARD_NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    nats_url: String,
    #[command(flatten)]
    auth: switchyard_broker::BrokerAuth,
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; its secret is printed once and never stored.
    Create {
        /// The user the key belongs to (matched by models' `users:` and `owner:` permissions).
        #[arg(long)]
        user: String,
        /// Groups the key belongs to (repeatable); `default` when none is given.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens (prompt + completion) per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// Requests running at once.
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// Lifetime, e.g. `30d` or `12h`.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
        /// An operator's key: it may read the api's status page (`/status`, `switchyard status`).
        #[arg(long)]
        admin: bool,
    },
    /// List keys (ids and owners; never secrets).
    List,
    /// Revoke a key by its id (`key_…`).
    Revoke { id: String },
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&command.redis_url).await?);
    match command.action {
        KeysAction::Create { user, groups, rpm, tpm, max_concurrent, expires, admin } => {
            let spec = KeySpec {
                user,
                groups,
                limits: RateLimits { rpm, tpm },
                max_concurrent,
                expires_ms: expires.map(|lifetime| now_ms() + lifetime.as_millis() as u64),
                admin,
            };
            let (secret, record) = keys.create(spec).await?;
            eprintln!(
                "created {}{} for user {} (groups: {}); the secret is shown only now:",
                if record.admin { "admin key " } else { "" },
                record.id,
                record.user,
                record.groups.join(", ")
            );
            println!("{secret}");
        }
        KeysAction::List => {
            println!(
                "{:<18} {:<12} {:<20} {:<8} {:<8} {:<6} {:<10} {:<6} HINT",
                "ID", "USER", "GROUPS", "RPM", "TPM", "CONC", "STATE", "ADMIN"
            );
            for key in keys.list().await? {
                let limit = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                let state = if key.revoked {
                    "revoked"
                } else if key.expires_ms.is_some_and(|e| e <= now_ms()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<18} {:<12} {:<20} {:<8} {:<8} {:<6} {:<10} {:<6} {}…",
                    key.id,
                    key.user,
                    key.groups.join(","),
                    limit(key.limits.rpm),
                    limit(key.limits.tpm),
                    limit(key.max_concurrent),
                    state,
                    if key.admin { "yes" } else { "no" },
                    key.hint
                );
            }
        }
        KeysAction::Revoke { id } => {
            let nats = switchyard_broker::connect_nats(&command.nats_url, "switchyard-keys", &command.auth).await;
            if let Err(e) = &nats {
                eprintln!("warning: {e}; running api replicas drop the key from their cache within 5 s");
            }
            if !keys.revoke(&id, nats.as_ref().ok()).await? {
                anyhow::bail!("no key with id {id} (see `switchyard keys list`)");
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}
