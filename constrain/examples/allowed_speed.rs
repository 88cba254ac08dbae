//! How long `Matcher::allowed` takes over a synthetic 150,000-token byte-level BPE vocabulary,
//! in the states a decoding loop meets most.
//!
//! ```sh
//! cargo run --release -p switchyard-constrain --example allowed_speed [name filter] [iterations]
//! ```

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;
use switchyard_constrain::{Matcher, Vocabulary};

const SIZE: usize = 150_000;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as usize % n
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// Every byte; digits up to three; words with and without a leading space or capital;
/// punctuation and whitespace runs; CJK, Cyrillic, accented, emoji, and their partial UTF-8
/// pieces; JSON fragments; code.
fn vocabulary() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut seen = HashSet::new();
    let mut tokens = Vec::new();
    let mut add = |t: Vec<u8>, tokens: &mut Vec<Vec<u8>>| {
        if !t.is_empty() && tokens.len() < SIZE && seen.insert(t.clone()) {
            tokens.push(t);
        }
    };
    for b in 0..=255u8 {
        add(vec![b], &mut tokens);
    }
    for n in 0..1000 {
        add(n.to_string().into_bytes(), &mut tokens);
        add(format!("{n:03}").into_bytes(), &mut tokens);
        add(format!(" {n}").into_bytes(), &mut tokens);
    }
    let json = [
        "\":", "{\"", "},", "\"}", "\":\"", "\", \"", "\": \"", "\":[", "\"]", "\\n", "\\\"", "\\\\", "\\u", "\"},{\"",
        "\": ", "\": {", "\": [", "}]", "]}", "}}", "\"]}", "[\"", "[{", "{}", "[]", "\",", "\" ", " \"", "\":{\"",
        "\\/", "\\t", "\\r\\n", "true", "false", "null", ",\"", ", \"", "\"\"", "\"\n", "\n\"",
    ];
    for t in json {
        add(t.as_bytes().to_vec(), &mut tokens);
    }
    let punct = [
        ".", ",", ";", ":", "!", "?", "(", ")", "[", "]", "{", "}", "<", ">", "\"", "'", "`", "-", "_", "=", "+", "*",
        "/", "&", "|", "%", "$", "#", "@", "~", "^", "\\",
    ];
    for _ in 0..6000 {
        let n = 1 + rng.below(4);
        let t: String = (0..n).map(|_| rng.pick(&punct)).collect();
        add(t.into_bytes(), &mut tokens);
    }
    for n in 1..=32 {
        add(" ".repeat(n).into_bytes(), &mut tokens);
        add(format!("\n{}", " ".repeat(n)).into_bytes(), &mut tokens);
        add("\t".repeat(n.min(8)).into_bytes(), &mut tokens);
        add("\n".repeat(n.min(8)).into_bytes(), &mut tokens);
    }
    let code = [
        "fn",
        "let",
        "mut",
        "self",
        "return",
        "if",
        "else",
        "for",
        "while",
        "def",
        "class",
        "import",
        "from",
        "const",
        "var",
        "function",
        "=>",
        "->",
        "::",
        "();",
        "){",
        "});",
        "\n}",
        "\n    }",
        "):\n",
        "\"))",
        "')",
        "//",
        "/*",
        "*/",
        "#include",
        "std",
        "::new(",
        ".unwrap()",
    ];
    for _ in 0..4000 {
        let t = format!("{}{}", rng.pick(&code), rng.pick(&["", " ", "\n", "(", ")", ";", "\n    "]));
        add(t.into_bytes(), &mut tokens);
    }
    // Multi-byte: CJK singles and pairs, Cyrillic and accented words, emoji, partial pieces.
    for _ in 0..18000 {
        let c = char::from_u32(0x4E00 + rng.below(0x5000) as u32).unwrap();
        let s = if rng.below(3) == 0 {
            format!("{c}{}", char::from_u32(0x4E00 + rng.below(0x5000) as u32).unwrap())
        } else {
            c.to_string()
        };
        let bytes = s.into_bytes();
        match rng.below(8) {
            0 => add(bytes[..2].to_vec(), &mut tokens),
            1 => add(bytes[1..].to_vec(), &mut tokens),
            2 => add(bytes[2..].to_vec(), &mut tokens),
            _ => add(bytes, &mut tokens),
        }
    }
    let cyr = ["а", "б", "в", "г", "д", "е", "ж", "з", "и", "к", "л", "м", "н", "о", "п", "р", "с", "т", "у", "ы", "я"];
    let acc = ["é", "è", "à", "ü", "ö", "ß", "ñ", "ç", "ø", "å"];
    let emoji = ["😀", "🚀", "👍", "🎉", "❤️", "🔥", "✅", "🤖"];
    for _ in 0..9000 {
        let n = 1 + rng.below(6);
        let w: String = (0..n).map(|_| rng.pick(&cyr)).collect();
        add(format!(" {w}").into_bytes(), &mut tokens);
        add(format!("{}{}", rng.pick(&["l", "m", "t", "r", "d"]), rng.pick(&acc)).into_bytes(), &mut tokens);
        let e = rng.pick(&emoji).as_bytes();
        add(e[..e.len() - 1 - rng.below(2)].to_vec(), &mut tokens);
        add(e.to_vec(), &mut tokens);
    }
    // Word pieces fill the rest: syllables, with a leading space, capitalised, or with a quote.
    let onsets = [
        "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch",
        "th", "sh", "pl", "gr",
    ];
    let vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io", "y"];
    let codas = ["", "", "n", "r", "s", "t", "ng", "ck", "st", "nd", "ll", "tion", "ment", "ing", "ed"];
    while tokens.len() < SIZE {
        let syllables = 1 + rng.below(4);
        let mut w: String =
            (0..syllables).map(|_| format!("{}{}{}", rng.pick(&onsets), rng.pick(&vowels), rng.pick(&codas))).collect();
        if rng.below(4) == 0 {
            w = w[..1].to_uppercase() + &w[1..];
        }
        let t = match rng.below(100) {
            0 | 1 => format!("\"{w}"),
            2 => format!("{w}\":"),
            3 => format!("{w}\","),
            4..=50 => format!(" {w}"),
            _ => w,
        };
        add(t.into_bytes(), &mut tokens);
    }
    tokens
}

fn main() {
    let tokens = vocabulary();
    let bytes: usize = tokens.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let vocab = Vocabulary::new(tokens);
    println!("vocabulary: {} tokens, {bytes} bytes, built in {:.1} ms", vocab.len(), t0.elapsed().as_secs_f64() * 1e3);

    let object = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
    let person = json!({"type": "object", "properties": {"name": {"type": "string"}, "nick": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}}, "required": ["name", "nick", "age"]});
    let cases: &[(&str, Option<&serde_json::Value>, &str)] = &[
        ("json_object start", None, ""),
        ("json_object, inside a key", None, "{\"ke"),
        ("json_object, after a key", None, "{\"key\""),
        ("json_object, after `: ` (any value)", None, "{\"key\": "),
        ("json_object, inside a string value", None, "{\"key\": \"hello wor"),
        ("schema, inside a string", Some(&person), "{\"name\": \"Ada Love"),
        ("schema, inside a string (maxLength)", Some(&person), "{\"name\": \"Ada\", \"nick\": \"ad"),
        ("schema, after `, ` (declared key next)", Some(&person), "{\"name\": \"Ada\", "),
        ("schema, after a key's `: `", Some(&object), "{\"a\": "),
        ("schema, inside a number", Some(&object), "{\"a\": 12"),
    ];
    // Optional: a filter on the case names and an iteration count (for a profiler).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.first().map(String::as_str).unwrap_or("");
    let iters: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200);
    let mut out = vec![false; vocab.len()];
    for &(name, schema, prefix) in cases.iter().filter(|c| c.0.contains(filter)) {
        let mut m = Matcher::new(schema).unwrap();
        if !prefix.is_empty() {
            m.advance(prefix.as_bytes()).unwrap();
        }
        m.allowed(&vocab, &mut out);
        let allowed = out.iter().filter(|&&a| a).count();
        // The mask is exactly the tokens `advance` accepts.
        for (t, &ok) in out.iter().enumerate() {
            assert_eq!(
                ok,
                m.clone().advance(vocab.bytes(t as u32)).is_ok(),
                "{name}: token {:?}",
                String::from_utf8_lossy(vocab.bytes(t as u32))
            );
        }
        let mut best = f64::MAX;
        let t = Instant::now();
        for _ in 0..iters {
            let one = Instant::now();
            m.allowed(&vocab, &mut out);
            best = best.min(one.elapsed().as_secs_f64());
        }
        let mean = t.elapsed().as_secs_f64() / iters as f64;
        println!("{name:<42} {:>8.1} µs mean {:>8.1} µs best  ({allowed} allowed)", mean * 1e6, best * 1e6);
    }
}
