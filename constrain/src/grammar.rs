//! The compiled grammar (a graph of [`Node`]s) and the byte-level pushdown automaton that runs
//! it: a [`State`] is a set of stacks of [`Frame`]s (usually one; `anyOf` branches that accept
//! the same bytes so far each keep their own until they die or become equal).

pub(crate) type NodeId = u32;

pub(crate) const T_NULL: u8 = 1;
pub(crate) const T_BOOL: u8 = 2;
/// Integers (`-?(0|[1-9][0-9]*)`).
pub(crate) const T_INT: u8 = 4;
/// Numbers with a fraction or an exponent (always together with [`T_INT`]).
pub(crate) const T_NUM: u8 = 8;
pub(crate) const T_STR: u8 = 16;
pub(crate) const T_ARR: u8 = 32;
pub(crate) const T_OBJ: u8 = 64;
pub(crate) const T_ALL: u8 = 127;

/// Built-in nodes every grammar starts with.
pub(crate) const BOOL: NodeId = 0;
pub(crate) const NULL: NodeId = 1;
pub(crate) const ANY: NodeId = 2;
pub(crate) const NEVER: NodeId = 3;
/// The `node` of a [`Frame::Str`] that is an object key (no length limits).
pub(crate) const KEY: NodeId = NodeId::MAX;
/// "No upper limit" for lengths and counts.
pub(crate) const UNBOUNDED: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// A value of one of `types`, shaped by the per-type specs.
    Typed(Box<Typed>),
    /// Exactly one of these texts (sorted, deduplicated): `enum`, `const`, `true`/`false`, `null`.
    Lits(Vec<Vec<u8>>),
    /// Any branch (after compilation: flattened, no unions or aliases among the branches).
    /// No branches: no value at all.
    Union(Vec<NodeId>),
    /// A `$ref` being compiled; resolved away before the grammar is used.
    Alias(NodeId),
}

#[derive(Clone, Debug)]
pub(crate) struct Typed {
    pub types: u8,
    pub str_min: u32,
    pub str_max: u32,
    pub arr: ArraySpec,
    pub obj: ObjectSpec,
}

#[derive(Clone, Debug)]
pub(crate) struct ArraySpec {
    /// Schemas of the first items (`prefixItems`); the rest follow `items`.
    pub prefix: Vec<NodeId>,
    pub items: NodeId,
    pub min: u32,
    pub max: u32,
}

impl ArraySpec {
    pub fn item(&self, index: u32) -> NodeId {
        self.prefix.get(index as usize).copied().unwrap_or(self.items)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum ObjectSpec {
    /// Any string keys, every value matching `values`.
    Free { values: NodeId },
    /// The declared properties, in order, each at most once; required ones mandatory.
    Declared(Declared),
}

#[derive(Clone, Debug)]
pub(crate) struct Declared {
    pub props: Vec<Prop>,
    /// `req_after[i]`: the index of the first required property at or after `i`
    /// (`props.len()` when none); `props.len() + 1` entries.
    pub req_after: Vec<u32>,
}

impl Declared {
    pub fn new(props: Vec<Prop>) -> Declared {
        let mut req_after = vec![props.len() as u32; props.len() + 1];
        for i in (0..props.len()).rev() {
            req_after[i] = if props[i].required { i as u32 } else { req_after[i + 1] };
        }
        Declared { props, req_after }
    }

    fn len(&self) -> u32 {
        self.props.len() as u32
    }

    /// `}` may come once every property from `next` on is optional.
    fn can_close(&self, next: u32) -> bool {
        self.req_after[next as usize] == self.len()
    }

    /// The last property that may come next (the first required one, or the last one).
    fn limit(&self, next: u32) -> u32 {
        self.req_after[next as usize].min(self.len() - 1)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Prop {
    /// The key's text with its colon: `"name":`.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Grammar {
    nodes: Vec<Node>,
    root: NodeId,
    /// Per node, the bytes a value of it may start with (a 256-bit set).
    first: Vec<[u64; 4]>,
}

/// One level of the automaton's stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Frame {
    /// A value of `node` is expected (nothing of it seen yet); only at the bottom of the stack.
    Value(NodeId),
    /// Inside a string after its opening quote: `chars` characters so far, escape state `esc`,
    /// UTF-8 decoder state `utf8`.
    Str {
        node: NodeId,
        chars: u32,
        esc: u8,
        utf8: u8,
    },
    /// A number: `digits` in its integer part (0 for `0`), its exponent so far (`exp`,
    /// saturating; `neg_exp` for `e-`).
    Num {
        int_only: bool,
        phase: u8,
        digits: u16,
        exp: u16,
        neg_exp: bool,
    },
    /// Matching `Lits` of `node`: the candidates `lo..hi` all start with the `pos` bytes seen.
    Lit {
        node: NodeId,
        pos: u32,
        lo: u32,
        hi: u32,
    },
    Arr {
        node: NodeId,
        count: u32,
        phase: u8,
    },
    /// A declared-properties object: `next` is the first property that may still come, `cand`
    /// the property whose key is being matched (`pos` bytes of it seen) or whose value follows.
    Obj {
        node: NodeId,
        next: u32,
        cand: u32,
        pos: u32,
        phase: u8,
    },
    /// A free-form object.
    Free {
        node: NodeId,
        phase: u8,
    },
}

pub(crate) type Stack = Vec<Frame>;

/// What a byte does to the top frame of a stack (see [`Grammar::step_top`]).
pub(crate) enum Top {
    /// The byte only changes the top frame, to this.
    Replace(Frame),
    /// The byte breaks the stack.
    Fail,
    /// The byte pushes or pops frames: step the whole stack.
    Complex,
}

/// The automaton's state: every stack that is still alive. Empty: the text broke the grammar.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct State {
    pub stacks: Vec<Stack>,
}

impl Clone for State {
    fn clone(&self) -> State {
        State { stacks: self.stacks.clone() }
    }

    /// Reuses the allocations (the trie walk copies a state per trie node).
    fn clone_from(&mut self, source: &State) {
        self.stacks.clone_from(&source.stacks);
    }
}

// String escape states.
const E_NONE: u8 = 0;
const E_ESC: u8 = 1; // after `\`
const E_U0: u8 = 2; // after `\u`
const E_UD: u8 = 3; // after `\uD`
const E_H3: u8 = 4; // three hex digits to go
const E_H2: u8 = 5;
const E_H1: u8 = 6;
const E_HH2: u8 = 7; // high surrogate, two hex digits to go
const E_HH1: u8 = 8;
const E_LB: u8 = 9; // after a high surrogate: `\` of the low one
const E_LU: u8 = 10; // `u` of the low one
const E_L0: u8 = 11; // `d` of the low one
const E_L1: u8 = 12; // `c`..`f` of the low one

// Number phases.
const N_START: u8 = 0;
const N_MINUS: u8 = 1;
const N_ZERO: u8 = 2;
const N_INT: u8 = 3;
const N_DOT: u8 = 4;
const N_FRAC: u8 = 5;
const N_EXP: u8 = 6;
const N_EXP_SIGN: u8 = 7;
const N_EXP_DIGITS: u8 = 8;

// Array phases.
const A_START: u8 = 0;
const A_AFTER_VALUE: u8 = 1;
const A_AFTER_COMMA: u8 = 2;
const A_AFTER_COMMA_SP: u8 = 3;

// Object phases (declared and free-form).
const O_START: u8 = 0;
const O_KEY: u8 = 1; // declared: matching a key; free-form: the key string is done, `:` next
const O_AFTER_COLON: u8 = 2;
const O_AFTER_COLON_SP: u8 = 3;
const O_AFTER_VALUE: u8 = 4;
const O_AFTER_COMMA: u8 = 5;
const O_AFTER_COMMA_SP: u8 = 6;

/// One step of a UTF-8 validating decoder. States: 0 between characters; 1, 2, 3 that many
/// continuation bytes to go; 4 after `E0` (next `A0..BF`); 5 after `ED` (next `80..9F`, no
/// surrogates); 6 after `F0` (next `90..BF`); 7 after `F4` (next `80..8F`, at most U+10FFFF).
#[inline(always)]
pub(crate) fn utf8_step(state: u8, b: u8) -> Option<u8> {
    let cont = (0x80..=0xBF).contains(&b);
    match state {
        0 => match b {
            0x00..=0x7F => Some(0),
            0xC2..=0xDF => Some(1),
            0xE0 => Some(4),
            0xE1..=0xEC | 0xEE..=0xEF => Some(2),
            0xED => Some(5),
            0xF0 => Some(6),
            0xF1..=0xF3 => Some(3),
            0xF4 => Some(7),
            _ => None,
        },
        1 if cont => Some(0),
        2 if cont => Some(1),
        3 if cont => Some(2),
        4 if (0xA0..=0xBF).contains(&b) => Some(1),
        5 if (0x80..=0x9F).contains(&b) => Some(1),
        6 if (0x90..=0xBF).contains(&b) => Some(2),
        7 if (0x80..=0x8F).contains(&b) => Some(2),
        _ => None,
    }
}

pub(crate) const UTF8_STATES: usize = 8;

/// The largest decimal magnitude a number may reach: every number is below `1e308`, so it
/// parses as a finite f64 (serde_json rejects `1e309` and 309-digit integers as out of range).
pub(crate) const MAX_MAGNITUDE: u16 = 308;

/// The number frame after `b`, or `None` if `b` cannot continue the number.
#[inline]
fn num_step(frame: Frame, b: u8) -> Option<Frame> {
    let Frame::Num { int_only, phase, digits, exp, neg_exp } = frame else { unreachable!() };
    let at = |phase| Some(Frame::Num { int_only, phase, digits, exp, neg_exp });
    let digit = b.is_ascii_digit();
    match phase {
        N_START | N_MINUS => match b {
            b'-' if phase == N_START => at(N_MINUS),
            b'0' => at(N_ZERO),
            b'1'..=b'9' => Some(Frame::Num { int_only, phase: N_INT, digits: 1, exp, neg_exp }),
            _ => None,
        },
        N_ZERO | N_INT | N_FRAC => match b {
            b'0'..=b'9' if phase == N_INT => {
                (digits < MAX_MAGNITUDE).then_some(Frame::Num { int_only, phase, digits: digits + 1, exp, neg_exp })
            }
            b'0'..=b'9' if phase == N_FRAC => at(N_FRAC),
            b'.' if phase != N_FRAC && !int_only => at(N_DOT),
            b'e' | b'E' if !int_only => at(N_EXP),
            _ => None,
        },
        N_DOT if digit => at(N_FRAC),
        N_EXP | N_EXP_SIGN | N_EXP_DIGITS => {
            let neg_exp = match b {
                b'+' | b'-' if phase == N_EXP => b == b'-',
                b'0'..=b'9' => neg_exp,
                _ => return None,
            };
            if !digit {
                return Some(Frame::Num { int_only, phase: N_EXP_SIGN, digits, exp, neg_exp });
            }
            let exp = exp.saturating_mul(10).saturating_add((b - b'0') as u16).min(10_000);
            if !neg_exp && digits + exp > MAX_MAGNITUDE {
                return None;
            }
            Some(Frame::Num { int_only, phase: N_EXP_DIGITS, digits, exp, neg_exp })
        }
        _ => None,
    }
}

fn free_values(obj: &ObjectSpec) -> NodeId {
    match obj {
        ObjectSpec::Free { values } => *values,
        ObjectSpec::Declared(_) => unreachable!("a free-form object frame of a declared object"),
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

impl Grammar {
    /// `nodes` compiled: no aliases, unions flat.
    pub fn new(nodes: Vec<Node>, root: NodeId) -> Grammar {
        let set = |bytes: &mut dyn Iterator<Item = u8>| {
            let mut s = [0u64; 4];
            for b in bytes {
                s[b as usize / 64] |= 1 << (b % 64);
            }
            s
        };
        let own: Vec<[u64; 4]> = nodes
            .iter()
            .map(|n| match n {
                Node::Typed(t) => {
                    let mut bytes = Vec::new();
                    for (bit, starts) in [
                        (T_STR, &b"\""[..]),
                        (T_OBJ, b"{"),
                        (T_ARR, b"["),
                        (T_INT, b"-0123456789"),
                        (T_BOOL, b"tf"),
                        (T_NULL, b"n"),
                    ] {
                        if t.types & bit != 0 {
                            bytes.extend_from_slice(starts);
                        }
                    }
                    set(&mut bytes.into_iter())
                }
                Node::Lits(l) => set(&mut l.iter().filter_map(|l| l.first().copied())),
                Node::Union(_) | Node::Alias(_) => [0; 4],
            })
            .collect();
        let first = nodes
            .iter()
            .zip(&own)
            .map(|(n, &mine)| match n {
                // Flat: the branches are not unions.
                Node::Union(branches) => branches.iter().fold([0; 4], |mut acc, &b| {
                    for (a, x) in acc.iter_mut().zip(own[b as usize]) {
                        *a |= x;
                    }
                    acc
                }),
                _ => mine,
            })
            .collect();
        Grammar { nodes, root, first }
    }

    /// A value of `node` may start with `b`.
    #[inline(always)]
    fn starts(&self, node: NodeId, b: u8) -> bool {
        self.first[node as usize][b as usize / 64] & (1 << (b % 64)) != 0
    }

    pub fn initial(&self) -> State {
        State { stacks: vec![vec![Frame::Value(self.root)]] }
    }

    #[inline]
    fn typed(&self, node: NodeId) -> &Typed {
        match &self.nodes[node as usize] {
            Node::Typed(t) => t,
            _ => unreachable!("node {node} is not typed"),
        }
    }

    #[inline]
    fn lits(&self, node: NodeId) -> &[Vec<u8>] {
        match &self.nodes[node as usize] {
            Node::Lits(l) => l,
            _ => unreachable!("node {node} is not a literal set"),
        }
    }

    #[inline]
    fn declared(&self, node: NodeId) -> &Declared {
        match &self.typed(node).obj {
            ObjectSpec::Declared(d) => d,
            ObjectSpec::Free { .. } => unreachable!("node {node} is a free-form object"),
        }
    }

    /// `(min, max)` characters of a string frame's node.
    #[inline]
    pub fn str_limits(&self, node: NodeId) -> (u32, u32) {
        if node == KEY {
            (0, UNBOUNDED)
        } else {
            let t = self.typed(node);
            (t.str_min, t.str_max)
        }
    }

    /// A frame that may end here (a number or a literal whose text is complete).
    #[inline]
    fn frame_complete(&self, frame: &Frame) -> bool {
        match *frame {
            Frame::Num { phase, .. } => matches!(phase, N_ZERO | N_INT | N_FRAC | N_EXP_DIGITS),
            Frame::Lit { node, pos, lo, .. } => self.lits(node)[lo as usize].len() == pos as usize,
            _ => false,
        }
    }

    /// Some stack holds one complete value.
    pub fn is_complete(&self, state: &State) -> bool {
        state.stacks.iter().any(|s| s.is_empty() || (s.len() == 1 && self.frame_complete(&s[0])))
    }

    /// Feeds one byte to every stack; `false` (and an empty state) when none survives.
    pub fn step_state(&self, state: &mut State, b: u8) -> bool {
        let mut forks = Vec::new();
        if state.stacks.len() == 1 {
            if !self.step(&mut state.stacks[0], b, &mut forks) {
                // Forks only come from a union start that succeeded, so there are none here.
                state.stacks.clear();
                return false;
            }
            if forks.is_empty() {
                return true;
            }
        } else {
            state.stacks.retain_mut(|s| self.step(s, b, &mut forks));
        }
        state.stacks.append(&mut forks);
        let stacks = &mut state.stacks;
        let mut i = 1;
        while i < stacks.len() {
            if stacks[..i].contains(&stacks[i]) {
                stacks.swap_remove(i);
            } else {
                i += 1;
            }
        }
        !stacks.is_empty()
    }

    /// What byte `b` does to a stack whose top is `frame`, as far as the frame alone can tell:
    /// most bytes only change the top frame ([`Top::Replace`]). The trie walk uses this to
    /// step without copying stacks; [`Grammar::step`] uses it first, so the two agree.
    #[inline(always)]
    pub fn step_top(&self, frame: Frame, b: u8) -> Top {
        use Top::{Complex, Fail, Replace};
        match frame {
            Frame::Value(node) if self.starts(node, b) => Complex,
            Frame::Value(_) => Fail,
            Frame::Str { node, chars, esc, utf8 } => {
                let (chars, esc, utf8) = match esc {
                    E_NONE if utf8 != 0 => match utf8_step(utf8, b) {
                        Some(u) => (chars, E_NONE, u),
                        None => return Fail,
                    },
                    E_NONE => {
                        let (min, max) = self.str_limits(node);
                        match b {
                            b'"' if chars >= min => return Complex,
                            b'"' => return Fail,
                            _ if b < 0x20 || chars >= max => return Fail,
                            b'\\' => (chars + 1, E_ESC, 0),
                            _ => match utf8_step(0, b) {
                                Some(u) => (chars + 1, E_NONE, u),
                                None => return Fail,
                            },
                        }
                    }
                    E_ESC => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => (chars, E_NONE, 0),
                        b'u' => (chars, E_U0, 0),
                        _ => return Fail,
                    },
                    E_U0 if b == b'd' || b == b'D' => (chars, E_UD, 0),
                    E_U0 if is_hex(b) => (chars, E_H3, 0),
                    E_UD => match b {
                        b'0'..=b'7' => (chars, E_H2, 0),
                        b'8'..=b'9' | b'a'..=b'b' | b'A'..=b'B' => (chars, E_HH2, 0),
                        _ => return Fail,
                    },
                    E_H3 if is_hex(b) => (chars, E_H2, 0),
                    E_H2 if is_hex(b) => (chars, E_H1, 0),
                    E_H1 if is_hex(b) => (chars, E_NONE, 0),
                    E_HH2 if is_hex(b) => (chars, E_HH1, 0),
                    E_HH1 if is_hex(b) => (chars, E_LB, 0),
                    E_LB if b == b'\\' => (chars, E_LU, 0),
                    E_LU if b == b'u' => (chars, E_L0, 0),
                    E_L0 if b == b'd' || b == b'D' => (chars, E_L1, 0),
                    E_L1 if matches!(b, b'c'..=b'f' | b'C'..=b'F') => (chars, E_H2, 0),
                    _ => return Fail,
                };
                Replace(Frame::Str { node, chars, esc, utf8 })
            }
            Frame::Num { .. } => match num_step(frame, b) {
                Some(f) => Replace(f),
                // Only `,` `]` `}` can follow a complete value.
                None if matches!(b, b',' | b']' | b'}') && self.frame_complete(&frame) => Complex,
                None => Fail,
            },
            Frame::Lit { node, pos, lo, hi } => {
                let lits = self.lits(node);
                let p = pos as usize;
                let range = &lits[lo as usize..hi as usize];
                let start = range.partition_point(|l| l.len() <= p || l[p] < b);
                let end = range.partition_point(|l| l.len() <= p || l[p] <= b);
                if start < end {
                    Replace(Frame::Lit { node, pos: pos + 1, lo: lo + start as u32, hi: lo + end as u32 })
                } else if matches!(b, b',' | b']' | b'}') && self.frame_complete(&frame) {
                    Complex
                } else {
                    Fail
                }
            }
            Frame::Arr { node, count, phase } => {
                let spec = &self.typed(node).arr;
                match (phase, b) {
                    (A_START, b']') if spec.min == 0 => Complex,
                    (A_START, _) if spec.max > 0 && self.starts(spec.item(0), b) => Complex,
                    (A_AFTER_VALUE, b',') if count < spec.max => {
                        Replace(Frame::Arr { node, count, phase: A_AFTER_COMMA })
                    }
                    (A_AFTER_VALUE, b']') if count >= spec.min => Complex,
                    (A_AFTER_COMMA, b' ') => Replace(Frame::Arr { node, count, phase: A_AFTER_COMMA_SP }),
                    (A_AFTER_COMMA | A_AFTER_COMMA_SP, _) if self.starts(spec.item(count), b) => Complex,
                    _ => Fail,
                }
            }
            Frame::Obj { node, next, cand, pos, phase } => {
                let d = self.declared(node);
                let obj = |next, cand, pos, phase| Replace(Frame::Obj { node, next, cand, pos, phase });
                match (phase, b) {
                    (O_START, b'}') if d.can_close(0) => Complex,
                    // Every key starts with `"`: the first candidate matches so far.
                    (O_START | O_AFTER_COMMA | O_AFTER_COMMA_SP, b'"') if next < d.len() => obj(next, next, 1, O_KEY),
                    (O_AFTER_COMMA, b' ') => obj(next, cand, pos, O_AFTER_COMMA_SP),
                    (O_KEY, _) => {
                        let p = pos as usize;
                        let seen = &d.props[cand as usize].key[..p];
                        let Some(c) = (cand..=d.limit(next)).find(|&j| {
                            let key = &d.props[j as usize].key;
                            key.get(p) == Some(&b) && &key[..p] == seen
                        }) else {
                            return Fail;
                        };
                        if p + 1 == d.props[c as usize].key.len() {
                            obj(c + 1, c, 0, O_AFTER_COLON)
                        } else {
                            obj(next, c, pos + 1, O_KEY)
                        }
                    }
                    (O_AFTER_COLON, b' ') => obj(next, cand, 0, O_AFTER_COLON_SP),
                    (O_AFTER_COLON | O_AFTER_COLON_SP, _) if self.starts(d.props[cand as usize].node, b) => Complex,
                    (O_AFTER_VALUE, b',') if next < d.len() => obj(next, cand, 0, O_AFTER_COMMA),
                    (O_AFTER_VALUE, b'}') if d.can_close(next) => Complex,
                    _ => Fail,
                }
            }
            Frame::Free { node, phase } => {
                let free = |phase| Replace(Frame::Free { node, phase });
                match (phase, b) {
                    (O_START | O_AFTER_VALUE, b'}') => Complex,
                    (O_START | O_AFTER_COMMA | O_AFTER_COMMA_SP, b'"') => Complex,
                    (O_KEY, b':') => free(O_AFTER_COLON),
                    (O_AFTER_COLON, b' ') => free(O_AFTER_COLON_SP),
                    (O_AFTER_COLON | O_AFTER_COLON_SP, _) if self.starts(free_values(&self.typed(node).obj), b) => {
                        Complex
                    }
                    (O_AFTER_VALUE, b',') => free(O_AFTER_COMMA),
                    (O_AFTER_COMMA, b' ') => free(O_AFTER_COMMA_SP),
                    _ => Fail,
                }
            }
        }
    }

    /// Feeds one byte to one stack. Extra stacks (from a union whose branches all accept `b`)
    /// go to `forks`, already past `b`. On `false` the stack is garbage.
    fn step(&self, stack: &mut Stack, b: u8, forks: &mut Vec<Stack>) -> bool {
        loop {
            let Some(top) = stack.last_mut() else { return false };
            match self.step_top(*top, b) {
                Top::Replace(frame) => {
                    *top = frame;
                    return true;
                }
                Top::Fail => return false,
                Top::Complex => {}
            }
            // What `step_top` left: pushes and pops.
            match *top {
                Frame::Value(node) => {
                    stack.pop();
                    return self.start_value(node, b, stack, forks);
                }
                // A string's closing quote.
                Frame::Str { .. } => {
                    stack.pop();
                    return true;
                }
                // A complete number or literal that `b` does not continue: `b` goes to the parent.
                Frame::Num { .. } | Frame::Lit { .. } => {
                    stack.pop();
                }
                Frame::Arr { node, count, phase } => {
                    let spec = &self.typed(node).arr;
                    let index = match phase {
                        // `step_top` lets `]` through after `[` only when the array may be empty.
                        A_START if b == b']' && spec.min == 0 => {
                            stack.pop();
                            return true;
                        }
                        A_AFTER_VALUE => {
                            stack.pop();
                            return true;
                        }
                        A_START => 0,
                        _ => count,
                    };
                    *top = Frame::Arr { node, count: index + 1, phase: A_AFTER_VALUE };
                    return self.start_value(spec.item(index), b, stack, forks);
                }
                Frame::Obj { node, next, cand, phase, .. } => {
                    if phase == O_START || phase == O_AFTER_VALUE {
                        stack.pop();
                        return true;
                    }
                    *top = Frame::Obj { node, next, cand, pos: 0, phase: O_AFTER_VALUE };
                    return self.start_value(self.declared(node).props[cand as usize].node, b, stack, forks);
                }
                Frame::Free { node, phase } => match phase {
                    O_AFTER_COLON | O_AFTER_COLON_SP => {
                        *top = Frame::Free { node, phase: O_AFTER_VALUE };
                        return self.start_value(free_values(&self.typed(node).obj), b, stack, forks);
                    }
                    _ if b == b'}' => {
                        stack.pop();
                        return true;
                    }
                    _ => {
                        *top = Frame::Free { node, phase: O_KEY };
                        stack.push(Frame::Str { node: KEY, chars: 0, esc: E_NONE, utf8: 0 });
                        return true;
                    }
                },
            }
        }
    }

    /// Starts a value of `node` with its first byte `b` on top of `stack`.
    fn start_value(&self, node: NodeId, b: u8, stack: &mut Stack, forks: &mut Vec<Stack>) -> bool {
        match &self.nodes[node as usize] {
            Node::Typed(t) => {
                let types = t.types;
                let frame = match b {
                    b'"' if types & T_STR != 0 => Frame::Str { node, chars: 0, esc: E_NONE, utf8: 0 },
                    b'{' if types & T_OBJ != 0 => match t.obj {
                        ObjectSpec::Free { .. } => Frame::Free { node, phase: O_START },
                        ObjectSpec::Declared(_) => Frame::Obj { node, next: 0, cand: 0, pos: 0, phase: O_START },
                    },
                    b'[' if types & T_ARR != 0 => Frame::Arr { node, count: 0, phase: A_START },
                    b'-' | b'0'..=b'9' if types & T_INT != 0 => {
                        let start = Frame::Num {
                            int_only: types & T_NUM == 0,
                            phase: N_START,
                            digits: 0,
                            exp: 0,
                            neg_exp: false,
                        };
                        num_step(start, b).expect("a number's first byte")
                    }
                    b't' | b'f' if types & T_BOOL != 0 => return self.start_lits(BOOL, b, stack, forks),
                    b'n' if types & T_NULL != 0 => return self.start_lits(NULL, b, stack, forks),
                    _ => return false,
                };
                stack.push(frame);
                true
            }
            Node::Lits(_) => self.start_lits(node, b, stack, forks),
            Node::Union(branches) => {
                let mut started = false;
                let base = stack.clone();
                for &branch in branches {
                    let mut s = base.clone();
                    if self.start_value(branch, b, &mut s, forks) {
                        if started {
                            forks.push(s);
                        } else {
                            *stack = s;
                            started = true;
                        }
                    }
                }
                started
            }
            Node::Alias(_) => unreachable!("aliases are resolved at compile time"),
        }
    }

    fn start_lits(&self, node: NodeId, b: u8, stack: &mut Stack, forks: &mut Vec<Stack>) -> bool {
        let n = self.lits(node).len() as u32;
        stack.push(Frame::Lit { node, pos: 0, lo: 0, hi: n });
        self.step(stack, b, forks)
    }

    /// When the state is one stack inside a string, between escapes: the string's UTF-8
    /// decoder state, characters so far, and length limits.
    pub fn plain_string(&self, state: &State) -> Option<PlainString> {
        match state.stacks.as_slice() {
            [stack] => match stack.last() {
                Some(&Frame::Str { node, chars, esc: E_NONE, utf8 }) => {
                    let (min, max) = self.str_limits(node);
                    Some(PlainString { utf8, chars, min, max })
                }
                _ => None,
            },
            _ => None,
        }
    }
}

pub(crate) struct PlainString {
    pub utf8: u8,
    pub chars: u32,
    pub min: u32,
    pub max: u32,
}

impl State {
    /// The one stack's top frame, if the state is one non-empty stack.
    pub fn single_top(&self) -> Option<Frame> {
        match self.stacks.as_slice() {
            [stack] => stack.last().copied(),
            _ => None,
        }
    }

    /// Replaces the one stack's top frame (see [`State::single_top`]).
    pub fn set_single_top(&mut self, frame: Frame) {
        *self.stacks[0].last_mut().expect("a non-empty stack") = frame;
    }

    /// For a [`Grammar::plain_string`] state: the same string at a character boundary, with
    /// `chars` characters.
    pub fn at_string_boundary(&mut self, chars: u32) {
        if let Some(Frame::Str { node, esc, .. }) = self.single_top() {
            self.set_single_top(Frame::Str { node, chars, esc, utf8: 0 });
        }
    }
}

/// A token is *plain* when it holds no `"`, `\` or control byte: inside a string between
/// escapes it only moves the UTF-8 decoder and the character count.
pub(crate) fn is_plain(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// For plain bytes: the UTF-8 decoder states they may start in (bit per state), the states
/// from which they end between characters (state 0), and how many characters they start
/// (non-continuation bytes).
pub(crate) fn plain_info(bytes: &[u8]) -> (u8, u8, u32) {
    let (mut valid, mut to_boundary) = (0u8, 0u8);
    for start in 0..UTF8_STATES as u8 {
        let end = bytes.iter().try_fold(start, |s, &b| utf8_step(s, b));
        if let Some(end) = end {
            valid |= 1 << start;
            if end == 0 {
                to_boundary |= 1 << start;
            }
        }
    }
    let chars = bytes.iter().filter(|&&b| !(0x80..=0xBF).contains(&b)).count() as u32;
    (valid, to_boundary, chars)
}
