//! What the registry holds: model cards and the worker records that announce them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::Versioned;
use crate::job::JobKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Chat,
    Embedding,
    Tool,
}

impl ModelKind {
    /// The job kind (and so the consumer) that serves this model.
    pub fn job_kind(self) -> JobKind {
        match self {
            ModelKind::Chat => JobKind::Chat,
            ModelKind::Embedding => JobKind::Embedding,
            ModelKind::Tool => JobKind::Tool,
        }
    }
}

/// Who may use a model, in HepAI's form: `groups: default; users: a, b; owner: c`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Permissions {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
}

impl Permissions {
    /// Whether a caller may use a model with these permissions: its owner, a listed user, or a
    /// member of a listed group. Empty permissions mean the model is open to every caller.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        let open = self.groups.is_empty() && self.users.is_empty() && self.owner.is_none();
        open || self.owner.as_deref() == Some(user)
            || self.users.iter().any(|u| u == user)
            || self.groups.iter().any(|g| groups.contains(g))
    }
}

impl std::str::FromStr for Permissions {
    type Err = String;

    /// Parses `groups: default; users: a, b; owner: c` (any part may be left out).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut permissions = Permissions::default();
        for clause in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (key, values) = clause.split_once(':').ok_or_else(|| format!("expected `key: values` in {clause:?}"))?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
            match key.trim() {
                "groups" | "group" => permissions.groups.extend(values),
                "users" | "user" => permissions.users.extend(values),
                "owner" => match values.as_slice() {
                    [owner] => permissions.owner = Some(owner.clone()),
                    _ => return Err(format!("`owner` takes exactly one name, got {values:?}")),
                },
                other => return Err(format!("unknown permission key {other:?} (use groups, users, owner)")),
            }
        }
        Ok(permissions)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCard {
    pub v: u16,
    /// The name clients use in `model`.
    pub name: String,
    pub kind: ModelKind,
    /// Maximum prompt + completion tokens (input tokens for encoders); `None` if unbounded.
    #[serde(default)]
    pub context_length: Option<u32>,
    /// Which backend serves it (`torch`, `echo`, …).
    pub backend: String,
    #[serde(default)]
    pub owned_by: String,
    #[serde(default)]
    pub permissions: Permissions,
    /// Per-key limits for this model, on top of each key's own.
    #[serde(default)]
    pub limits: RateLimits,
    /// Unix seconds when the model was first announced.
    pub created: u64,
    /// Unix ms when a live worker last announced it (maintained by the registry).
    #[serde(default)]
    pub last_seen_ms: u64,
    /// What a chat model can do beyond plain text; the api refuses (400) a request that needs
    /// more than its model's card says.
    #[serde(default)]
    pub supports: Supports,
    /// The functions a `kind: tool` model hosts (empty for other kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionSpec>,
    /// What the operator set for this model's prompts (`switchyard worker torch
    /// --system-prompt/--chat-template/--generation-defaults`); shown in `GET /v1/models/{model}`.
    #[serde(default, skip_serializing_if = "PromptSettings::is_empty")]
    pub prompt_settings: PromptSettings,
}

/// A local model's prompt settings, as its operator gave them to the worker. A request's own
/// system message and parameters win over them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromptSettings {
    /// The system message of a chat request that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The chat template used in place of the model folder's (its source text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Decoding defaults over the folder's `generation_config.json`.
    #[serde(default, skip_serializing_if = "GenerationDefaults::is_empty")]
    pub generation_defaults: GenerationDefaults,
}

impl PromptSettings {
    pub fn is_empty(&self) -> bool {
        self.system_prompt.is_none() && self.chat_template.is_none() && self.generation_defaults.is_empty()
    }
}

/// Decoding defaults an operator sets for a model; each applies to a request that leaves the
/// parameter out (a penalty of 0 counts as left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
}

impl GenerationDefaults {
    pub fn is_empty(&self) -> bool {
        self == &GenerationDefaults::default()
    }
}

/// One hosted function, as a tool model's card lists it.
/// A chat model's optional abilities, as its worker announces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Supports {
    /// It reads `tools` and its calls come back as `tool_calls` (a tool-capable chat template
    /// whose call format the worker parses, or a backend that passes tools on).
    #[serde(default)]
    pub tools: bool,
    /// It honours `response_format` `json_object` and `json_schema`.
    #[serde(default)]
    pub json_output: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionSpec {
    /// Valid as an OpenAI tool name: `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    /// JSON Schema of the result (of each chunk, for a streaming function), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// It streams: its output is [`crate::EventBody::ToolChunk`]s, not one result.
    #[serde(default)]
    pub streams: bool,
}

impl FunctionSpec {
    /// Whether `name` is valid as an OpenAI tool name (and so as a hosted function's).
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

impl Versioned for ModelCard {
    fn version(&self) -> u16 {
        self.v
    }
}

/// Request and token rates; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RateLimits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    pub tpm: Option<u32>,
}

/// An API key as stored (under the SHA-256 of the secret; the secret itself is never kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyRecord {
    pub v: u16,
    /// Public identifier (`key_…`), safe to log and to name in `keys revoke`.
    pub id: String,
    pub user: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub limits: RateLimits,
    /// Most requests this key may have running at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    /// First characters of the secret, to help people tell their keys apart.
    pub hint: String,
    /// An operator's key: it may read the api's status page (`GET /status`, `/status/data`).
    /// Absent in records written before the flag existed, which are not admin keys.
    #[serde(default)]
    pub admin: bool,
}

impl Versioned for ApiKeyRecord {
    fn version(&self) -> u16 {
        self.v
    }
}

/// One live worker, refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRecord {
    pub v: u16,
    pub worker_id: String,
    pub backend: String,
    pub host: String,
    pub pid: u32,
    pub slots: u32,
    pub busy: u32,
    pub models: Vec<ModelCard>,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
}

impl Versioned for WorkerRecord {
    fn version(&self) -> u16 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::Permissions;

    #[test]
    fn permissions_parse_in_hepai_form() {
        let p: Permissions = "groups: default; users: a, b; owner: c".parse().unwrap();
        assert_eq!(p.groups, vec!["default"]);
        assert_eq!(p.users, vec!["a", "b"]);
        assert_eq!(p.owner.as_deref(), Some("c"));
        assert_eq!("".parse::<Permissions>().unwrap(), Permissions::default());
        assert!("owner: a, b".parse::<Permissions>().is_err());
        assert!("colour: blue".parse::<Permissions>().is_err());
        assert!("groups default".parse::<Permissions>().is_err());
    }

    #[test]
    fn permission_matrix() {
        let p: Permissions = "groups: research; users: bob; owner: carol".parse().unwrap();
        let none: Vec<String> = vec![];
        assert!(p.allows("carol", &none), "owner");
        assert!(p.allows("bob", &none), "listed user");
        assert!(p.allows("dave", &["research".to_string()]), "group member");
        assert!(!p.allows("eve", &["default".to_string()]), "stranger");
        assert!(Permissions::default().allows("anyone", &none), "open model");
    }
}
