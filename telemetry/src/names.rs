//! Every metric Switchyard exports, named as Prometheus names things (`switchyard_…`, base
//! units, `_total` on counters) with the meanings vLLM gives its own: a request's clock starts
//! when the api received it. [`describe`] registers each one's help text.

// Per model (`model`, `lane`), recorded by whoever submitted the job ([`crate::jobs`]).
/// Gauge: jobs submitted and not yet started by a worker.
pub const REQUESTS_WAITING: &str = "switchyard_requests_waiting";
/// Gauge: jobs a worker started that have not ended.
pub const REQUESTS_RUNNING: &str = "switchyard_requests_running";
/// Histogram: from submission to a worker's start.
pub const QUEUE_TIME: &str = "switchyard_request_queue_time_seconds";
/// Histogram: from the request's arrival to its first output (text, tool call, vectors, result).
pub const TIME_TO_FIRST_TOKEN: &str = "switchyard_time_to_first_token_seconds";
/// Histogram: between one output event and the next of a job.
pub const INTER_TOKEN_LATENCY: &str = "switchyard_inter_token_latency_seconds";
/// Histogram: from the request's arrival to its job's end.
pub const E2E_LATENCY: &str = "switchyard_e2e_request_latency_seconds";
/// Counter: prompt tokens of finished jobs.
pub const PROMPT_TOKENS: &str = "switchyard_prompt_tokens_total";
/// Counter: generated tokens of finished jobs.
pub const GENERATION_TOKENS: &str = "switchyard_generation_tokens_total";
/// Counter: jobs that ended, by `reason` (`stop`, `length`, `tool_calls`, `error`, `cancelled`).
pub const REQUESTS_FINISHED: &str = "switchyard_requests_finished_total";
/// Counter: jobs that ended in an error, by `code`: the wire's error codes, and `not_queued`,
/// `queue_timeout` or `idle_timeout` when the queue refused the job or no event came in time.
pub const REQUEST_ERRORS: &str = "switchyard_request_errors_total";
/// Counter: jobs cancelled before they ended (the client went away, or a cancel call).
pub const REQUESTS_CANCELLED: &str = "switchyard_requests_cancelled_total";

// The api's gateway policy.
/// Counter: requests refused by a rate limit, by `model` and `limit` (`rpm`, `tpm`, `concurrency`).
pub const RATE_LIMITED: &str = "switchyard_rate_limited_total";

// Per worker.
/// Gauge: the worker's slots.
pub const WORKER_SLOTS: &str = "switchyard_worker_slots";
/// Gauge: slots running a job now.
pub const WORKER_SLOTS_IN_USE: &str = "switchyard_worker_slots_in_use";
/// Counter: jobs the worker started, by `model` and `lane`.
pub const WORKER_JOBS: &str = "switchyard_worker_jobs_total";
/// Counter: jobs that reached this worker on a second or later delivery, by `model`.
pub const REDELIVERIES: &str = "switchyard_redeliveries_total";
/// Counter: jobs the worker gave back to the queue (drained, or its upstream cooling), by `model`.
pub const HANDED_BACK: &str = "switchyard_jobs_handed_back_total";
/// Gauge: rows in the engine's last decoding step (torch workers), by `model`.
pub const ENGINE_BATCH_SIZE: &str = "switchyard_engine_batch_size";
/// Histogram: rows of each decoding step (torch workers), by `model`; its buckets are row counts.
pub const ENGINE_DECODE_ROWS: &str = "switchyard_engine_decode_rows";
/// Gauge: sequences waiting for the engine to admit them (torch workers), by `model`.
pub const ENGINE_WAITING: &str = "switchyard_engine_waiting_sequences";
/// Counter: tokens the engine generated (torch workers), by `model`; `rate()` of it is tokens/s.
pub const ENGINE_GENERATED_TOKENS: &str = "switchyard_engine_generated_tokens_total";
/// Gauge: tokens/s the engine generated over the last few seconds (torch workers), by `model`.
pub const ENGINE_TOKENS_PER_SECOND: &str = "switchyard_engine_tokens_per_second";

// The scheduler's view of the whole system.
/// Gauge: jobs of a lane waiting for a worker, read from its durable consumer (`model`, `kind`, `lane`).
pub const LANE_PENDING: &str = "switchyard_lane_pending";
/// Gauge: jobs of a lane delivered and not yet acknowledged.
pub const LANE_ACK_PENDING: &str = "switchyard_lane_ack_pending";
/// Gauge: live workers serving a model, from the registry.
pub const MODEL_WORKERS: &str = "switchyard_model_workers";
/// Gauge: slots of a model's live workers, from the registry (shared slots count for each model).
pub const MODEL_SLOTS: &str = "switchyard_model_slots";
/// Gauge: slots of a model's live workers running a job, from the registry.
pub const MODEL_SLOTS_IN_USE: &str = "switchyard_model_slots_in_use";
/// Counter: jobs that failed every delivery and went to the dead letters, by `model` and `kind`.
pub const DEAD_LETTERS: &str = "switchyard_dead_letters_total";
/// Gauge: batches by `status` (`validating`, `in_progress`, `finalizing`, …) that this
/// scheduler replica runs or last saw.
pub const BATCHES: &str = "switchyard_batches";
/// Gauge: request counts of unfinished batches, by `state` (`total`, `completed`, `failed`).
pub const BATCH_REQUESTS: &str = "switchyard_batch_requests";

/// Registers every metric's help text (and unit) with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(REQUESTS_WAITING, "Jobs submitted and not yet started by a worker.");
    describe_gauge!(REQUESTS_RUNNING, "Jobs a worker started that have not ended.");
    describe_histogram!(QUEUE_TIME, Unit::Seconds, "Time from submission to a worker's start.");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Time from the request's arrival to its first output.");
    describe_histogram!(INTER_TOKEN_LATENCY, Unit::Seconds, "Time between one output event of a job and the next.");
    describe_histogram!(E2E_LATENCY, Unit::Seconds, "Time from the request's arrival to its job's end.");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens of finished jobs.");
    describe_counter!(GENERATION_TOKENS, "Generated tokens of finished jobs.");
    describe_counter!(REQUESTS_FINISHED, "Jobs that ended, by reason.");
    describe_counter!(REQUEST_ERRORS, "Jobs that ended in an error, by code.");
    describe_counter!(REQUESTS_CANCELLED, "Jobs cancelled before they ended.");
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by limit.");
    describe_gauge!(WORKER_SLOTS, "Slots of this worker.");
    describe_gauge!(WORKER_SLOTS_IN_USE, "Slots of this worker running a job.");
    describe_counter!(WORKER_JOBS, "Jobs this worker started.");
    describe_counter!(REDELIVERIES, "Jobs that reached this worker on a second or later delivery.");
    describe_counter!(HANDED_BACK, "Jobs this worker gave back to the queue.");
    describe_gauge!(ENGINE_BATCH_SIZE, "Rows in the engine's last decoding step.");
    describe_histogram!(ENGINE_DECODE_ROWS, "Rows of each decoding step.");
    describe_gauge!(ENGINE_WAITING, "Sequences waiting for the engine to admit them.");
    describe_counter!(ENGINE_GENERATED_TOKENS, "Tokens the engine generated.");
    describe_gauge!(ENGINE_TOKENS_PER_SECOND, "Tokens per second the engine generated over the last seconds.");
    describe_gauge!(LANE_PENDING, "Jobs of a lane waiting for a worker (its durable consumer's pending count).");
    describe_gauge!(LANE_ACK_PENDING, "Jobs of a lane delivered and not yet acknowledged.");
    describe_gauge!(MODEL_WORKERS, "Live workers serving a model.");
    describe_gauge!(MODEL_SLOTS, "Slots of a model's live workers.");
    describe_gauge!(MODEL_SLOTS_IN_USE, "Slots of a model's live workers running a job.");
    describe_counter!(DEAD_LETTERS, "Jobs that failed every delivery and went to the dead letters.");
    describe_gauge!(BATCHES, "Batches by status.");
    describe_gauge!(BATCH_REQUESTS, "Request counts of unfinished batches.");
}
