//! The vocabulary as byte tries, and the walk that finds the allowed tokens.
//!
//! Outside strings, [`Vocabulary::allowed`] walks a trie of every token depth-first: a prefix
//! is stepped once for all the tokens that share it, and a dead prefix prunes its subtree.
//! Inside a string, most tokens are *plain* (no `"`, `\` or control byte): they only move the
//! UTF-8 decoder and the character count, so they are answered from tables. Only the rest of
//! each non-plain token (from its first non-plain byte) is walked, in a trie of those rests.
//! The same split applies below a `"` node of the full trie whose subtree is large (the tokens
//! that open a string).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::grammar::{Frame, Grammar, PlainString, State, Top, UNBOUNDED, UTF8_STATES, is_plain, plain_info};

/// `"` nodes of the full trie with at least this many tokens below them get a [`Rest`] table
/// (in tests, nearly all of them, so the small test vocabularies exercise both paths).
const QUOTE_TABLE_MIN: usize = if cfg!(test) { 2 } else { 64 };

/// Token id → the bytes it decodes to, arranged for [`Matcher::allowed`](crate::Matcher::allowed).
///
/// Build it once per model from the tokenizer's pieces, as bytes. For GPT-2-style byte-level
/// BPE, map the piece's characters back to bytes first. A token's bytes may be partial UTF-8.
/// Tokens with no bytes (special tokens such as EOS or chat markers) are never allowed; the
/// caller allows EOS itself when [`Matcher::is_complete`](crate::Matcher::is_complete) is true.
#[derive(Clone, Debug)]
pub struct Vocabulary {
    tokens: Vec<Vec<u8>>,
    /// Every token with bytes.
    full: Trie,
    /// For large `"` nodes of `full`: their subtree's tokens, after that quote.
    quotes: HashMap<u32, Rest>,
    /// `plain_ok[s][t]`: token `t` is plain and valid inside a string whose UTF-8 decoder is in
    /// state `s`.
    plain_ok: Vec<Vec<bool>>,
    /// The characters each plain token starts (for `maxLength`).
    plain_chars: Vec<u32>,
    /// The non-plain tokens, seen from inside a string.
    special: Rest,
}

impl Vocabulary {
    /// `tokens[id]` is the bytes token `id` decodes to.
    pub fn new(tokens: Vec<Vec<u8>>) -> Vocabulary {
        let n = tokens.len();
        let mut plain_ok = vec![vec![false; n]; UTF8_STATES];
        let mut plain_chars = vec![0; n];
        let mut special = Vec::new();
        for (id, bytes) in tokens.iter().enumerate() {
            if bytes.is_empty() {
                continue;
            }
            if is_plain(bytes) {
                let (valid, _, c) = plain_info(bytes);
                for (s, ok) in plain_ok.iter_mut().enumerate() {
                    ok[id] = valid & (1 << s) != 0;
                }
                plain_chars[id] = c;
            } else {
                special.push((bytes.as_slice(), id as u32));
            }
        }
        let mut entries: Vec<(&[u8], u32)> =
            tokens.iter().enumerate().filter(|(_, b)| !b.is_empty()).map(|(id, b)| (b.as_slice(), id as u32)).collect();
        entries.sort_unstable();
        let full = Trie::new(&entries);
        let mut quotes = HashMap::new();
        for node in 0..full.byte.len() {
            let (first, last) = (full.tok_start[node] as usize, full.tok_start[full.end[node] as usize] as usize);
            if full.byte[node] == b'"' && last - first >= QUOTE_TABLE_MIN {
                let depth = full.depth[node] as usize;
                let rests = full.ids[first..last].iter().map(|&t| (&tokens[t as usize][depth..], t));
                quotes.insert(node as u32, Rest::new(rests));
            }
        }
        let special = Rest::new(special.into_iter());
        Vocabulary { tokens, full, quotes, plain_ok, plain_chars, special }
    }

    /// How many tokens there are (the length of the mask that
    /// [`Matcher::allowed`](crate::Matcher::allowed) fills).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The bytes of token `id` (what to pass to [`Matcher::advance`](crate::Matcher::advance)).
    pub fn bytes(&self, id: u32) -> &[u8] {
        &self.tokens[id as usize]
    }

    pub(crate) fn allowed(&self, grammar: &Grammar, state: &State, out: &mut [bool]) {
        assert_eq!(out.len(), self.len(), "the mask must have one entry per token");
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            let Some(string) = grammar.plain_string(state) else {
                out.fill(false);
                let (outer, inner) = (&mut scratch.outer, &mut scratch.inner);
                self.full.walk(grammar, state, outer, |node, ids, view| {
                    for &t in ids {
                        out[t as usize] = true;
                    }
                    let Some(rest) = self.quotes.get(&node) else { return false };
                    let state = view.materialize();
                    let Some(string) = grammar.plain_string(&state) else { return false };
                    rest.mark_plain(&string, out);
                    rest.mark_special(grammar, &state, &string, out, inner);
                    true
                });
                return;
            };
            let room = string.room();
            let ok = &self.plain_ok[string.utf8 as usize];
            if room == UNBOUNDED {
                out.copy_from_slice(ok);
            } else {
                for ((o, &k), &c) in out.iter_mut().zip(ok).zip(&self.plain_chars) {
                    *o = k & (c <= room);
                }
            }
            self.special.mark_special(grammar, state, &string, out, &mut scratch.outer);
        });
    }
}

impl PlainString {
    /// How many more characters the string may take.
    fn room(&self) -> u32 {
        if self.max == UNBOUNDED { UNBOUNDED } else { self.max - self.chars }
    }
}

/// Tokens' bytes after some prefix, seen from inside a string: the plain ones (whole rest
/// plain) and, for the others, the plain prefix's effect and a trie of what follows it.
#[derive(Clone, Debug, Default)]
struct Rest {
    /// `(token, characters)` of the plain rests valid from a character boundary.
    plain: Vec<(u32, u32)>,
    /// The non-plain rests from their first non-plain byte on; ids index the `entry_*` vectors.
    /// Within a node, entries ascend by `entry_chars`.
    suffixes: Trie,
    entry_token: Vec<u32>,
    /// The UTF-8 decoder states from which the plain prefix is valid and ends on a character
    /// boundary (so the non-plain byte, always ASCII, can follow).
    entry_mask: Vec<u8>,
    /// The characters the plain prefix starts.
    entry_chars: Vec<u32>,
    /// At most how many characters the non-plain part adds before it leaves the string: its
    /// bytes before the first unescaped `"` or control byte.
    entry_len: Vec<u32>,
    /// The distinct `entry_chars`, ascending, each with the largest `entry_len` among its
    /// entries.
    distinct_chars: Vec<(u32, u32)>,
}

impl Rest {
    /// From `(rest, token)` pairs; empty rests are left out (their node is marked by the walk).
    fn new<'a>(rests: impl Iterator<Item = (&'a [u8], u32)>) -> Rest {
        let mut plain = Vec::new();
        let mut entries = Vec::new();
        for (rest, token) in rests {
            if rest.is_empty() {
                continue;
            }
            match rest.iter().position(|&b| !is_plain(&[b])) {
                None => {
                    let (valid, _, c) = plain_info(rest);
                    if valid & 1 != 0 {
                        plain.push((token, c));
                    }
                }
                Some(k) => {
                    let (_, to_boundary, c) = plain_info(&rest[..k]);
                    entries.push((&rest[k..], c, to_boundary, token));
                }
            }
        }
        entries.sort_unstable();
        let mut r = Rest { plain, ..Rest::default() };
        let mut keyed = Vec::with_capacity(entries.len());
        let mut longest: HashMap<u32, u32> = HashMap::new();
        for (e, &(suffix, c, mask, token)) in entries.iter().enumerate() {
            keyed.push((suffix, e as u32));
            let len = string_part(suffix);
            r.entry_token.push(token);
            r.entry_mask.push(mask);
            r.entry_chars.push(c);
            r.entry_len.push(len);
            let l = longest.entry(c).or_default();
            *l = (*l).max(len);
        }
        r.suffixes = Trie::new(&keyed);
        r.distinct_chars = longest.into_iter().collect();
        r.distinct_chars.sort_unstable();
        r
    }

    /// Marks the plain rests that fit, for a string at a character boundary.
    fn mark_plain(&self, string: &PlainString, out: &mut [bool]) {
        let room = string.room();
        for &(t, c) in &self.plain {
            if c <= room {
                out[t as usize] = true;
            }
        }
    }

    /// Marks the non-plain rests allowed from `state`, a [`Grammar::plain_string`] state.
    ///
    /// What follows a plain prefix is walked from the string at a character boundary. Its
    /// outcome depends on the character count only through the string's limits, so one walk
    /// from `max(chars, min)` characters serves every entry that stays clear of the limits
    /// (at least `min` characters after its prefix, and room for its whole string part). Each
    /// prefix length with entries near the limits gets a walk of its own.
    fn mark_special(
        &self,
        grammar: &Grammar,
        state: &State,
        string: &PlainString,
        out: &mut [bool],
        levels: &mut Vec<Level>,
    ) {
        let bit = 1 << string.utf8;
        let room = string.room();
        let clear = |c: u32, len: u32| string.chars + c >= string.min && c.saturating_add(len) <= room;
        let mut from = state.clone();
        from.at_string_boundary(string.chars.max(string.min));
        self.suffixes.walk(grammar, &from, levels, |_, ids, _| {
            for &e in ids {
                let e = e as usize;
                if self.entry_mask[e] & bit != 0 && clear(self.entry_chars[e], self.entry_len[e]) {
                    out[self.entry_token[e] as usize] = true;
                }
            }
            false
        });
        for &(c, len) in &self.distinct_chars {
            if c > room {
                break;
            }
            if clear(c, len) {
                continue;
            }
            from.at_string_boundary(string.chars + c);
            self.suffixes.walk(grammar, &from, levels, |_, ids, _| {
                let first = ids.partition_point(|&e| self.entry_chars[e as usize] < c);
                for &e in ids[first..].iter().take_while(|&&e| self.entry_chars[e as usize] == c) {
                    if self.entry_mask[e as usize] & bit != 0 {
                        out[self.entry_token[e as usize] as usize] = true;
                    }
                }
                false
            });
        }
    }
}

/// How many bytes of `suffix` (which starts with a non-plain byte, inside a string) can be in
/// the string: those before the first unescaped `"` or control byte.
fn string_part(suffix: &[u8]) -> u32 {
    let mut i = 0;
    while i < suffix.len() {
        match suffix[i] {
            b'"' => break,
            b if b < 0x20 => break,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    i.min(suffix.len()) as u32
}

/// A byte trie in preorder: node `i`'s subtree is `i..end[i]`, its children follow it.
#[derive(Clone, Debug, Default)]
struct Trie {
    byte: Vec<u8>,
    /// Depth of each node (1 for a token's first byte).
    depth: Vec<u32>,
    end: Vec<u32>,
    /// Node `i`'s ids are `ids[tok_start[i]..tok_start[i + 1]]`; a subtree's ids are contiguous.
    tok_start: Vec<u32>,
    ids: Vec<u32>,
    max_depth: usize,
}

/// One depth of the walk. When `top` is `Some`, the state at this depth is
/// `levels[base].state` (one stack) with its top frame replaced by `top`; when `None`, it is
/// `state` itself (several stacks, or none).
#[derive(Default)]
struct Level {
    state: State,
    base: usize,
    top: Option<Frame>,
}

/// The state at a node of the walk.
struct View<'a> {
    base: &'a State,
    top: Option<Frame>,
}

impl View<'_> {
    fn materialize(&self) -> State {
        let mut state = self.base.clone();
        if let Some(top) = self.top {
            state.set_single_top(top);
        }
        state
    }
}

#[derive(Default)]
struct Scratch {
    outer: Vec<Level>,
    /// For walks started from inside the outer walk.
    inner: Vec<Level>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Trie {
    /// From `(bytes, id)` pairs with non-empty bytes, sorted by bytes (ids keep their order
    /// within a node).
    fn new(entries: &[(&[u8], u32)]) -> Trie {
        let mut t = Trie::default();
        let mut path: Vec<usize> = Vec::new();
        let mut prev: &[u8] = &[];
        for &(bytes, id) in entries {
            debug_assert!(!bytes.is_empty() && prev <= bytes);
            let lcp = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            while path.len() > lcp {
                let node = path.pop().expect("a path node");
                t.end[node] = t.byte.len() as u32;
            }
            for (k, &b) in bytes.iter().enumerate().skip(lcp) {
                path.push(t.byte.len());
                t.byte.push(b);
                t.depth.push(k as u32 + 1);
                t.end.push(0);
                t.tok_start.push(t.ids.len() as u32);
            }
            t.ids.push(id);
            t.max_depth = t.max_depth.max(bytes.len());
            prev = bytes;
        }
        for node in path {
            t.end[node] = t.byte.len() as u32;
        }
        t.tok_start.push(t.ids.len() as u32);
        t
    }

    /// Calls `visit(node, ids, state)` for every trie node whose bytes `grammar` accepts from
    /// `state`; `visit` returns `true` when it has dealt with the node's whole subtree.
    /// Depth-first with one state per depth: a byte that only changes the top frame (most of
    /// them) records that frame, other bytes copy the state and step it in full.
    fn walk(
        &self,
        grammar: &Grammar,
        state: &State,
        levels: &mut Vec<Level>,
        mut visit: impl FnMut(u32, &[u32], View) -> bool,
    ) {
        if levels.len() <= self.max_depth {
            levels.resize_with(self.max_depth + 1, Level::default);
        }
        levels[0].state.clone_from(state);
        levels[0].base = 0;
        levels[0].top = state.single_top();
        let mut i = 0;
        while i < self.byte.len() {
            let d = self.depth[i] as usize;
            let b = self.byte[i];
            let (parents, rest) = levels.split_at_mut(d);
            let parent = &parents[d - 1];
            let cur = &mut rest[0];
            let ok = match parent.top {
                Some(top) => match grammar.step_top(top, b) {
                    Top::Replace(frame) => {
                        cur.base = parent.base;
                        cur.top = Some(frame);
                        true
                    }
                    Top::Fail => false,
                    Top::Complex => {
                        cur.state.clone_from(&parents[parent.base].state);
                        cur.state.set_single_top(top);
                        full_step(grammar, cur, d, b)
                    }
                },
                None => {
                    cur.state.clone_from(&parent.state);
                    full_step(grammar, cur, d, b)
                }
            };
            if !ok {
                i = self.end[i] as usize;
                continue;
            }
            let ids = &self.ids[self.tok_start[i] as usize..self.tok_start[i + 1] as usize];
            let base = if cur.base == d { &cur.state } else { &parents[cur.base].state };
            if visit(i as u32, ids, View { base, top: cur.top }) {
                i = self.end[i] as usize;
            } else {
                i += 1;
            }
        }
    }
}

fn full_step(grammar: &Grammar, level: &mut Level, depth: usize, b: u8) -> bool {
    let ok = grammar.step_state(&mut level.state, b);
    level.base = depth;
    level.top = level.state.single_top();
    ok
}
