//! OpenAI's Batch API, run on Switchyard's own queue.
//!
//! The api stores a batch record ([`store::BatchStore`], status `validating`); a scheduler
//! replica takes it ([`lease`]), checks every line of its input file as the api checks an
//! interactive request ([`input`]), runs the lines as jobs in the batch lane with a bounded
//! window in flight, records each line's result in the results stream *before* counting it
//! ([`store::Results`], written once per line, so a replica that takes over a dead one's batch
//! reruns only the lines without a result), and finally writes the output and error files
//! ([`runner`]). Shapes are OpenAI's ([`object`]).

pub mod input;
pub mod lease;
pub mod object;
pub mod runner;
pub mod store;

use std::time::Duration;

use switchyard_broker::parse_duration;

pub use runner::Batches;

/// How the scheduler runs batches.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchOptions {
    /// Lines of one batch in flight at once (queued or running); the rest wait in the input file.
    #[arg(long = "batch-window", env = "SWITCHYARD_BATCH_WINDOW", default_value_t = 1024)]
    pub window: usize,
    /// Further attempts at a line whose worker or queue failed (not one the request itself
    /// failed) before it goes to the error file.
    #[arg(long = "batch-retries", env = "SWITCHYARD_BATCH_RETRIES", default_value_t = 2)]
    pub retries: u32,
    /// Wait before the first retry of a line; doubled for each further one (at most 60 s).
    #[arg(long = "batch-retry-backoff", env = "SWITCHYARD_BATCH_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// How long a replica's claim on a batch lasts without renewal: how soon another replica
    /// takes over the batches of one that died.
    #[arg(long = "batch-lease", env = "SWITCHYARD_BATCH_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,
    /// How long a started batch job may go without an event before its line is retried.
    #[arg(long = "batch-idle-timeout", env = "SWITCHYARD_BATCH_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}
