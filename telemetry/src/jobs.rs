//! A job's life as its submitter sees it, per model and lane: [`JobWatch`] follows one job's
//! events and records waiting/running, queue time, time to first token, inter-token latency,
//! end-to-end latency, tokens, finish reasons, errors and cancellations ([`crate::names`]).
//! Interactive jobs also go into a per-model window of the last minute ([`last_minute`]), which
//! the api's status page shows.
//!
//! Handles are looked up once per job (one read lock, one hash), then each record is an atomic
//! operation or an append to a lock-free bucket.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram};
use switchyard_schemas::{ErrorCode, EventBody, FinishReason, Lane};

use crate::names;
use crate::prometheus::LATENCY_BUCKETS;

/// Why a job ended without a terminal event from its worker, as its submitter saw it.
#[derive(Debug, Clone, Copy)]
pub enum Unanswered {
    /// The queue did not take it.
    NotQueued,
    /// No worker started it within the queue timeout.
    QueueTimeout,
    /// Its worker went silent for longer than the idle timeout.
    IdleTimeout,
}

impl Unanswered {
    fn code(self) -> &'static str {
        match self {
            Unanswered::NotQueued => "not_queued",
            Unanswered::QueueTimeout => "queue_timeout",
            Unanswered::IdleTimeout => "idle_timeout",
        }
    }
}

/// The series of one (model, lane).
struct Series {
    model: String,
    lane: Lane,
    waiting: Gauge,
    running: Gauge,
    queue_time: Histogram,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    cancelled: Counter,
    finished: [Counter; 5],
    /// The last minute of an interactive lane.
    window: Option<Mutex<Window>>,
}

const FINISHED_REASONS: [&str; 5] = ["stop", "length", "tool_calls", "cancelled", "error"];

impl Series {
    fn new(model: &str, lane: Lane) -> Self {
        let labels = [("model", model.to_string()), ("lane", lane.as_str().to_string())];
        let finished = FINISHED_REASONS.map(|reason| {
            let mut labels = labels.to_vec();
            labels.push(("reason", reason.to_string()));
            metrics::counter!(names::REQUESTS_FINISHED, &labels)
        });
        Self {
            model: model.to_string(),
            lane,
            waiting: metrics::gauge!(names::REQUESTS_WAITING, &labels),
            running: metrics::gauge!(names::REQUESTS_RUNNING, &labels),
            queue_time: metrics::histogram!(names::QUEUE_TIME, &labels),
            time_to_first_token: metrics::histogram!(names::TIME_TO_FIRST_TOKEN, &labels),
            inter_token_latency: metrics::histogram!(names::INTER_TOKEN_LATENCY, &labels),
            e2e: metrics::histogram!(names::E2E_LATENCY, &labels),
            prompt_tokens: metrics::counter!(names::PROMPT_TOKENS, &labels),
            generation_tokens: metrics::counter!(names::GENERATION_TOKENS, &labels),
            cancelled: metrics::counter!(names::REQUESTS_CANCELLED, &labels),
            finished,
            window: (lane == Lane::Interactive).then(|| Mutex::new(Window::default())),
        }
    }

    fn finished(&self, reason: FinishReason) -> &Counter {
        let index = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::ToolCalls => 2,
            FinishReason::Cancelled => 3,
        };
        &self.finished[index]
    }

    fn error(&self, code: &'static str) {
        self.finished[4].increment(1);
        metrics::counter!(names::REQUEST_ERRORS, "model" => self.model.clone(), "lane" => self.lane.as_str(), "code" => code).increment(1);
    }
}

type SeriesMap = HashMap<(String, Lane), Arc<Series>>;

static SERIES: LazyLock<RwLock<SeriesMap>> = LazyLock::new(Default::default);

fn series(model: &str, lane: Lane) -> Arc<Series> {
    if let Some(series) = SERIES.read().unwrap().get(&(model.to_string(), lane)) {
        return series.clone();
    }
    SERIES.write().unwrap().entry((model.to_string(), lane)).or_insert_with(|| Arc::new(Series::new(model, lane))).clone()
}

/// One job followed from submission to its end. Dropped before its end, it counts as cancelled.
pub struct JobWatch {
    series: Arc<Series>,
    arrived: Instant,
    submitted: Instant,
    started: bool,
    last_output: Option<Instant>,
    ended: bool,
}

impl JobWatch {
    /// A job of `model` in `lane` submitted now for a request that arrived at `arrived`.
    pub fn submitted(model: &str, lane: Lane, arrived: Instant) -> Self {
        let series = series(model, lane);
        series.waiting.increment(1.0);
        Self { series, arrived, submitted: Instant::now(), started: false, last_output: None, ended: false }
    }

    /// Records one event of the job, in order.
    pub fn event(&mut self, event: &EventBody) {
        if self.ended {
            return;
        }
        let now = Instant::now();
        let series = &*self.series;
        match event {
            EventBody::Started { .. } => {
                if !self.started {
                    self.started = true;
                    series.waiting.decrement(1.0);
                    series.running.increment(1.0);
                    series.queue_time.record(now - self.submitted);
                }
            }
            EventBody::Delta { .. }
            | EventBody::ToolCallStart { .. }
            | EventBody::ToolCallArguments { .. }
            | EventBody::Embeddings { .. }
            | EventBody::ToolResult { .. }
            | EventBody::ToolChunk { .. } => {
                match self.last_output {
                    None => {
                        let ttft = now - self.arrived;
                        series.time_to_first_token.record(ttft);
                        if let Some(window) = &series.window {
                            window.lock().unwrap().first_token(ttft);
                        }
                    }
                    Some(last) => series.inter_token_latency.record(now - last),
                }
                self.last_output = Some(now);
            }
            EventBody::Done { finish_reason, usage } => {
                series.prompt_tokens.increment(u64::from(usage.prompt_tokens));
                series.generation_tokens.increment(u64::from(usage.completion_tokens));
                series.finished(*finish_reason).increment(1);
                if *finish_reason == FinishReason::Cancelled {
                    series.cancelled.increment(1);
                }
                self.end(now, false);
            }
            EventBody::Error { code: ErrorCode::Cancelled, .. } => {
                series.finished(FinishReason::Cancelled).increment(1);
                series.cancelled.increment(1);
                self.end(now, false);
            }
            EventBody::Error { code, .. } => {
                series.error(code.as_str());
                self.end(now, true);
            }
        }
    }

    /// Records that no event came in time: the job ends here for its submitter.
    pub fn unanswered(&mut self, why: Unanswered) {
        if !self.ended {
            self.series.error(why.code());
            self.end(Instant::now(), true);
        }
    }

    fn end(&mut self, now: Instant, failed: bool) {
        self.ended = true;
        let series = &*self.series;
        if self.started {
            series.running.decrement(1.0);
        } else {
            series.waiting.decrement(1.0);
        }
        series.e2e.record(now - self.arrived);
        if let Some(window) = &series.window {
            window.lock().unwrap().ended(failed);
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        if !self.ended {
            self.series.cancelled.increment(1);
            self.series.finished(FinishReason::Cancelled).increment(1);
            self.end(Instant::now(), false);
        }
    }
}

/// One model's interactive requests over the last minute.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MinuteStats {
    pub model: String,
    /// Jobs that ended.
    pub finished: u64,
    /// Of those, jobs that ended in an error.
    pub errors: u64,
    /// `errors / finished`, 0 without any.
    pub error_rate: f64,
    /// Median time to first token, seconds (the upper bound of its histogram bucket).
    pub ttft_p50_s: Option<f64>,
    /// 95th percentile time to first token, seconds (as above).
    pub ttft_p95_s: Option<f64>,
}

const WINDOW_SECONDS: usize = 60;

/// Sixty one-second slots; a slot is reused once its second is a minute old.
#[derive(Default)]
struct Window {
    slots: Vec<Slot>,
}

#[derive(Clone, Default)]
struct Slot {
    second: u64,
    finished: u64,
    errors: u64,
    ttft: Vec<u64>,
}

fn unix_second() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Window {
    fn slot(&mut self, second: u64) -> &mut Slot {
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); WINDOW_SECONDS];
        }
        let slot = &mut self.slots[second as usize % WINDOW_SECONDS];
        if slot.second != second {
            *slot = Slot { second, ttft: vec![0; LATENCY_BUCKETS.len() + 1], ..Slot::default() };
        }
        slot
    }

    fn first_token(&mut self, ttft: Duration) {
        let bucket = LATENCY_BUCKETS.iter().position(|&bound| ttft.as_secs_f64() <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.slot(unix_second()).ttft[bucket] += 1;
    }

    fn ended(&mut self, failed: bool) {
        let slot = self.slot(unix_second());
        slot.finished += 1;
        slot.errors += u64::from(failed);
    }

    fn stats(&self, model: &str, now: u64) -> MinuteStats {
        let recent = self.slots.iter().filter(|slot| slot.second + WINDOW_SECONDS as u64 > now && slot.second <= now);
        let (mut finished, mut errors, mut ttft) = (0, 0, vec![0u64; LATENCY_BUCKETS.len() + 1]);
        for slot in recent {
            finished += slot.finished;
            errors += slot.errors;
            for (total, count) in ttft.iter_mut().zip(&slot.ttft) {
                *total += count;
            }
        }
        let error_rate = if finished == 0 { 0.0 } else { errors as f64 / finished as f64 };
        MinuteStats {
            model: model.to_string(),
            finished,
            errors,
            error_rate,
            ttft_p50_s: quantile(&ttft, 0.5),
            ttft_p95_s: quantile(&ttft, 0.95),
        }
    }
}

/// The upper bound of the bucket holding quantile `q` (the largest finite bound past the last).
fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(LATENCY_BUCKETS.get(index).copied().unwrap_or(*LATENCY_BUCKETS.last().unwrap()));
        }
    }
    None
}

/// Every model's interactive requests of the last minute that went through this process.
pub fn last_minute() -> Vec<MinuteStats> {
    let now = unix_second();
    let mut stats: Vec<MinuteStats> = SERIES
        .read()
        .unwrap()
        .values()
        .filter_map(|series| series.window.as_ref().map(|window| window.lock().unwrap().stats(&series.model, now)))
        .collect();
    stats.sort_by(|a, b| a.model.cmp(&b.model));
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::Usage;

    #[test]
    fn a_job_moves_from_waiting_to_running_to_the_window() {
        let model = "window-test-model";
        let mut watch = JobWatch::submitted(model, Lane::Interactive, Instant::now());
        watch.event(&EventBody::Started { worker_id: "w".into(), attempt: 1, prompt_tokens: None });
        watch.event(&EventBody::Delta { text: "a".into(), tokens: 1, logprobs: vec![] });
        watch.event(&EventBody::Done { finish_reason: FinishReason::Stop, usage: Usage { prompt_tokens: 3, completion_tokens: 1 } });
        let mut failing = JobWatch::submitted(model, Lane::Interactive, Instant::now());
        failing.event(&EventBody::error(ErrorCode::BackendError, "boom"));
        let stats = last_minute().into_iter().find(|s| s.model == model).unwrap();
        assert_eq!((stats.finished, stats.errors), (2, 1));
        assert_eq!(stats.error_rate, 0.5);
        assert!(stats.ttft_p50_s.is_some_and(|s| s <= 1.0), "{stats:?}");
        // A batch job is not in the interactive window.
        drop(JobWatch::submitted("batch-only-model", Lane::Batch, Instant::now()));
        assert!(last_minute().iter().all(|s| s.model != "batch-only-model"));
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
        counts[2] = 9; // ≤ 1 ms
        counts[5] = 1; // ≤ 10 ms
        assert_eq!(quantile(&counts, 0.5), Some(0.001));
        assert_eq!(quantile(&counts, 0.95), Some(0.01));
        assert_eq!(quantile(&[0; 3], 0.5), None);
    }
}
