//! JSON Schema (the subset in the crate docs) → [`Grammar`].

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::Unsupported;
use crate::grammar::{
    ANY, ArraySpec, BOOL, Declared, Grammar, NEVER, NULL, Node, NodeId, ObjectSpec, Prop, T_ALL, T_ARR, T_BOOL, T_INT,
    T_NULL, T_NUM, T_OBJ, T_STR, Typed, UNBOUNDED,
};

/// The keywords that shape what is generated; every other keyword is ignored (which only
/// loosens the constraint).
const CONSTRAINING: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
];

const MAX_DEPTH: usize = 64;
/// Cross products of two `anyOf`s under `allOf` larger than this keep only the first `anyOf`.
const MAX_CROSS: usize = 64;

pub(crate) fn compile(schema: Option<&Value>) -> Result<Grammar, Unsupported> {
    let object = serde_json::json!({"type": "object"});
    let root = schema.unwrap_or(&object);
    let mut c = Compiler { root, nodes: builtins(), refs: HashMap::new() };
    let id = c.value(root, 0)?;
    c.finish(id)
}

fn builtins() -> Vec<Node> {
    let any = Typed {
        types: T_ALL,
        str_min: 0,
        str_max: UNBOUNDED,
        arr: ArraySpec { prefix: Vec::new(), items: ANY, min: 0, max: UNBOUNDED },
        obj: ObjectSpec::Free { values: ANY },
    };
    let mut nodes = vec![Node::Union(Vec::new()); 4];
    nodes[BOOL as usize] = Node::Lits(vec![b"false".to_vec(), b"true".to_vec()]);
    nodes[NULL as usize] = Node::Lits(vec![b"null".to_vec()]);
    nodes[ANY as usize] = Node::Typed(Box::new(any));
    nodes[NEVER as usize] = Node::Union(Vec::new());
    nodes
}

fn err(message: impl Into<String>) -> Unsupported {
    Unsupported(message.into())
}

fn constraining(m: &Map<String, Value>) -> bool {
    m.keys().any(|k| CONSTRAINING.contains(&k.as_str()))
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
}

impl<'a> Compiler<'a> {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<NodeId, Unsupported> {
        if depth > MAX_DEPTH {
            return Err(err(format!("the schema nests deeper than {MAX_DEPTH} levels")));
        }
        match v {
            Value::Bool(true) => Ok(ANY),
            Value::Bool(false) => Ok(NEVER),
            Value::Object(m) => self.object(m, depth),
            _ => Err(err(format!("a schema must be an object or a boolean, not {v}"))),
        }
    }

    fn object(&mut self, m: &Map<String, Value>, depth: usize) -> Result<NodeId, Unsupported> {
        if let Some(r) = m.get("$ref")
            && !m.keys().any(|k| k != "$ref" && CONSTRAINING.contains(&k.as_str()))
        {
            return self.reference(r, depth);
        }
        let Some(m) = self.normalize(m, depth, false)? else { return Ok(NEVER) };
        if let Some(branches) = m.get("anyOf") {
            let Value::Array(branches) = branches else { return Err(err("anyOf must be an array")) };
            let mut siblings = m.clone();
            siblings.remove("anyOf");
            let constrained = constraining(&siblings);
            let mut ids = Vec::with_capacity(branches.len());
            for branch in branches {
                let id = if !constrained {
                    self.value(branch, depth + 1)?
                } else {
                    match branch {
                        Value::Bool(true) => self.object(&siblings, depth + 1)?,
                        Value::Bool(false) => continue,
                        Value::Object(b) => match self.normalize(b, depth + 1, true)? {
                            Some(b) => self.object(&merge(&siblings, &b), depth + 1)?,
                            None => continue,
                        },
                        _ => return Err(err(format!("a schema must be an object or a boolean, not {branch}"))),
                    }
                };
                ids.push(id);
            }
            return Ok(self.push(Node::Union(ids)));
        }
        self.typed(&m, depth)
    }

    /// Folds `allOf`, a `$ref` with constraining siblings (or any `$ref` when `force`), and
    /// `oneOf` (read as `anyOf`) into one schema object. `None`: a conjunct is `false`.
    fn normalize(
        &mut self,
        m: &Map<String, Value>,
        depth: usize,
        force: bool,
    ) -> Result<Option<Map<String, Value>>, Unsupported> {
        if depth > MAX_DEPTH {
            return Err(err(format!("the schema nests deeper than {MAX_DEPTH} levels")));
        }
        let has_ref =
            m.contains_key("$ref") && (force || m.keys().any(|k| k != "$ref" && CONSTRAINING.contains(&k.as_str())));
        if !has_ref && !m.contains_key("allOf") && !m.contains_key("oneOf") {
            return Ok(Some(m.clone()));
        }
        let mut m = m.clone();
        let mut parts = Vec::new();
        if let Some(one_of) = m.remove("oneOf") {
            if m.contains_key("anyOf") {
                let mut part = Map::new();
                part.insert("anyOf".into(), one_of);
                parts.push(Value::Object(part));
            } else {
                m.insert("anyOf".into(), one_of);
            }
        }
        if has_ref && let Some(r) = m.remove("$ref") {
            parts.push(self.resolve(&r)?.clone());
        }
        match m.remove("allOf") {
            Some(Value::Array(all)) => parts.extend(all),
            Some(_) => return Err(err("allOf must be an array")),
            None => {}
        }
        for part in parts {
            match part {
                Value::Bool(true) => {}
                Value::Bool(false) => return Ok(None),
                Value::Object(p) => match self.normalize(&p, depth + 1, true)? {
                    Some(p) => m = merge(&m, &p),
                    None => return Ok(None),
                },
                _ => return Err(err(format!("a schema must be an object or a boolean, not {part}"))),
            }
        }
        Ok(Some(m))
    }

    fn resolve(&self, r: &Value) -> Result<&'a Value, Unsupported> {
        let Value::String(r) = r else { return Err(err("$ref must be a string")) };
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(err(format!("only local $refs (#/$defs/…) are supported, not {r:?}")));
        };
        self.root.pointer(pointer).ok_or_else(|| err(format!("$ref {r:?} points nowhere in the schema")))
    }

    fn reference(&mut self, r: &Value, depth: usize) -> Result<NodeId, Unsupported> {
        if let Value::String(s) = r
            && let Some(&id) = self.refs.get(s)
        {
            return Ok(id);
        }
        let target = self.resolve(r)?;
        let id = self.push(Node::Alias(NEVER));
        self.refs.insert(r.as_str().unwrap_or_default().to_owned(), id);
        let to = self.value(target, depth + 1)?;
        self.nodes[id as usize] = Node::Alias(to);
        Ok(id)
    }

    fn typed(&mut self, m: &Map<String, Value>, depth: usize) -> Result<NodeId, Unsupported> {
        let types = match m.get("type") {
            None => T_ALL,
            Some(t) => type_bits(t)?,
        };
        if m.contains_key("const") || m.contains_key("enum") {
            let values: Vec<&Value> = match (m.get("const"), m.get("enum")) {
                (_, Some(e)) if !e.is_array() => return Err(err("enum must be an array")),
                (Some(c), Some(Value::Array(e))) => {
                    if e.iter().any(|v| json_eq(v, c)) {
                        vec![c]
                    } else {
                        Vec::new()
                    }
                }
                (Some(c), _) => vec![c],
                (None, Some(Value::Array(e))) => e.iter().collect(),
                (None, _) => unreachable!(),
            };
            let mut lits: Vec<Vec<u8>> = values
                .into_iter()
                .filter(|v| type_matches(v, types))
                .map(|v| {
                    let mut out = Vec::new();
                    write_json(v, &mut out);
                    out
                })
                .collect();
            lits.sort();
            lits.dedup();
            return Ok(self.push(Node::Lits(lits)));
        }

        let count = |key: &str| m.get(key).and_then(Value::as_u64).map(|n| n.min(UNBOUNDED as u64 - 1) as u32);
        let str_min = count("minLength").unwrap_or(0);
        let str_max = count("maxLength").unwrap_or(UNBOUNDED);

        let mut prefix = Vec::new();
        if types & T_ARR != 0
            && let Some(Value::Array(p)) = m.get("prefixItems")
        {
            for s in p {
                prefix.push(self.value(s, depth + 1)?);
            }
        }
        let items = match m.get("items") {
            _ if types & T_ARR == 0 => ANY,
            Some(Value::Array(tuple)) => {
                prefix.clear();
                for s in tuple {
                    prefix.push(self.value(s, depth + 1)?);
                }
                match m.get("additionalItems") {
                    Some(s) => self.value(s, depth + 1)?,
                    None => ANY,
                }
            }
            Some(s) => self.value(s, depth + 1)?,
            None => ANY,
        };
        let arr = ArraySpec {
            prefix,
            items,
            min: count("minItems").unwrap_or(0),
            max: count("maxItems").unwrap_or(UNBOUNDED),
        };

        let obj = if types & T_OBJ == 0 { ObjectSpec::Free { values: ANY } } else { self.object_spec(m, depth)? };
        Ok(self.push(Node::Typed(Box::new(Typed { types, str_min, str_max, arr, obj }))))
    }

    fn object_spec(&mut self, m: &Map<String, Value>, depth: usize) -> Result<ObjectSpec, Unsupported> {
        let required: Vec<&str> = match m.get("required") {
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let additional = m.get("additionalProperties");
        let properties = match m.get("properties") {
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(err("properties must be an object")),
            None => None,
        };
        let declared = properties.filter(|p| !p.is_empty());
        if declared.is_none() && additional != Some(&Value::Bool(false)) {
            let values = match additional {
                Some(s) => self.value(s, depth + 1)?,
                None => ANY,
            };
            return Ok(ObjectSpec::Free { values });
        }
        let mut props = Vec::new();
        for (name, s) in declared.into_iter().flatten() {
            props.push(Prop {
                key: key_text(name),
                node: self.value(s, depth + 1)?,
                required: required.contains(&name.as_str()),
            });
        }
        // Required but undeclared: the object must have them, so they come last (as any value,
        // or the additionalProperties schema).
        let undeclared_node = match additional {
            Some(s @ Value::Object(_)) => Some(s),
            _ => None,
        };
        for name in required {
            if declared.is_some_and(|p| p.contains_key(name)) || props.iter().any(|p| p.key == key_text(name)) {
                continue;
            }
            let node = match undeclared_node {
                Some(s) => self.value(s, depth + 1)?,
                None => ANY,
            };
            props.push(Prop { key: key_text(name), node, required: true });
        }
        Ok(ObjectSpec::Declared(Declared::new(props)))
    }

    /// Resolves aliases, flattens unions, and drops what can produce no value.
    fn finish(mut self, root: NodeId) -> Result<Grammar, Unsupported> {
        let n = self.nodes.len();
        // Aliases → copies of what they resolve to.
        for id in 0..n {
            let mut target = id;
            let mut hops = 0;
            while let Node::Alias(t) = self.nodes[target] {
                target = t as usize;
                hops += 1;
                if hops > n {
                    return Err(err("a $ref cycle that never reaches a schema"));
                }
            }
            if target != id {
                self.nodes[id] = self.nodes[target].clone();
            }
        }
        // Unions → flat lists of non-union branches.
        for id in 0..n {
            if let Node::Union(branches) = &self.nodes[id] {
                let mut flat = Vec::new();
                let mut seen = vec![id as NodeId];
                let mut todo: Vec<NodeId> = branches.iter().rev().copied().collect();
                while let Some(b) = todo.pop() {
                    if seen.contains(&b) {
                        continue;
                    }
                    seen.push(b);
                    match &self.nodes[b as usize] {
                        Node::Union(inner) => todo.extend(inner.iter().rev()),
                        _ => flat.push(b),
                    }
                }
                self.nodes[id] = Node::Union(flat);
            }
        }
        // Which nodes can produce a value (least fixpoint).
        let mut productive = vec![false; n];
        loop {
            let mut changed = false;
            for id in 0..n {
                if !productive[id] && self.productive(id, &productive) {
                    productive[id] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        if !productive[root as usize] {
            return Err(err("the schema admits no value"));
        }
        for id in 0..n {
            match &mut self.nodes[id] {
                Node::Union(branches) => branches.retain(|&b| productive[b as usize]),
                Node::Typed(t) => prune(t, &productive),
                _ => {}
            }
        }
        Ok(Grammar::new(self.nodes, root))
    }

    fn productive(&self, id: usize, p: &[bool]) -> bool {
        match &self.nodes[id] {
            Node::Lits(l) => !l.is_empty(),
            Node::Union(b) => b.iter().any(|&b| p[b as usize]),
            Node::Typed(t) => {
                t.types & (T_NULL | T_BOOL | T_INT) != 0
                    || (t.types & T_STR != 0 && t.str_min <= t.str_max)
                    || (t.types & T_ARR != 0 && array_ok(&t.arr, p))
                    || (t.types & T_OBJ != 0 && object_ok(&t.obj, p))
            }
            Node::Alias(_) => unreachable!(),
        }
    }
}

fn array_ok(a: &ArraySpec, p: &[bool]) -> bool {
    let min = a.min as usize;
    a.min <= a.max
        && a.prefix.iter().take(min).all(|&i| p[i as usize])
        && (min <= a.prefix.len() || p[a.items as usize])
}

fn object_ok(o: &ObjectSpec, p: &[bool]) -> bool {
    match o {
        ObjectSpec::Free { .. } => true,
        ObjectSpec::Declared(d) => d.props.iter().all(|prop| !prop.required || p[prop.node as usize]),
    }
}

fn prune(t: &mut Typed, p: &[bool]) {
    if t.str_min > t.str_max {
        t.types &= !T_STR;
    }
    if !array_ok(&t.arr, p) {
        t.types &= !T_ARR;
    } else {
        let a = &mut t.arr;
        let first_dead =
            a.prefix.iter().position(|&i| !p[i as usize]).or((!p[a.items as usize]).then_some(a.prefix.len()));
        if let Some(i) = first_dead {
            a.max = a.max.min(i as u32);
        }
    }
    if !object_ok(&t.obj, p) {
        t.types &= !T_OBJ;
    } else {
        match &mut t.obj {
            ObjectSpec::Free { values } if !p[*values as usize] => {
                t.obj = ObjectSpec::Declared(Declared::new(Vec::new()))
            }
            ObjectSpec::Free { .. } => {}
            ObjectSpec::Declared(d) => {
                if d.props.iter().any(|prop| !p[prop.node as usize]) {
                    let props = d.props.drain(..).filter(|prop| p[prop.node as usize]).collect();
                    *d = Declared::new(props);
                }
            }
        }
    }
}

/// `"name":`
fn key_text(name: &str) -> Vec<u8> {
    let mut key = serde_json::to_vec(name).expect("a string serializes");
    key.push(b':');
    key
}

fn type_bits(t: &Value) -> Result<u8, Unsupported> {
    let one = |s: &str| match s {
        "null" => Ok(T_NULL),
        "boolean" => Ok(T_BOOL),
        "integer" => Ok(T_INT),
        "number" => Ok(T_INT | T_NUM),
        "string" => Ok(T_STR),
        "array" => Ok(T_ARR),
        "object" => Ok(T_OBJ),
        _ => Err(err(format!("unknown type {s:?}"))),
    };
    match t {
        Value::String(s) => one(s),
        Value::Array(a) => a.iter().try_fold(0, |bits, t| match t {
            Value::String(s) => Ok(bits | one(s)?),
            _ => Err(err(format!("type must name types, not {t}"))),
        }),
        _ => Err(err(format!("type must be a string or an array, not {t}"))),
    }
}

fn type_names(bits: u8) -> Value {
    let mut names = Vec::new();
    for (bit, name) in [(T_NULL, "null"), (T_BOOL, "boolean"), (T_STR, "string"), (T_ARR, "array"), (T_OBJ, "object")] {
        if bits & bit != 0 {
            names.push(Value::from(name));
        }
    }
    if bits & T_NUM != 0 {
        names.push("number".into());
    } else if bits & T_INT != 0 {
        names.push("integer".into());
    }
    Value::Array(names)
}

fn type_matches(v: &Value, types: u8) -> bool {
    let bit = match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOL,
        Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => T_INT,
        Value::Number(_) => T_NUM,
        Value::String(_) => T_STR,
        Value::Array(_) => T_ARR,
        Value::Object(_) => T_OBJ,
    };
    types & bit != 0
}

/// JSON Schema equality: numbers by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `{"allOf": [a, b]}`, simplified for booleans.
fn all_of(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
        (Value::Bool(true), x) | (x, Value::Bool(true)) => x.clone(),
        _ => serde_json::json!({"allOf": [a, b]}),
    }
}

/// The conjunction of two schema objects (no `$ref`/`allOf` at their top), as one object: never
/// stricter than the conjunction.
fn merge(a: &Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    let mut out = a.clone();
    let mut never = false;
    for (k, vb) in b {
        let Some(va) = out.get(k) else {
            out.insert(k.clone(), vb.clone());
            continue;
        };
        let merged = match (k.as_str(), va, vb) {
            ("type", _, _) => match (type_bits(va), type_bits(vb)) {
                (Ok(x), Ok(y)) => type_names(x & y),
                _ => va.clone(),
            },
            ("enum", Value::Array(x), Value::Array(y)) => {
                Value::Array(x.iter().filter(|v| y.iter().any(|w| json_eq(v, w))).cloned().collect())
            }
            ("const", _, _) => {
                never |= !json_eq(va, vb);
                va.clone()
            }
            ("properties", Value::Object(x), Value::Object(y)) => {
                let mut props = x.clone();
                for (name, s) in y {
                    let s = match props.get(name) {
                        Some(r) => all_of(r, s),
                        None => s.clone(),
                    };
                    props.insert(name.clone(), s);
                }
                Value::Object(props)
            }
            ("required", Value::Array(x), Value::Array(y)) => {
                let mut r = x.clone();
                r.extend(y.iter().filter(|v| !x.contains(v)).cloned());
                Value::Array(r)
            }
            ("additionalProperties" | "additionalItems", _, _) => all_of(va, vb),
            ("items", Value::Array(_), _) | ("items", _, Value::Array(_)) => va.clone(),
            ("items", _, _) => all_of(va, vb),
            ("minItems" | "minLength", _, _) => match (va.as_u64(), vb.as_u64()) {
                (Some(x), Some(y)) => x.max(y).into(),
                _ => va.clone(),
            },
            ("maxItems" | "maxLength", _, _) => match (va.as_u64(), vb.as_u64()) {
                (Some(x), Some(y)) => x.min(y).into(),
                _ => va.clone(),
            },
            ("anyOf", Value::Array(x), Value::Array(y)) if x.len() * y.len() <= MAX_CROSS => {
                Value::Array(x.iter().flat_map(|p| y.iter().map(move |q| all_of(p, q))).collect())
            }
            _ => va.clone(),
        };
        out.insert(k.clone(), merged);
    }
    if never {
        out.insert("enum".into(), Value::Array(Vec::new()));
    }
    out
}

/// A value's text as the literal to force: `, ` and `: ` separators, like Python's json.dumps.
pub(crate) fn write_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_json(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(&serde_json::to_vec(k).expect("a string serializes"));
                out.extend_from_slice(b": ");
                write_json(x, out);
            }
            out.push(b'}');
        }
        _ => out.extend_from_slice(&serde_json::to_vec(v).expect("a scalar serializes")),
    }
}
