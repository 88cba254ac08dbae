//! HepAI's example functions as a tool model (`switchyard worker tools-demo`, started by
//! `switchyard dev`): what the README's tool examples call on a fresh machine.

use std::time::Duration;

use futures::stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Call, ToolError, Toolbox};

/// HepAI's `custom_method(a: int = 1, b: int = 2)`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomMethod {
    /// The first addend.
    #[serde(default = "one")]
    pub a: i64,
    /// The second addend.
    #[serde(default = "two")]
    pub b: i64,
}

fn one() -> i64 {
    1
}
fn two() -> i64 {
    2
}

/// HepAI's `get_stream()`, with how many numbers and how fast.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetStream {
    /// How many numbers: 0, 1, … count − 1.
    #[serde(default = "ten")]
    #[schemars(range(max = 100000))]
    pub count: u32,
    /// Milliseconds between two numbers.
    #[serde(default)]
    #[schemars(range(max = 60000))]
    pub interval_ms: u64,
}

fn ten() -> u32 {
    10
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// A function that always raises, to see an error reach the caller.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// The error message.
    pub message: String,
}

/// A plain call that takes its time (to see cancellation and redelivery).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    #[schemars(range(max = 600000))]
    pub ms: u64,
}

/// What `sleep` answers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Slept {
    pub ms: u64,
    /// The process that served the call.
    pub pid: u32,
}

/// What `get_info` answers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Info {
    pub model: String,
    pub functions: Vec<String>,
    /// The process serving the call (tells two workers of one model apart).
    pub pid: u32,
    pub version: String,
}

/// The demo tool model, named `name`.
pub fn toolbox(name: &str) -> Toolbox {
    let model = name.to_owned();
    let tools = Toolbox::new(name)
        .describe("HepAI's example functions")
        .function("custom_method", "Returns a + b.", |args: CustomMethod, _: Call| async move {
            args.a.checked_add(args.b).ok_or_else(|| ToolError::new("a + b overflows a 64-bit integer"))
        })
        .stream("get_stream", "Streams the numbers 0 … count − 1.", |args: GetStream, _: Call| {
            let interval = Duration::from_millis(args.interval_ms);
            stream::unfold(0u32, move |i| async move {
                if i >= args.count {
                    return None;
                }
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Some((Ok::<_, ToolError>(i), i + 1))
            })
        })
        .function("fail", "Always fails with `message`.", |args: Fail, _: Call| async move { Err::<(), _>(ToolError::new(args.message)) })
        .function("sleep", "Waits `ms` milliseconds, then says so and which process waited.", |args: Sleep, _: Call| async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok::<_, ToolError>(Slept { ms: args.ms, pid: std::process::id() })
        });
    let functions: Vec<String> = tools.specs().into_iter().map(|s| s.name).chain(["get_info".to_owned()]).collect();
    tools.function("get_info", "Describes this tool model and the process serving it.", move |_: NoArguments, _: Call| {
        let info = Info {
            model: model.clone(),
            functions: functions.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        async move { Ok::<_, ToolError>(info) }
    })
}
