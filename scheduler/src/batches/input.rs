//! Reading a batch's input file: one request per line, checked exactly as the api checks an
//! interactive request, and turned into the jobs that run it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use switchyard_openai::endpoint::Endpoint;
use switchyard_openai::{Invalid, Limits, Plan};
use switchyard_schemas::ModelCard;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::object::BatchError;
use super::store::Owner;

/// One line of an input file, as OpenAI's batch format has it.
#[derive(Deserialize)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: Box<RawValue>,
}

/// Why a line cannot run: an entry of the batch's `errors` when validating, a 400 (or 404 for
/// a model) output line when it turns up while running.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl Problem {
    fn new(code: &'static str, param: Option<&str>, message: impl Into<String>) -> Self {
        Problem { code, message: message.into(), param: param.map(str::to_string) }
    }

    /// A request body refused by validation; `param` is put under `body.`.
    fn in_body(invalid: Invalid) -> Self {
        let invalid = invalid.in_body();
        Problem { code: invalid.code.unwrap_or("invalid_request"), message: invalid.message, param: invalid.param }
    }

    pub fn at_line(self, line: u64) -> BatchError {
        BatchError { code: self.code.into(), message: self.message, param: self.param, line: Some(line) }
    }

    /// The HTTP status the synchronous endpoint would have answered with.
    pub fn status(&self) -> u16 {
        if self.code == "model_not_found" { 404 } else { 400 }
    }

    pub fn body(&self) -> switchyard_openai::response::ErrorResponse {
        switchyard_openai::response::ErrorResponse::new(self.message.clone(), "invalid_request_error", self.param.clone(), Some(self.code))
    }
}

/// A line ready to run.
pub struct Checked {
    pub custom_id: String,
    pub model: String,
    pub plan: Plan,
}

/// What a line is checked against: the batch's endpoint and owner, the api's limits, and the
/// models known when checking.
pub struct Rules<'a> {
    pub endpoint: Endpoint,
    pub owner: &'a Owner,
    pub limits: &'a Limits,
    pub models: &'a HashMap<String, ModelCard>,
}

impl Rules<'_> {
    /// Checks one line and plans its jobs.
    pub fn check(&self, text: &str) -> Result<Checked, Problem> {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Err(Problem::new("invalid_json_line", None, format!("This line is not valid JSON: {e}")));
        }
        let line: InputLine = switchyard_openai::parse(text.as_bytes()).map_err(|invalid| Problem {
            code: "invalid_request",
            message: invalid.message,
            param: invalid.param,
        })?;
        if line.custom_id.is_empty() {
            return Err(Problem::new("invalid_request", Some("custom_id"), "custom_id must not be empty."));
        }
        if line.method != "POST" {
            return Err(Problem::new("invalid_method", Some("method"), format!("The method must be POST, not {}.", line.method)));
        }
        if line.url != self.endpoint.as_str() {
            return Err(Problem::new(
                "mismatched_endpoint",
                Some("url"),
                format!("The url {} does not match the batch's endpoint {}.", line.url, self.endpoint.as_str()),
            ));
        }
        let request = self.endpoint.read(line.body.get().as_bytes()).map_err(Problem::in_body)?;
        let card = self.card(request.model())?;
        let model = request.model().to_string();
        let plan = request.plan(self.limits, card).map_err(Problem::in_body)?;
        Ok(Checked { custom_id: line.custom_id, model, plan })
    }

    /// The model a line names, if the batch's owner may use it (otherwise it does not exist,
    /// as for interactive requests).
    fn card(&self, name: &str) -> Result<&ModelCard, Problem> {
        self.models.get(name).filter(|card| self.owner.may_use(card)).ok_or_else(|| {
            Problem::new(
                "model_not_found",
                Some("body.model"),
                format!("The model `{name}` does not exist or you do not have access to it."),
            )
        })
    }
}

/// The custom id of a line that is already known to be valid JSON (for lines that never ran).
pub fn custom_id_of(text: &str) -> String {
    #[derive(Deserialize)]
    struct Id {
        #[serde(default)]
        custom_id: String,
    }
    serde_json::from_str::<Id>(text).map(|id| id.custom_id).unwrap_or_default()
}

/// The input's requests, numbered from 0: blank lines are skipped (and do not count), as the
/// file store counts them.
pub struct Lines<R> {
    lines: tokio::io::Lines<BufReader<R>>,
    next: u64,
    /// 1-based line of the file the last request came from.
    pub file_line: u64,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Self {
        Lines { lines: BufReader::with_capacity(256 * 1024, reader).lines(), next: 0, file_line: 0 }
    }

    /// The next request and its index, `None` at the end.
    pub async fn next(&mut self) -> std::io::Result<Option<(u64, String)>> {
        while let Some(line) = self.lines.next_line().await? {
            self.file_line += 1;
            // ASCII whitespace only, as the file store counts lines.
            if line.trim_ascii().is_empty() {
                continue;
            }
            let index = self.next;
            self.next += 1;
            return Ok(Some((index, line)));
        }
        Ok(None)
    }
}
