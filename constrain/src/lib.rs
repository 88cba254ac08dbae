//! JSON-constrained decoding. At each decoding step, this crate says which tokens of a
//! vocabulary keep the text generated so far a valid prefix of JSON that matches a schema. The
//! torch worker uses it for the OpenAI `response_format` (`json_object`, `json_schema`), and
//! for a tool call's arguments when the request forces a tool call.
//!
//! ```
//! use switchyard_constrain::{Matcher, Vocabulary};
//!
//! let vocab = Vocabulary::new(vec![b"{\"".to_vec(), b"a\": ".to_vec(), b"1".to_vec(), b"}".to_vec(), b"x".to_vec()]);
//! let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
//! let mut m = Matcher::new(Some(&schema)).unwrap();
//! let mut mask = vec![false; vocab.len()];
//! for want in [0u32, 1, 2, 3] {
//!     m.allowed(&vocab, &mut mask);
//!     assert!(mask[want as usize] && !mask[4]);
//!     m.advance(vocab.bytes(want)).unwrap();
//! }
//! assert!(m.is_complete());
//! ```
//!
//! # Decoding loop
//!
//! Build one [`Vocabulary`] per model and one [`Matcher`] per constrained output (compile the
//! schema once and clone the matcher for `n` choices). At each step, call [`Matcher::allowed`]
//! and mask the logits of tokens it leaves `false`. Allow EOS yourself iff
//! [`Matcher::is_complete`]. Sample, then call [`Matcher::advance`] with the chosen token's
//! bytes. Stop when the matcher is complete and the model picks EOS, or when nothing else is
//! allowed. Bytes are the unit: a token may end inside a UTF-8 character or an escape.
//!
//! # What is generated
//!
//! - **Layout.** The layout of Python's `json.dumps`: `{"a": 1, "b": [1, 2]}`. One optional
//!   space may follow each `:` and `,`, and no other whitespace is allowed anywhere (no
//!   newlines, no indentation, nothing before or after the value). A model cannot loop on
//!   whitespace, and every object with declared properties and every `enum` is bounded.
//! - **Strings.** Any UTF-8 except raw control characters. All JSON escapes are allowed
//!   (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX`); `\u` surrogates must come in
//!   pairs, because serde_json rejects lone ones.
//! - **Numbers.** JSON number syntax. `integer` is `-?(0|[1-9][0-9]*)` only: no `1.0`, no `1e3`.
//!   Every number stays below `1e308` in magnitude (at most 308 integer digits, and an
//!   exponent to match), so it parses as a finite f64. serde_json rejects `1e309` and
//!   309-digit integers as out of range. Otherwise digits are unbounded, like string
//!   lengths: `max_tokens` bounds them.
//!
//! # Schema subset
//!
//! The matcher may be looser than the schema, so validate the finished value with a full JSON
//! Schema validator. It is never stricter, with these exceptions: the layout, the integer syntax
//! and the number range above, the exact text of `enum` and `const` values, and the object rules
//! below.
//!
//! - **`type`.** A single name or an array of names. A schema without `type` allows every
//!   type, and the keywords of each type shape only values of that type.
//! - **`enum`, `const`.** Any JSON values. Each value's exact text is forced, serialized with
//!   `, ` and `: ` (object keys in their order in the schema), so `1.0` does not match `1`
//!   and `"\u00e9"` does not match `"é"`.
//! - **Objects.**
//!   - With `properties`, only the declared properties are generated, in declared order, each
//!     at most once. Required ones are mandatory; optional ones may be skipped. Names in
//!     `required` that are not declared come last, as any value. `additionalProperties`,
//!     `patternProperties` and key order beyond that are not honoured. This is stricter than
//!     the schema when additional properties are allowed.
//!   - Without `properties` (or with `{}`), unless `additionalProperties` is `false`, the
//!     object is free-form: any string keys, in any order, duplicates included. The values
//!     follow `additionalProperties` when it is a schema.
//!   - `additionalProperties: false` with no properties gives `{}`.
//! - **Arrays.** `items`, `prefixItems` (and the older array form of `items` with
//!   `additionalItems`), `minItems`, `maxItems`.
//! - **Strings.** `minLength` and `maxLength`, in characters; an escape counts as one
//!   character, and so does a surrogate pair.
//! - **Combinators.** `anyOf` and `oneOf` allow any branch (`oneOf` exclusivity is not
//!   checked). `allOf` and `$ref`s with sibling keywords are merged into one schema, and
//!   sibling keywords of an `anyOf` are distributed into its branches.
//! - **`$ref`.** Local refs only (`#`, `#/$defs/…`, `#/definitions/…`, any JSON pointer into
//!   the root), recursion included.
//! - **`true`, `{}`.** Any JSON value. `false` is no value. A branch or optional property that
//!   can produce no value is dropped; if the whole schema can produce none, that is
//!   [`Unsupported`].
//! - **Ignored keywords.** Ignored because ignoring them only loosens: `pattern`, `format`,
//!   `minimum`, `maximum`, `exclusive*`, `multipleOf`, `not`, `if`/`then`/`else`,
//!   `dependent*`, `propertyNames`, `min/maxProperties`, `uniqueItems`, `contains`, and
//!   annotations.
//! - **[`Unsupported`].** Only for what cannot be read at all: a non-local or dangling
//!   `$ref`, an unknown `type` name, malformed keywords, nesting over 64 levels, or a schema
//!   with no possible value.
//!
//! # Speed
//!
//! [`Matcher::allowed`] walks a byte trie of the vocabulary depth-first, so shared prefixes
//! are stepped once and a dead prefix prunes its whole subtree. Inside a string (between
//! escapes), the tokens with no `"`, `\` or control byte are answered from a table
//! precomputed per UTF-8 decoder state. Only the remaining tokens are walked. See
//! `examples/allowed_speed.rs`.

mod grammar;
mod schema;
mod vocab;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use vocab::Vocabulary;

/// A schema this crate cannot turn into a constraint (see the crate docs for the subset).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported JSON Schema for constrained decoding: {0}")]
pub struct Unsupported(pub String);

/// A token whose bytes break the constraint. The matcher is left as it was before the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset} of the token breaks the JSON constraint")]
pub struct Rejected {
    /// The index of the first byte that does not fit (0 for an empty token).
    pub offset: usize,
}

/// The constraint and how far the output has come. Cloning is cheap: the compiled schema is
/// shared, and the state is a few small frames.
#[derive(Clone, Debug)]
pub struct Matcher {
    grammar: Arc<grammar::Grammar>,
    state: grammar::State,
}

impl Matcher {
    /// `None`: any JSON object (`response_format: json_object`). `Some(schema)`: JSON matching
    /// the schema, as far as the subset in the crate docs goes.
    pub fn new(schema: Option<&serde_json::Value>) -> Result<Matcher, Unsupported> {
        let grammar = schema::compile(schema)?;
        let state = grammar.initial();
        Ok(Matcher { grammar: Arc::new(grammar), state })
    }

    /// Sets `out[t]` (`out.len() == vocab.len()`) to whether token `t` may come next: true iff
    /// [`advance`](Matcher::advance) with its bytes would succeed. Every entry is written.
    ///
    /// # Panics
    ///
    /// If `out.len() != vocab.len()`.
    pub fn allowed(&self, vocab: &Vocabulary, out: &mut [bool]) {
        vocab.allowed(&self.grammar, &self.state, out);
    }

    /// Feeds the bytes of the token that was chosen. On `Err` nothing changes. An empty token
    /// (a special token) is always rejected.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<(), Rejected> {
        if bytes.is_empty() {
            return Err(Rejected { offset: 0 });
        }
        let mut state = self.state.clone();
        for (offset, &b) in bytes.iter().enumerate() {
            if !self.grammar.step_state(&mut state, b) {
                return Err(Rejected { offset });
            }
        }
        self.state = state;
        Ok(())
    }

    /// The text so far is one complete value, so the caller may stop (allow EOS). Something
    /// may still be allowed after it: `12` is complete but may go on to `123`. Every state the
    /// matcher reaches can be completed, so if nothing is allowed (and the vocabulary holds
    /// every single byte), the value is complete and the caller must stop.
    pub fn is_complete(&self) -> bool {
        self.grammar.is_complete(&self.state)
    }
}
