//! all-MiniLM-L6-v2 against sentence-transformers (tests/data/minilm_reference.json, made by
//! tests/data/make_minilm_reference.py).

mod common;

use common::*;
use switchyard_torch::*;

struct Reference {
    max_seq_length: u32,
    sentences: Vec<String>,
    token_counts: Vec<u32>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm_reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn get<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> T {
        serde_json::from_value(v[k].clone()).unwrap()
    }
    Reference {
        max_seq_length: v["max_seq_length"].as_u64().unwrap() as u32,
        sentences: get(&v, "sentences"),
        token_counts: get(&v, "token_counts"),
        embeddings: get(&v, "embeddings"),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn embed(engine: &Engine, texts: Vec<String>) -> Embeddings {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(engine.embed(texts)).unwrap()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let r = reference();
    assert!(r.sentences.len() >= 5);
    let engine = load(minilm(), None);
    let info = engine.info();
    assert_eq!(info.kind, ModelKind::Encoder);
    assert_eq!(info.architecture, "BertModel");
    assert_eq!(info.context_length, r.max_seq_length, "context length is sentence_bert max_seq_length");
    assert_eq!(info.embedding_dim, Some(384));

    let out = embed(&engine, r.sentences.clone());
    assert_eq!(out.vectors.len(), r.sentences.len());
    assert_eq!(out.prompt_tokens, r.token_counts.iter().sum::<u32>(), "token counts after truncation");
    for ((got, want), text) in out.vectors.iter().zip(&r.embeddings).zip(&r.sentences) {
        assert_eq!(got.len(), want.len());
        let c = cosine(got, want);
        eprintln!("cosine {c:.9} for {:?}", &text[..text.len().min(30)]);
        assert!(c >= 0.9999, "cosine {c} for {:?}", &text[..text.len().min(40)]);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "Normalize module: |v| = {norm}");
    }
    // The long sentence really was truncated (else it would count far more tokens).
    assert!(r.token_counts.contains(&r.max_seq_length));
}

#[test]
fn batching_and_padding_do_not_change_vectors() {
    let r = reference();
    let engine = load(minilm(), None);
    let alone: Vec<Vec<f32>> = r.sentences.iter().map(|s| embed(&engine, vec![s.clone()]).vectors.remove(0)).collect();
    // More inputs than one batch, mixed lengths, in an order that differs from length order.
    let texts: Vec<String> = (0..EMBED_BATCH + 7).map(|i| r.sentences[(i * 5) % r.sentences.len()].clone()).collect();
    let out = embed(&engine, texts.clone());
    assert_eq!(out.vectors.len(), texts.len());
    for (i, v) in out.vectors.iter().enumerate() {
        let want = &alone[(i * 5) % r.sentences.len()];
        assert!(cosine(v, want) > 0.99999, "input {i} changed when batched");
    }
    assert!(embed(&engine, Vec::new()).vectors.is_empty());
}

#[test]
fn generation_is_refused_on_an_encoder() {
    let engine = load(minilm(), None);
    let out = run(&engine, text_prompt("hello", greedy(4)));
    assert_eq!(out.error.unwrap().code, "unsupported");
}

/// `n` distinct texts of 2 to 24 words (and so of many token counts).
fn varied_sentences(n: usize) -> Vec<String> {
    let words = ["river", "mountains", "weather", "guitar", "stage", "lighthouse", "ships", "night", "book", "village"];
    (0..n)
        .map(|i| {
            let body: Vec<&str> = (0..1 + (i * 7) % 23).map(|j| words[(i + j * 3) % words.len()]).collect();
            format!("{i}: {}.", body.join(" "))
        })
        .collect()
}

#[test]
fn concurrent_requests_share_batches_without_changing_vectors() {
    let r = reference();
    let engine = load(minilm(), None);
    // The reference sentences (the truncated 256-token one among them) and 27 more.
    let mut texts: Vec<String> = r.sentences.iter().filter(|s| !s.is_empty()).cloned().collect();
    texts.extend(varied_sentences(32 - texts.len()));
    let alone: Vec<Embeddings> = texts.iter().map(|s| embed(&engine, vec![s.clone()])).collect();
    // The big request's texts: the short ones, out of length order.
    let short: Vec<usize> = (0..texts.len()).filter(|&i| alone[i].prompt_tokens < 64).collect();
    let big_text = |i: usize| short[(i * 7) % short.len()];
    const BIG: usize = 300;

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (big, singles) = rt.block_on(async {
        // A request of more than one round goes first, so the model thread is busy while the
        // one-text requests queue up behind it; they are encoded together, with its last texts.
        let big_texts: Vec<String> = (0..BIG).map(|i| texts[big_text(i)].clone()).collect();
        let e = engine.clone();
        let big = tokio::spawn(async move { e.embed(big_texts).await });
        let singles: Vec<_> = texts
            .iter()
            .map(|t| {
                let (e, t) = (engine.clone(), t.clone());
                tokio::spawn(async move { e.embed(vec![t]).await })
            })
            .collect();
        let big = big.await.unwrap().unwrap();
        let mut outs = Vec::new();
        for s in singles {
            outs.push(s.await.unwrap().unwrap());
        }
        (big, outs)
    });
    let mut worst = 1.0f64;
    for (i, (out, want)) in singles.iter().zip(&alone).enumerate() {
        assert_eq!(out.vectors.len(), 1);
        assert_eq!(out.prompt_tokens, want.prompt_tokens, "text {i}: token count");
        let c = cosine(&out.vectors[0], &want.vectors[0]);
        worst = worst.min(c);
        assert!(c >= 0.99999, "text {i} changed when encoded with other requests: cosine {c}");
    }
    assert_eq!(big.vectors.len(), BIG);
    assert_eq!(big.prompt_tokens, (0..BIG).map(|i| alone[big_text(i)].prompt_tokens).sum::<u32>());
    for (i, v) in big.vectors.iter().enumerate() {
        let c = cosine(v, &alone[big_text(i)].vectors[0]);
        worst = worst.min(c);
        assert!(c >= 0.99999, "input {i} of the big request changed: cosine {c}");
    }
    // Not vacuous: the texts do have different vectors.
    assert!(cosine(&alone[0].vectors[0], &alone[1].vectors[0]) < 0.99, "two different texts gave the same vector");
    eprintln!("concurrent embeddings: worst cosine with each text alone {worst:.9}");
}
