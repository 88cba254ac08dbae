//! `tokenizer.json` through the `tokenizers` crate, incremental detokenization, and the stop
//! string gate that decides which generated text may be sent.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};

use crate::config::TokenizerConfig;
use crate::error::{Result, TorchError};

fn tok_err(e: impl std::fmt::Display) -> TorchError {
    TorchError::Tokenizer(e.to_string())
}

/// A model's tokenizer with what generation needs to know about it.
pub(crate) struct Codec {
    tokenizer: Tokenizer,
    /// GPT-2 byte-level BPE: each char of a token string stands for one byte.
    byte_decoder: Option<HashMap<char, u8>>,
}

impl Codec {
    pub fn load(dir: &Path, cfg: &TokenizerConfig) -> Result<Codec> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(TorchError::MissingFile { what: "tokenizer.json", path });
        }
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| TorchError::invalid(&path, e))?;
        // tokenizer_config.json may mark tokens special that tokenizer.json lists as plain
        // added tokens; transformers honours the former, so do we.
        let existing = tokenizer.get_added_tokens_decoder();
        let extra: Vec<AddedToken> = cfg
            .added_tokens_decoder
            .values()
            .filter(|t| t.special && !existing.values().any(|e| e.content == t.content && e.special))
            .map(|t| AddedToken::from(t.content.clone(), true))
            .collect();
        if !extra.is_empty() {
            tokenizer.add_special_tokens(&extra);
        }
        // transformers ignores the truncation and padding a tokenizer.json may carry unless a
        // call asks for them; a prompt must never be cut silently.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(tok_err)?;
        let byte_decoder =
            matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))).then(gpt2_byte_decoder);
        Ok(Codec { tokenizer, byte_decoder })
    }

    /// Truncate encodings to `max_len` tokens, special tokens included, and never pad (an
    /// encoder batches and pads itself).
    pub fn set_truncation(&mut self, max_len: usize) -> Result<()> {
        self.tokenizer.with_padding(None);
        self.tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(tok_err)?;
        Ok(())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` without special tokens; bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Every token's bytes as constrained decoding sees them: special tokens (EOS, chat
    /// markers) have none, so no constraint ever allows them.
    pub fn constraint_bytes(&self) -> Vec<Vec<u8>> {
        let added = self.tokenizer.get_added_tokens_decoder();
        (0..self.tokenizer.get_vocab_size(true) as u32)
            .map(|id| match added.get(&id) {
                Some(token) if token.special => Vec::new(),
                token => self.bytes_of(id, token.is_some()),
            })
            .collect()
    }

    /// The raw bytes one token stands for (what OpenAI's `bytes` field reports); a token
    /// holding part of a UTF-8 character has no text of its own, but it has bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes_of(id, self.tokenizer.get_added_tokens_decoder().contains_key(&id))
    }

    /// `added`: the token is one of the tokenizer's added tokens (its text is its content).
    fn bytes_of(&self, id: u32, added: bool) -> Vec<u8> {
        let Some(token) = self.tokenizer.id_to_token(id) else { return Vec::new() };
        if added {
            return token.into_bytes();
        }
        let mapped = self
            .byte_decoder
            .as_ref()
            .and_then(|table| token.chars().map(|c| table.get(&c).copied()).collect::<Option<Vec<u8>>>());
        if let Some(bytes) = mapped {
            return bytes;
        }
        // SentencePiece byte fallback: <0xE2>.
        let byte_fallback = token
            .strip_prefix("<0x")
            .and_then(|t| t.strip_suffix('>'))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(b) = byte_fallback {
            return vec![b];
        }
        token.replace('\u{2581}', " ").into_bytes()
    }
}

/// GPT-2's byte ↔ printable-char table, inverted: printable bytes stand for themselves, the
/// others were moved to U+0100 and up.
fn gpt2_byte_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).unwrap()
        };
        map.insert(c, b);
    }
    map
}

/// Turns generated token ids into text as they arrive.
///
/// A byte-level token can end in the middle of a UTF-8 character, and SentencePiece decoders
/// treat a leading space differently at the start of a text; so each new token is decoded
/// together with a few tokens before it, and the text is released only when it no longer
/// ends in U+FFFD, i.e. once the character is complete.
pub(crate) struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// `context`: the tokens just before the first generated one (the end of the prompt);
    /// they are decoded for context only, never emitted.
    pub fn new(context: &[u32]) -> Detokenizer {
        let keep = &context[context.len().saturating_sub(6)..];
        Detokenizer { ids: keep.to_vec(), prefix_offset: 0, read_offset: keep.len() }
    }

    /// Text completed by `id`, possibly empty.
    pub fn push(&mut self, codec: &Codec, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_owned(),
            // The decoder rewrote the context (rare: cleanup rules); send what follows the
            // common part rather than repeat it.
            None => {
                let common = full
                    .char_indices()
                    .zip(prefix.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, c), _)| i + c.len_utf8());
                full[common..].to_owned()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(new)
    }

    /// Whatever is still held at the end of generation, invalid bytes as U+FFFD.
    pub fn finish(&mut self, codec: &Codec) -> Result<String> {
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.strip_prefix(prefix.as_str()).map(str::to_owned).unwrap_or_default())
    }
}

/// Holds back generated text that might be the beginning of a stop string.
///
/// Text that is released never contains a stop string and never ends with a prefix of one,
/// so every stop string is found, and cut exactly where it begins, however the tokens split
/// it.
pub(crate) struct StopGate {
    stops: Vec<String>,
    pending: String,
}

pub(crate) enum Gate {
    /// Send this text (maybe empty) and go on.
    Pass(String),
    /// A stop string was found: send this text, which ends where the stop string began, and
    /// stop.
    Stop(String),
}

impl StopGate {
    pub fn new(stops: &[String]) -> StopGate {
        StopGate { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Gate {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.pending.truncate(at);
            return Gate::Stop(std::mem::take(&mut self.pending));
        }
        let hold = self.hold_from();
        let rest = self.pending.split_off(hold);
        Gate::Pass(std::mem::replace(&mut self.pending, rest))
    }

    /// The earliest char boundary from which the pending text could still grow into a stop
    /// string.
    fn hold_from(&self) -> usize {
        self.pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.pending.len())
    }

    /// The held text, at the end of generation (it never became a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut gate = StopGate::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            match gate.push(p) {
                Gate::Pass(t) => out.push(t),
                Gate::Stop(t) => {
                    out.push(t);
                    return (out, true);
                }
            }
        }
        out.push(gate.flush());
        (out, false)
    }

    #[test]
    fn stop_inside_a_piece() {
        let (out, stopped) = run(&["END"], &["abc", "dEND more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "abcd");
    }

    #[test]
    fn stop_across_pieces_is_held_then_cut() {
        let (out, stopped) = run(&["###"], &["a #", "#", "# tail"]);
        assert!(stopped);
        assert_eq!(out, ["a ", "", ""]);
    }

    #[test]
    fn false_alarm_is_released() {
        let (out, stopped) = run(&["</answer>"], &["x </an", "swered"]);
        assert!(!stopped);
        assert_eq!(out[0], "x ");
        assert_eq!(out.concat(), "x </answered");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hel");
    }

    #[test]
    fn multibyte_hold_is_on_char_boundaries() {
        let (out, stopped) = run(&["éé!"], &["café", "é", "?"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "caféé?");
    }

    #[test]
    fn byte_table_round_trips() {
        let t = gpt2_byte_decoder();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'A'], b'A');
    }

    fn codec_from(json: &str) -> Codec {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        Codec::load(dir.path(), &TokenizerConfig::default()).unwrap()
    }

    fn stream(codec: &Codec, context: &[u32], ids: &[u32]) -> Vec<String> {
        let mut d = Detokenizer::new(context);
        let mut out: Vec<String> = ids.iter().map(|&id| d.push(codec, id).unwrap()).collect();
        out.push(d.finish(codec).unwrap());
        out
    }

    /// GPT-2 byte-level BPE (the tiny-llama tokenizer): "é" split into its two bytes is held
    /// until complete.
    #[test]
    fn byte_level_split_character_is_held() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
        let codec = Codec::load(&dir, &TokenizerConfig::default()).unwrap();
        let (c3, a9) = (codec.token_to_id("Ã").unwrap(), codec.token_to_id("©").unwrap());
        let caf = codec.encode("Caf", false).unwrap();
        let out = stream(&codec, &[1], &[caf.as_slice(), &[c3, a9, c3]].concat());
        let n = caf.len();
        assert_eq!(out[..n].concat(), "Caf");
        assert_eq!(out[n], "", "half a character must not be sent");
        assert_eq!(out[n + 1], "é");
        assert_eq!(out[n + 2], "", "a trailing half character waits for more");
        assert_eq!(out[n + 3], "\u{FFFD}", "at the end it is what decoding gives");
        assert_eq!(codec.token_bytes(c3), vec![0xC3]);
        assert_eq!(codec.token_bytes(codec.token_to_id("Ġb").unwrap()), b" b");
    }

    /// A Llama-2 style SentencePiece layout (Metaspace-as-Replace, byte fallback, leading-space
    /// strip): the first generated word keeps its space after the prompt, bytes fuse into
    /// characters.
    #[test]
    fn sentencepiece_spaces_and_byte_fallback() {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null,
          "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
          "pre_tokenizer": null,
          "post_processor": null,
          "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xC3>": 3, "<0xA9>": 4, "▁Hello": 5, "▁world": 6, "▁caf": 7, "!": 8},
            "merges": []}
        }"#;
        let codec = codec_from(json);
        assert_eq!(codec.decode(&[6]).unwrap(), "world", "alone, the leading space is stripped");
        // After the prompt "<s> Hello", the first generated word keeps its space.
        let out = stream(&codec, &[1, 5], &[6, 7, 3, 4, 2, 8]);
        assert_eq!(out, [" world", " caf", "", "é", "", "!", ""]);
        assert_eq!(codec.token_bytes(3), vec![0xC3]);
        assert_eq!(codec.token_bytes(6), b" world");
    }
}
