//! Hosted functions: plain async Rust functions served as a Switchyard tool model — HepAI's
//! `remote_callable` for Rust.
//!
//! A [`Toolbox`] names a tool model and holds its functions. Each function's parameter
//! schema is derived from its argument type (`schemars`), and its result schema from its
//! return type; the worker validates every call's arguments against that schema
//! (`jsonschema`) before the function runs, and answers an invalid call with the failing
//! argument's path. A function returns one value ([`Toolbox::function`]) or streams values
//! ([`Toolbox::stream`]). The toolbox is a worker [`Backend`], so it runs on the same worker
//! runtime as every model — slots, heartbeats, drain, permissions, redelivery when a worker
//! dies, cancellation (the function's future is dropped, and [`Call::cancel`] fires for code
//! that wants to stop cleanly).
//!
//! ```no_run
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//! use switchyard_tools::{Call, Toolbox, ToolError};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Add {
//!     a: i64,
//!     b: i64,
//! }
//!
//! let tools = Toolbox::new("calculator")
//!     .function("add", "Adds two integers.", |args: Add, _call: Call| async move {
//!         Ok::<_, ToolError>(args.a + args.b)
//!     });
//! // switchyard_worker::run_worker(std::sync::Arc::new(tools), options, shutdown)
//! ```

pub mod demo;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_schemas::{ErrorCode, FinishReason, FunctionSpec, JobRequest, ModelCard, ModelKind, Usage};
use switchyard_worker::{Backend, BackendError, EventSink, Finish, Job};
use tokio_util::sync::CancellationToken;

/// What a hosted function may fail with; its message reaches the caller as a
/// `function_failed` error, and the worker goes on serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError(pub String);

impl ToolError {
    pub fn new(message: impl Into<String>) -> ToolError {
        ToolError(message.into())
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for ToolError {
    fn from(e: E) -> ToolError {
        ToolError(e.to_string())
    }
}

/// What a running function knows about its call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Fires when the caller cancels (or goes away). The function's future is dropped then
    /// anyway; code that runs blocking work or holds resources can watch this to stop cleanly.
    pub cancel: CancellationToken,
    /// 1 on the first delivery; higher when an earlier worker died mid-call and this one
    /// runs it again (calls are delivered at least once).
    pub attempt: u32,
    /// The job id, for logs.
    pub job_id: String,
}

type ValueFn = dyn Fn(Value, Call) -> BoxFuture<'static, Result<Value, Failure>> + Send + Sync;
type StreamFn = dyn Fn(Value, Call) -> Result<BoxStream<'static, Result<Value, Failure>>, Failure> + Send + Sync;

enum Body {
    Value(Box<ValueFn>),
    Stream(Box<StreamFn>),
}

/// Why a call did not produce (all of) its output.
enum Failure {
    InvalidArguments(String),
    Failed(String),
}

impl From<Failure> for BackendError {
    fn from(f: Failure) -> BackendError {
        match f {
            Failure::InvalidArguments(m) => BackendError::new(ErrorCode::InvalidArguments, m),
            Failure::Failed(m) => BackendError::new(ErrorCode::FunctionFailed, m),
        }
    }
}

struct Function {
    spec: FunctionSpec,
    validator: jsonschema::Validator,
    body: Body,
}

/// A tool model: a name and the functions it hosts.
pub struct Toolbox {
    model: String,
    description: String,
    functions: BTreeMap<String, Function>,
}

impl Toolbox {
    pub fn new(model: impl Into<String>) -> Toolbox {
        Toolbox { model: model.into(), description: String::new(), functions: BTreeMap::new() }
    }

    /// What the model as a whole is for (its card's `owned_by` stays the operator's).
    pub fn describe(mut self, description: impl Into<String>) -> Toolbox {
        self.description = description.into();
        self
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Hosts `f`, which returns one value. `A` is the arguments object (a struct whose
    /// fields are the parameters; `#[serde(default)]` fields are optional).
    ///
    /// Panics on a name that is not a valid OpenAI tool name or is taken: both are
    /// programming errors, found at start-up.
    pub fn function<A, R, F, Fut>(self, name: &str, description: &str, f: F) -> Toolbox
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(A, Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ToolError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let body = Body::Value(Box::new(move |args: Value, call: Call| {
            let f = f.clone();
            Box::pin(async move {
                let args = parse::<A>(args)?;
                let value = f(args, call).await.map_err(|e| Failure::Failed(e.0))?;
                to_value(&value)
            })
        }));
        self.add::<A, R>(name, description, false, body)
    }

    /// Hosts `f`, which streams values (HepAI's generator functions): each item reaches the
    /// caller as it is produced; an `Err` item ends the call with that error.
    pub fn stream<A, R, F, S>(self, name: &str, description: &str, f: F) -> Toolbox
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(A, Call) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<R, ToolError>> + Send + 'static,
    {
        let body = Body::Stream(Box::new(move |args: Value, call: Call| {
            let args = parse::<A>(args)?;
            let items = f(args, call).map(|item| match item {
                Ok(value) => to_value(&value),
                Err(e) => Err(Failure::Failed(e.0)),
            });
            Ok(items.boxed())
        }));
        self.add::<A, R>(name, description, true, body)
    }

    fn add<A: JsonSchema, R: JsonSchema>(mut self, name: &str, description: &str, streams: bool, body: Body) -> Toolbox {
        assert!(FunctionSpec::valid_name(name), "{name:?} is not a valid tool name (^[a-zA-Z0-9_-]{{1,64}}$)");
        assert!(!self.functions.contains_key(name), "{} hosts {name:?} twice", self.model);
        let parameters = schema_of::<A>();
        let validator =
            jsonschema::validator_for(&parameters).unwrap_or_else(|e| panic!("the parameter schema of {name} does not compile: {e}"));
        let spec = FunctionSpec {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
            result: Some(schema_of::<R>()),
            streams,
        };
        self.functions.insert(name.to_owned(), Function { spec, validator, body });
        self
    }

    /// The functions, as the model card lists them.
    pub fn specs(&self) -> Vec<FunctionSpec> {
        self.functions.values().map(|f| f.spec.clone()).collect()
    }
}

/// A type's JSON Schema as the card lists it: no `$schema` dialect line.
fn schema_of<T: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("a schema is JSON");
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

fn parse<A: DeserializeOwned>(args: Value) -> Result<A, Failure> {
    serde_json::from_value(args).map_err(|e| Failure::InvalidArguments(format!("invalid arguments: {e}")))
}

fn to_value<R: Serialize>(value: &R) -> Result<Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::Failed(format!("the result is not JSON: {e}")))
}

/// The first schema violation of `arguments`, naming the argument.
fn check(validator: &jsonschema::Validator, arguments: &Value) -> Result<(), Failure> {
    validator.validate(arguments).map_err(|e| {
        let path = e.instance_path().to_string();
        let what = if path.is_empty() {
            "invalid arguments".to_owned()
        } else {
            format!("invalid argument `{}`", path.trim_start_matches('/').replace('/', "."))
        };
        Failure::InvalidArguments(format!("{what}: {e}"))
    })
}

#[async_trait]
impl Backend for Toolbox {
    fn name(&self) -> &'static str {
        "tools"
    }

    fn models(&self) -> Vec<ModelCard> {
        vec![ModelCard {
            v: switchyard_schemas::WIRE_VERSION,
            name: self.model.clone(),
            kind: ModelKind::Tool,
            context_length: None,
            backend: "tools".into(),
            owned_by: "switchyard".into(),
            permissions: Default::default(),
            limits: Default::default(),
            created: switchyard_schemas::now_ms() / 1000,
            last_seen_ms: 0,
            supports: Default::default(),
            functions: self.specs(),
            prompt_settings: Default::default(),
        }]
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let JobRequest::Tool { function, arguments } = &job.envelope.request else {
            return Err(BackendError::invalid(format!("{} is a tool model: it only runs function calls", self.model)));
        };
        let Some(f) = self.functions.get(function) else {
            return Err(BackendError::new(ErrorCode::UnknownFunction, format!("{} has no function {function:?}", self.model)));
        };
        check(&f.validator, arguments)?;
        let call = Call { cancel: cancel.clone(), attempt: job.attempt, job_id: job.envelope.id.clone() };
        let done = |reason| Ok(Finish { reason, usage: Usage::default() });
        match &f.body {
            Body::Value(run) => {
                tokio::select! {
                    value = run(arguments.clone(), call) => sink.tool_result(value?),
                    _ = cancel.cancelled() => return done(FinishReason::Cancelled),
                }
            }
            Body::Stream(open) => {
                let mut items = open(arguments.clone(), call)?;
                // A redelivered call runs again from the start; the chunks the client already
                // has are not sent twice.
                let mut delivered = job.resume.as_ref().map_or(0, |state| state.chunks);
                loop {
                    tokio::select! {
                        item = items.next() => match item {
                            Some(value) => {
                                let value = value?;
                                if delivered > 0 {
                                    delivered -= 1;
                                } else {
                                    sink.tool_chunk(value);
                                }
                            }
                            None => break,
                        },
                        _ = cancel.cancelled() => return done(FinishReason::Cancelled),
                    }
                }
            }
        }
        done(FinishReason::Stop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call() -> Call {
        Call { cancel: CancellationToken::new(), attempt: 1, job_id: "job".into() }
    }

    fn invalid(tools: &Toolbox, name: &str, args: Value) -> String {
        match check(&tools.functions[name].validator, &args) {
            Err(Failure::InvalidArguments(m)) => m,
            Err(Failure::Failed(m)) => panic!("not an argument error: {m}"),
            Ok(()) => panic!("{args} passed"),
        }
    }

    #[test]
    fn schemas_come_from_the_argument_and_result_types() {
        let tools = demo::toolbox("demo");
        let specs = tools.specs();
        let add = specs.iter().find(|s| s.name == "custom_method").unwrap();
        assert_eq!(add.parameters["type"], "object");
        assert_eq!(add.parameters["properties"]["a"]["type"], "integer");
        assert_eq!(add.parameters["properties"]["a"]["default"], 1);
        assert_eq!(add.parameters["properties"]["b"]["default"], 2);
        assert!(add.parameters.get("$schema").is_none());
        assert_eq!(add.result.as_ref().unwrap()["type"], "integer");
        assert!(!add.streams);
        assert!(specs.iter().find(|s| s.name == "get_stream").unwrap().streams);
        assert!(specs.iter().all(|s| FunctionSpec::valid_name(&s.name)));
    }

    #[test]
    fn invalid_arguments_name_the_argument() {
        let tools = demo::toolbox("demo");
        assert!(check(&tools.functions["custom_method"].validator, &json!({})).is_ok());
        assert!(check(&tools.functions["custom_method"].validator, &json!({"a": 5})).is_ok());
        let m = invalid(&tools, "custom_method", json!({"a": "x"}));
        assert!(m.starts_with("invalid argument `a`:"), "{m}");
        let m = invalid(&tools, "fail", json!({}));
        assert!(m.contains("message"), "a missing argument is named: {m}");
        let m = invalid(&tools, "custom_method", json!({"c": 1}));
        assert!(m.contains('c'), "an unknown argument is named: {m}");
        let m = invalid(&tools, "get_stream", json!({"count": -1}));
        assert!(m.starts_with("invalid argument `count`:"), "{m}");
    }

    #[tokio::test]
    async fn functions_return_and_stream_their_values() {
        let tools = demo::toolbox("demo");
        let Body::Value(add) = &tools.functions["custom_method"].body else { panic!("a plain function") };
        assert_eq!(add(json!({"a": 3, "b": 4}), call()).await.ok(), Some(json!(7)));
        assert_eq!(add(json!({}), call()).await.ok(), Some(json!(3)));
        let Body::Stream(open) = &tools.functions["get_stream"].body else { panic!("a stream") };
        let items: Vec<Value> = open(json!({"count": 4}), call()).ok().unwrap().map(|i| i.ok().unwrap()).collect().await;
        assert_eq!(items, vec![json!(0), json!(1), json!(2), json!(3)]);
        let Body::Value(fail) = &tools.functions["fail"].body else { panic!("a plain function") };
        match fail(json!({"message": "boom"}), call()).await {
            Err(Failure::Failed(m)) => assert_eq!(m, "boom"),
            _ => panic!("fail did not fail"),
        }
        let Body::Value(add) = &tools.functions["custom_method"].body else { unreachable!() };
        match add(json!({"a": i64::MAX, "b": 1}), call()).await {
            Err(Failure::Failed(m)) => assert!(m.contains("overflows"), "{m}"),
            _ => panic!("an overflow is the function's error"),
        }
    }

    #[test]
    #[should_panic(expected = "not a valid tool name")]
    fn names_must_be_valid_tool_names() {
        let _ = Toolbox::new("t").function("no spaces", "", |_: demo::NoArguments, _: Call| async { Ok::<_, ToolError>(()) });
    }
}
