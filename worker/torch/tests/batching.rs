//! Continuous batching changes nothing a sequence sees: on models/tiny-llama and the Qwen2,
//! Mistral and llama3-RoPE fixtures, each prompt's logits, greedy ids, seeded samples, stop
//! handling and cancellation are the same whether it runs alone or in a batch with prompts
//! of other lengths that join and leave at other steps.
//!
//! Two levels: the padded prefill itself (`testing::prefill_logits` against
//! `testing::last_logits`), and the engine, where every prompt first runs alone and then
//! again in a batch driven by [`drive`]: a single reader that submits each request only once
//! another has produced some tokens (so it joins a batch already decoding), reads every
//! stream as events come, and cancels or drops a row once it has produced some tokens.
//!
//! Pass or fail never depends on timing. The engine runs ahead of the reader (events are
//! unbounded), so the step at which a row joins is only known to be at or after the step
//! its trigger was seen; what every test compares, each row's output against its alone run,
//! holds whatever those steps turn out to be. The small `max_batch_size` makes some rows
//! wait for a free row, so they join exactly when another row leaves, mid-batch.

mod common;

use std::future::poll_fn;
use std::path::PathBuf;
use std::task::Poll;

use common::*;
use switchyard_torch::*;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

/// Most a logit or logprob may move between a row run alone and in a batch: float
/// rounding of batched against unbatched matrix products, nothing more.
const TOL: f32 = 1e-4;

const FOX: &str = "The quick brown fox";
const FOX_JUMPS: &str = "The quick brown fox jumps over";
const VILLAGE: &str = "Once upon a time, in a small village by the sea,";
const CAFE: &str = "Café crème: 3.50 + 12.75 = ?";
const HELLO: &str = "Hello world!\nHow are you today?";
const KEEPER: &str = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper \
                      who counted the ships every night and wrote their names in a book. ";

/// The fixtures' longest reference prompt (111 tokens on the variants' tokenizer).
fn long_prompt() -> String {
    KEEPER.repeat(2)
}

fn fixture(name: &str) -> PathBuf {
    match name {
        "tiny-llama" => tiny_llama(),
        other => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(other),
    }
}

/// Batches of at most `max_batch_size` rows, where waiting sequences join after one step.
fn engine(dir: PathBuf, max_batch_size: usize) -> Engine {
    let batch = BatchOptions { max_batch_size, max_waiting_tokens: 1, ..BatchOptions::default() };
    Engine::load(EngineOptions { batch, ..EngineOptions::new(dir) }).expect("model loads")
}

/// Greedy, past EOS (so lengths are the test's), with the chosen token's logprob and the
/// top 5 at every step.
fn greedy_top5(max_tokens: u32) -> SamplingParams {
    SamplingParams { ignore_eos: true, top_logprobs: 5, ..greedy(max_tokens) }
}

/// Greedy with nothing but the ids: the scheduler takes these rows' tokens from one argmax
/// over the whole batch.
fn plain_greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), temperature: Some(0.0), ignore_eos: true, ..Default::default() }
}

fn seeded(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: Some(0.8),
        top_p: Some(0.9),
        seed: Some(seed),
        ignore_eos: true,
        logprobs: true,
        ..Default::default()
    }
}

/// One row of a batched run.
#[derive(Clone)]
struct Plan {
    req: GenerateRequest,
    /// Submitted once row `.0` (an earlier row) has produced `.1` tokens, or has ended;
    /// `None`: at once.
    after: Option<(usize, u32)>,
    /// Once it has produced this many tokens: its cancellation token fires…
    cancel_at: Option<u32>,
    /// …or its receiver is dropped.
    drop_at: Option<u32>,
}

impl Plan {
    fn new(prompt: &str, params: SamplingParams) -> Plan {
        Plan { req: text_prompt(prompt, params), after: None, cancel_at: None, drop_at: None }
    }

    fn after(self, row: usize, tokens: u32) -> Plan {
        Plan { after: Some((row, tokens)), ..self }
    }
}

/// What one row of a batched run received.
#[derive(Debug, Default)]
struct Driven {
    out: Outcome,
    /// How many tokens every row had produced (as far as the reader had seen) when this one
    /// was submitted.
    submitted_at: Vec<u32>,
    /// A cancelled row: the deltas it had received once the channel, drained right after the
    /// cancel, was empty.
    deltas_at_cancel: Option<usize>,
}

/// Runs `plans` as one batch on `engine` from a single reader; see the module docs.
fn drive(engine: &Engine, plans: &[Plan]) -> Vec<Driven> {
    struct Row {
        rx: Option<GenerateEvents>,
        cancel: CancellationToken,
        submitted: bool,
        /// Cancelled or dropped.
        abandoned: bool,
        driven: Driven,
    }
    for (i, plan) in plans.iter().enumerate() {
        assert!(plan.after.is_none_or(|(row, _)| row < i), "row {i} waits for a later row");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut rows: Vec<Row> = plans
        .iter()
        .map(|_| Row {
            rx: None,
            cancel: CancellationToken::new(),
            submitted: false,
            abandoned: false,
            driven: Driven::default(),
        })
        .collect();
    rt.block_on(async {
        loop {
            for i in 0..rows.len() {
                let due = match plans[i].after {
                    None => true,
                    Some((row, tokens)) => {
                        rows[row].driven.out.tokens >= tokens || rows[row].driven.out.ended() || rows[row].abandoned
                    }
                };
                if !rows[i].submitted && due {
                    rows[i].driven.submitted_at = rows.iter().map(|r| r.driven.out.tokens).collect();
                    rows[i].rx = Some(engine.generate(plans[i].req.clone(), rows[i].cancel.clone()));
                    rows[i].submitted = true;
                }
            }
            if rows.iter().all(|r| r.submitted && r.rx.is_none()) {
                break;
            }
            let next = poll_fn(|cx| {
                for (i, row) in rows.iter_mut().enumerate() {
                    if let Some(rx) = row.rx.as_mut()
                        && let Poll::Ready(event) = rx.poll_recv(cx)
                    {
                        return Poll::Ready((i, event));
                    }
                }
                Poll::Pending
            });
            // Only a broken engine keeps a stream open this long (e.g. a row never leaves).
            let (i, event) =
                tokio::time::timeout(std::time::Duration::from_secs(120), next).await.expect("no event for 120 s");
            let row = &mut rows[i];
            let Some(event) = event else {
                assert!(row.driven.out.ended(), "row {i}: the stream closed without Finished or Error");
                row.rx = None;
                continue;
            };
            // After its end, a row is out of the batch: its channel closes with nothing more
            // (`push` refuses events after the end).
            if row.driven.out.push(event) {
                continue;
            }
            let tokens = row.driven.out.tokens;
            if plans[i].drop_at.is_some_and(|n| tokens >= n) && !row.abandoned {
                row.abandoned = true;
                row.rx = None;
            } else if plans[i].cancel_at.is_some_and(|n| tokens >= n) && !row.abandoned {
                row.abandoned = true;
                row.cancel.cancel();
                // Everything the engine sent before the cancel is in the channel now.
                let rx = row.rx.as_mut().unwrap();
                loop {
                    match rx.try_recv() {
                        Ok(event) => {
                            row.driven.out.push(event);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            row.rx = None;
                            break;
                        }
                    }
                }
                row.driven.deltas_at_cancel = Some(row.driven.out.deltas.len());
            }
        }
    });
    rows.into_iter().map(|r| r.driven).collect()
}

/// Each plan run on its own, one after the other: nothing else in the batch.
fn alone(engine: &Engine, plans: &[Plan]) -> Vec<Outcome> {
    plans.iter().map(|p| run(engine, p.req.clone())).collect()
}

fn diff(a: f32, b: f32) -> f32 {
    if a == b { 0.0 } else { (a - b).abs() }
}

/// `batched` is `alone`: the same tokens, text, deltas and ending, and every step's logprob
/// and top logprobs within [`TOL`]. Returns the largest logprob difference.
fn assert_same(what: &str, alone: &Outcome, batched: &Outcome) -> f32 {
    assert!(alone.error.is_none(), "{what} alone: {:?}", alone.error);
    assert!(batched.error.is_none(), "{what} batched: {:?}", batched.error);
    let (a, b) = (alone.ids(), batched.ids());
    if let Some(at) = (0..a.len().min(b.len())).find(|&k| a[k] != b[k]) {
        // A near-tie (gap ~1e-5) is rounding between batched and unbatched products; a large
        // gap is a bug.
        let top = |o: &Outcome| -> Vec<(u32, f32)> {
            o.logprobs[at].top_logprobs.iter().map(|t| (t.token_id, t.logprob)).collect()
        };
        panic!(
            "{what}: the tokens differ at step {at}: alone {} ({}), batched {} ({}); gap alone {:e}\n\
             alone's top logprobs there: {:?}\nbatched's: {:?}",
            a[at],
            alone.logprobs[at].logprob,
            b[at],
            batched.logprobs[at].logprob,
            alone.logprobs[at].logprob - alone.logprobs[at].top_logprobs.get(1).map_or(f32::NAN, |t| t.logprob),
            top(alone),
            top(batched),
        );
    }
    assert_eq!(a.len(), b.len(), "{what}: token counts");
    assert_eq!(batched.text, alone.text, "{what}: text");
    assert_eq!(batched.deltas, alone.deltas, "{what}: deltas");
    assert_eq!(batched.finish, alone.finish, "{what}: finish");
    let mut worst = 0.0f32;
    for (step, (x, y)) in alone.logprobs.iter().zip(&batched.logprobs).enumerate() {
        worst = worst.max(diff(x.logprob, y.logprob));
        assert_eq!(x.top_logprobs.len(), y.top_logprobs.len(), "{what} step {step}: top logprobs");
        for (rank, (p, q)) in x.top_logprobs.iter().zip(&y.top_logprobs).enumerate() {
            worst = worst.max(diff(p.logprob, q.logprob));
            assert!(
                diff(p.logprob, q.logprob) <= TOL,
                "{what} step {step}: top logprob {rank} is {} alone, {} batched",
                p.logprob,
                q.logprob
            );
            // Ranks may swap only between (near-)tied alternatives.
            if p.token_id != q.token_id {
                let tie = x.top_logprobs.iter().find(|t| t.token_id == q.token_id);
                assert!(
                    tie.is_some_and(|t| diff(t.logprob, q.logprob) <= TOL)
                        || (rank + 1 == x.top_logprobs.len() && diff(p.logprob, q.logprob) <= TOL),
                    "{what} step {step}: rank {rank} is token {} alone, {} batched",
                    p.token_id,
                    q.token_id
                );
            }
        }
    }
    assert!(worst <= TOL, "{what}: logprobs moved by {worst}");
    worst
}

/// At least one row had to wait for another to produce tokens first (so it joined a batch
/// already decoding), as far as the reader saw.
fn note_overlap(what: &str, plans: &[Plan], driven: &[Driven]) {
    for (i, (plan, d)) in plans.iter().zip(driven).enumerate() {
        if let Some((row, _)) = plan.after {
            let seen = d.submitted_at[row];
            let of = driven[row].out.finish.map_or(0, |f| f.2);
            eprintln!("{what}: row {i} submitted when row {row} had {seen} of its {of} tokens");
        }
    }
}

// ---- the padded prefill ---------------------------------------------------------------------

/// Several prompts of different lengths prefilled in one left-padded forward pass give each
/// the last-position logits it has alone.
fn padded_prefill_matches_alone(name: &str) {
    let dir = fixture(name);
    let engine = load(dir.clone(), None);
    let long = long_prompt();
    let texts = [FOX, VILLAGE, CAFE, HELLO, long.as_str()];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenize(t, true).unwrap()).collect();
    let mut lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    lens.sort_unstable();
    lens.dedup();
    assert!(lens.len() >= 4, "{name}: the prompts should have different lengths: {lens:?}");

    let alone: Vec<Vec<f32>> =
        ids.iter().map(|p| switchyard_torch::testing::last_logits(&dir, DType::F32, p).unwrap()).collect();
    // All five, and a subset in another order (the longest first, so other rows pad more).
    let orders: [Vec<usize>; 2] = [vec![0, 1, 2, 3, 4], vec![4, 2, 0]];
    let mut worst = 0.0f32;
    for order in orders {
        let prompts: Vec<Vec<u32>> = order.iter().map(|&i| ids[i].clone()).collect();
        let batched = switchyard_torch::testing::prefill_logits(&dir, DType::F32, &prompts).unwrap();
        assert_eq!(batched.len(), order.len());
        for (row, &i) in order.iter().enumerate() {
            assert_eq!(batched[row].len(), alone[i].len());
            let d = batched[row].iter().zip(&alone[i]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d <= TOL, "{name}: prompt {i} ({} tokens) moved by {d} in row {row} of {order:?}", ids[i].len());
            worst = worst.max(d);
        }
    }
    // Not vacuous: different prompts do give different logits.
    let spread = alone[0].iter().zip(&alone[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(spread > 0.01, "{name}: two prompts gave the same logits");
    eprintln!("{name}: padded prefill within {worst:e} of each prompt alone (lengths {lens:?})");
}

#[test]
fn padded_prefill_matches_alone_tiny_llama() {
    padded_prefill_matches_alone("tiny-llama");
}

#[test]
fn padded_prefill_matches_alone_qwen2() {
    padded_prefill_matches_alone("tiny-qwen2");
}

#[test]
fn padded_prefill_matches_alone_mistral() {
    padded_prefill_matches_alone("tiny-mistral");
}

#[test]
fn padded_prefill_matches_alone_llama3_rope() {
    padded_prefill_matches_alone("tiny-llama3-rope");
}

// ---- the engine: joining and leaving ---------------------------------------------------------

/// Seven rows of five prompt lengths on a batch of at most four: rows join at different steps
/// (two of them together), the last three wait for rows to leave, every row leaves at its
/// own `max_tokens` (one right after its prefill), one row takes its tokens from the batch
/// argmax.
fn join_and_leave_plans() -> Vec<Plan> {
    let long = long_prompt();
    vec![
        Plan::new(FOX, greedy_top5(90)),
        Plan::new(&long, greedy_top5(25)).after(0, 4),
        // Submitted together: usually prefilled together, left-padded.
        Plan::new(VILLAGE, greedy_top5(50)).after(0, 8),
        Plan::new(CAFE, greedy_top5(40)).after(0, 8),
        // The batch is full: these join as rows leave.
        Plan::new(HELLO, greedy_top5(30)).after(2, 5),
        Plan::new(FOX_JUMPS, plain_greedy(60)).after(3, 3),
        // Ends at its prefill, beside rows that go on.
        Plan::new(CAFE, greedy_top5(1)).after(0, 12),
    ]
}

fn joins_and_leaves_change_nothing(name: &str) {
    let engine = engine(fixture(name), 4);
    let plans = join_and_leave_plans();
    let alone = alone(&engine, &plans);
    let batched = drive(&engine, &plans);
    note_overlap(name, &plans, &batched);
    let mut worst = 0.0f32;
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        let want = plans[i].req.params.max_tokens.unwrap();
        assert_eq!(a.finish.map(|f| (f.0, f.2)), Some((FinishReason::Length, want)), "{name} row {i} alone");
        worst = worst.max(assert_same(&format!("{name} row {i}"), a, &b.out));
    }
    // The plain greedy row has no logprobs to compare: its text and deltas were compared.
    assert!(alone[5].logprobs.is_empty() && !alone[5].text.is_empty());
    eprintln!("{name}: every row as alone; logprobs within {worst:e}");
}

#[test]
fn joins_and_leaves_change_nothing_tiny_llama() {
    joins_and_leaves_change_nothing("tiny-llama");
}

#[test]
fn joins_and_leaves_change_nothing_qwen2() {
    joins_and_leaves_change_nothing("tiny-qwen2");
}

#[test]
fn joins_and_leaves_change_nothing_mistral() {
    joins_and_leaves_change_nothing("tiny-mistral");
}

#[test]
fn joins_and_leaves_change_nothing_llama3_rope() {
    joins_and_leaves_change_nothing("tiny-llama3-rope");
}

// ---- seeded sampling ------------------------------------------------------------------------

fn seeded_sampling_is_the_same_batched(name: &str) {
    let engine = engine(fixture(name), 4);
    let long = long_prompt();
    let plans = vec![
        Plan::new(FOX, seeded(11, 70)),
        Plan::new(VILLAGE, seeded(12, 30)).after(0, 5),
        Plan::new(&long, seeded(13, 40)).after(0, 5),
        Plan::new(FOX, greedy_top5(45)).after(1, 3),
        // Waits for a free row.
        Plan::new(CAFE, seeded(14, 35)).after(2, 4),
        // The same prompt and seed as row 0, joining later: the same draws.
        Plan::new(FOX, seeded(11, 20)).after(4, 2),
    ];
    let alone = alone(&engine, &plans);
    let batched = drive(&engine, &plans);
    note_overlap(name, &plans, &batched);
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_same(&format!("{name} row {i}"), a, &b.out);
    }
    // Not vacuous: it really sampled (row 0 is not the greedy continuation of the same
    // prompt), and a seed's draws depend on the seed alone.
    let fox_greedy = alone[3].ids();
    assert_ne!(alone[0].ids()[..45], fox_greedy[..], "{name}: sampling at 0.8 reproduced greedy decoding");
    assert_eq!(alone[5].ids()[..], alone[0].ids()[..20], "{name}: the same seed drew differently");
}

#[test]
fn seeded_sampling_is_the_same_batched_tiny_llama() {
    seeded_sampling_is_the_same_batched("tiny-llama");
}

#[test]
fn seeded_sampling_is_the_same_batched_qwen2() {
    seeded_sampling_is_the_same_batched("tiny-qwen2");
}

// ---- stop strings and max_tokens per row ----------------------------------------------------

/// A few ASCII letters or digits from the middle of `text` that first occur there.
fn stop_string_in(text: &str, from_char: usize) -> String {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    (from_char..chars.len().saturating_sub(3))
        .find_map(|i| {
            let start = chars[i].0;
            let candidate: String = text[start..].chars().take(3).collect();
            (candidate.chars().all(|c| c.is_ascii_alphanumeric()) && text.find(&candidate) == Some(start))
                .then_some(candidate)
        })
        .unwrap_or_else(|| panic!("no usable stop string after char {from_char} of {text:?}"))
}

#[test]
fn stop_strings_and_max_tokens_end_each_row_as_alone() {
    let engine = engine(tiny_llama(), 4);
    let long = long_prompt();
    // Stop strings from the middle of each prompt's greedy continuation.
    let full = |prompt: &str| run(&engine, text_prompt(prompt, plain_greedy(60)));
    let (fox, village, cafe) = (full(FOX), full(VILLAGE), full(CAFE));
    let fox_stop = stop_string_in(&fox.text, 20);
    let village_stop = stop_string_in(&village.text, 30);
    let hello_first = run(&engine, text_prompt(HELLO, greedy_top5(1))).ids()[0];
    let cafe_ids = run(&engine, text_prompt(CAFE, greedy_top5(60))).ids();
    assert_eq!(cafe.text, engine.detokenize(&cafe_ids).unwrap());
    let stop_id = cafe_ids[6];
    let first_stop = cafe_ids.iter().position(|&id| id == stop_id).unwrap() as u32 + 1;

    let with = |base: SamplingParams, stop: &[&str], ids: &[u32]| SamplingParams {
        stop: stop.iter().map(|s| s.to_string()).collect(),
        stop_token_ids: ids.to_vec(),
        ..base
    };
    let plans = vec![
        // Runs past everyone; a stop string that never comes.
        Plan::new(HELLO, with(greedy_top5(80), &["\u{1F600}never"], &[])),
        Plan::new(FOX, with(greedy_top5(60), &["zzzz", &fox_stop], &[])).after(0, 3),
        Plan::new(VILLAGE, with(plain_greedy(60), &[&village_stop], &[])).after(0, 3),
        Plan::new(CAFE, with(greedy_top5(60), &[], &[stop_id])).after(1, 2),
        // The batch is full: joins when a row leaves; ends on max_tokens.
        Plan::new(&long, with(greedy_top5(13), &["\u{1F600}"], &[])).after(2, 1),
        Plan::new(FOX_JUMPS, plain_greedy(21)).after(3, 1),
        // Stops on its first token, at its prefill.
        Plan::new(HELLO, with(greedy_top5(40), &[], &[hello_first])).after(1, 4),
    ];
    let alone = alone(&engine, &plans);
    // Each row ends as designed, alone.
    let ending = |o: &Outcome| o.finish.map(|f| (f.0, f.2)).unwrap();
    assert_eq!(ending(&alone[0]), (FinishReason::Length, 80));
    assert_eq!(alone[1].reason(), FinishReason::Stop);
    assert_eq!(alone[1].text, fox.text[..fox.text.find(&fox_stop).unwrap()]);
    assert_eq!(alone[2].reason(), FinishReason::Stop);
    assert_eq!(alone[2].text, village.text[..village.text.find(&village_stop).unwrap()]);
    assert_eq!(ending(&alone[3]), (FinishReason::Stop, first_stop));
    assert_eq!(ending(&alone[4]), (FinishReason::Length, 13));
    assert_eq!(ending(&alone[5]), (FinishReason::Length, 21));
    assert_eq!(ending(&alone[6]), (FinishReason::Stop, 1));

    let batched = drive(&engine, &plans);
    note_overlap("stops", &plans, &batched);
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_same(&format!("stops row {i}"), a, &b.out);
        for stop in &plans[i].req.params.stop {
            assert!(b.out.deltas.iter().all(|d| !d.contains(stop.as_str())), "row {i}: a delta holds {stop:?}");
        }
    }
}

// ---- cancellation -----------------------------------------------------------------------

/// The most tokens a row cancelled by [`drive`] may have generated: what it had generated
/// when the cancel landed, plus the one step that may have been under way.
///
/// The reader cannot see how far the engine had got, but the channel, drained right after
/// the cancel, holds every delta sent before it. The batched row's deltas are the alone
/// run's (the same tokens), so if it holds the first `m` of them, the engine had not yet
/// accepted the token that releases delta `m + 1`: fewer than `A(m + 1)` tokens, the
/// alone run's token count up to that delta. A row is dropped at the start of the first step
/// after its cancel, so at most one more token follows: at most `A(m + 1)` in all. (Tokens
/// whose text is held back, e.g. an unfinished UTF-8 character, are why this counts deltas
/// rather than tokens.)
fn one_step_bound(alone: &Outcome, cancelled: &Driven) -> u32 {
    let received = cancelled.deltas_at_cancel.expect("the row was cancelled");
    let matching = cancelled
        .out
        .deltas
        .iter()
        .zip(&cancelled.out.delta_tokens)
        .zip(alone.deltas.iter().zip(&alone.delta_tokens))
        .take(received)
        .take_while(|(b, a)| b == a)
        .count();
    alone.delta_tokens.iter().take(matching + 1).sum()
}

/// Where to cancel a row so that [`one_step_bound`] is sharp: after a token whose delta,
/// and the next three, carry one token each (no text held back there), at least 5 tokens in.
fn sharp_cancel_point(alone: &Outcome) -> u32 {
    let d = &alone.delta_tokens;
    let j = (4..d.len().saturating_sub(3))
        .find(|&j| d[j..j + 4].iter().all(|&n| n == 1))
        .expect("a stretch of one-token deltas");
    d[..=j].iter().sum()
}

#[test]
fn a_row_cancelled_mid_batch_stops_within_one_step() {
    let engine = engine(tiny_llama(), 6);
    let long = long_prompt();
    // The others are long, so the batch goes on stepping long after the cancels.
    let mut plans = vec![
        Plan::new(FOX, greedy_top5(120)),
        Plan::new(&long, greedy_top5(100)).after(0, 2),
        Plan::new(VILLAGE, greedy_top5(200)).after(0, 3),
        Plan::new(CAFE, greedy_top5(200)).after(1, 2),
        Plan::new(HELLO, plain_greedy(110)).after(2, 1),
        Plan::new(FOX_JUMPS, greedy_top5(150)).after(0, 5),
    ];
    let alone = alone(&engine, &plans);
    let cancelled = [2, 5];
    for &i in &cancelled {
        plans[i].cancel_at = Some(sharp_cancel_point(&alone[i]));
    }
    plans[3].drop_at = Some(4);
    let batched = drive(&engine, &plans);
    note_overlap("cancel", &plans, &batched);
    for i in [0, 1, 4] {
        assert_same(&format!("cancel row {i}"), &alone[i], &batched[i].out);
    }

    for i in cancelled {
        let row = &batched[i];
        let (reason, _, completion_tokens) = row.out.finish.expect("the cancelled row finished");
        assert_eq!(reason, FinishReason::Cancelled, "row {i}");
        let (seen, bound) = (plans[i].cancel_at.unwrap(), one_step_bound(&alone[i], row));
        eprintln!(
            "row {i} cancelled at {seen} tokens seen, {} deltas drained: finished at {completion_tokens}, bound {bound}",
            row.deltas_at_cancel.unwrap()
        );
        assert!(completion_tokens >= seen, "row {i} had produced {seen} tokens");
        assert!(
            completion_tokens <= bound,
            "row {i}: {completion_tokens} tokens: it ran on past the step after the cancel ({bound})"
        );
        // What it produced is the start of its alone run.
        let n = row.out.ids().len();
        assert_eq!(row.out.ids()[..], alone[i].ids()[..n], "row {i}");
        assert!(alone[i].text.starts_with(&row.out.text), "row {i}");
    }
}

#[test]
fn a_waiting_row_cancelled_never_runs() {
    let engine = engine(tiny_llama(), 2);
    let first = text_prompt(FOX, greedy_top5(200));
    let second = text_prompt(HELLO, greedy_top5(180));
    let (want_first, want_second) = (run(&engine, first.clone()), run(&engine, second.clone()));

    // Both rows of the batch taken…
    let mut a = engine.generate(first, CancellationToken::new());
    let mut b = engine.generate(second, CancellationToken::new());
    let (mut out_a, mut out_b) = (Outcome::default(), Outcome::default());
    for (rx, out) in [(&mut a, &mut out_a), (&mut b, &mut out_b)] {
        while out.tokens == 0 {
            assert!(!out.push(rx.blocking_recv().unwrap()), "ended early");
        }
    }
    // …a third waits, and is cancelled at once.
    let cancel = CancellationToken::new();
    let c = engine.generate(text_prompt(VILLAGE, greedy_top5(50)), cancel.clone());
    cancel.cancel();
    // Everything the engine sent before the cancel is in the channels now: if neither row
    // had ended, no row was free before the cancel, and the scheduler drops cancelled
    // sequences before it admits any.
    let mut still_full = true;
    for (rx, out) in [(&mut a, &mut out_a), (&mut b, &mut out_b)] {
        while let Ok(event) = rx.try_recv() {
            still_full &= !out.push(event);
        }
    }
    let out_c = collect(c);
    for (rx, out) in [(a, &mut out_a), (b, &mut out_b)] {
        let mut rx = rx;
        while let Some(event) = rx.blocking_recv() {
            out.push(event);
        }
    }
    assert_same("first", &want_first, &out_a);
    assert_same("second", &want_second, &out_b);
    assert_eq!(out_c.reason(), FinishReason::Cancelled);
    if still_full {
        assert_eq!(out_c.finish.unwrap().2, 0, "the waiting row generated tokens");
        assert!(out_c.text.is_empty() && out_c.deltas.is_empty());
        eprintln!("the waiting row was cancelled while both rows ran: 0 tokens");
    } else {
        // The reader fell some 180 steps behind: the claim cannot be made this time.
        eprintln!("a row had ended before the cancel; completion_tokens {}", out_c.finish.unwrap().2);
    }
}
