//! A minimal MCP client (Streamable HTTP, the 2025-11-25 revision, which still has the
//! session handshake) on the bench's own [`Conn`], so the figures measure the server, not an
//! SDK: per connection, `initialize` and `notifications/initialized` once; then JSON-RPC
//! requests one at a time with the session's headers, each answer read — SSE `data:` events
//! or one JSON body, whichever the server sends — until the response with the request's id
//! and on to the end of the body (the connection is then free for the next request).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::client::{Conn, SseParser, Target};

/// Where the api serves MCP.
pub const PATH: &str = "/mcp";
/// The revision the bench asks for in `initialize`; the server answers the one it will speak,
/// and every later request names that one in `MCP-Protocol-Version`.
const PROTOCOL_VERSION: &str = "2025-11-25";
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// One MCP session on one keep-alive connection.
pub struct Session {
    conn: Conn,
    /// `Accept`, `Mcp-Session-Id`, `MCP-Protocol-Version`: sent with every request.
    headers: Vec<(HeaderName, HeaderValue)>,
    next_id: u64,
    /// How the server answered `initialize`: `text/event-stream` (else `application/json`).
    pub sse: bool,
    /// The revision the server chose.
    pub protocol_version: String,
}

impl Session {
    /// Connects and does the handshake: `initialize`, then `notifications/initialized` with the
    /// session id the server answered in `Mcp-Session-Id`.
    pub async fn open(target: &Target) -> anyhow::Result<Session> {
        let mut conn = Conn::open(target).await?;
        let accept = (ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        let headers = [(&accept.0, &accept.1)];
        let initialize = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"switchyard-bench","version":"0"}}}}}}"#
        );
        let response = conn.send_with(Method::POST, PATH, Some("application/json"), &headers, &Bytes::from(initialize)).await?;
        let session_id = response.headers().get("mcp-session-id").cloned();
        let (status, sse, message) = answer(response, 0).await.context("MCP initialize")?;
        if status != StatusCode::OK {
            bail!("MCP initialize answered {status}: {}", String::from_utf8_lossy(&message[..message.len().min(500)]));
        }
        let session_id = session_id.context("MCP initialize answered without an Mcp-Session-Id header (a stateless server?)")?;
        let reply: serde_json::Value = serde_json::from_slice(&message).context("MCP initialize's response is not JSON")?;
        let version = reply["result"]["protocolVersion"]
            .as_str()
            .with_context(|| format!("MCP initialize answered no result.protocolVersion: {reply}"))?
            .to_owned();
        if version != PROTOCOL_VERSION {
            eprintln!("MCP: asked for revision {PROTOCOL_VERSION}, the server speaks {version}");
        }
        let headers = vec![
            accept,
            (HeaderName::from_static("mcp-session-id"), session_id),
            (HeaderName::from_static("mcp-protocol-version"), HeaderValue::from_str(&version).context("the server's protocolVersion")?),
        ];
        let mut session = Session { conn, headers, next_id: 1, sse, protocol_version: version };
        let response = session.post(Method::POST, &Bytes::from_static(INITIALIZED.as_bytes())).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::ACCEPTED {
            bail!("MCP notifications/initialized answered {status} (not 202): {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        }
        Ok(session)
    }

    /// One JSON-RPC request `method` with `params` (JSON text) under the next id: the answer's
    /// status and, when 200, the response with that id (else the body as sent).
    pub async fn request(&mut self, method: &str, params: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let id = self.next_id;
        self.next_id += 1;
        let body = Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#));
        let response = self.post(Method::POST, &body).await?;
        let (status, _, message) = answer(response, id).await.with_context(|| format!("MCP {method}"))?;
        Ok((status, message))
    }

    /// The names `tools/list` gives (one page; the api sends them all at once).
    pub async fn tool_names(&mut self) -> anyhow::Result<Vec<String>> {
        let (status, message) = self.request("tools/list", "{}").await?;
        if status != StatusCode::OK {
            bail!("MCP tools/list answered {status}: {}", String::from_utf8_lossy(&message[..message.len().min(500)]));
        }
        let reply: serde_json::Value = serde_json::from_slice(&message)?;
        let tools = reply["result"]["tools"].as_array().with_context(|| format!("MCP tools/list answered no result.tools: {reply}"))?;
        Ok(tools.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect())
    }

    /// Ends the session (`DELETE /mcp`), so the server drops its state now rather than after
    /// its idle timeout. Best effort: the bench is done with the session either way.
    pub async fn close(mut self) {
        if let Ok(response) = self.post(Method::DELETE, &Bytes::new()).await {
            let _ = response.into_body().collect().await;
        }
    }

    async fn post(&mut self, method: Method, body: &Bytes) -> anyhow::Result<Response<Incoming>> {
        let headers: Vec<(&HeaderName, &HeaderValue)> = self.headers.iter().map(|(n, v)| (n, v)).collect();
        let content_type = (!body.is_empty()).then_some("application/json");
        self.conn.send_with(method, PATH, content_type, &headers, body).await
    }
}

/// Just enough of a JSON-RPC message to tell the response to a request from the rest.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<IgnoredAny>,
}

/// Reads an answer to its end: its status, whether it was SSE, and (when 200) the JSON-RPC
/// response to request `id` — the one `data:` event that is it, or the JSON body.
async fn answer(response: Response<Incoming>, id: u64) -> anyhow::Result<(StatusCode, bool, Bytes)> {
    let status = response.status();
    let sse = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = response.into_body();
    if status != StatusCode::OK || !sse {
        let bytes = body.collect().await?.to_bytes();
        if status == StatusCode::OK && !is_response_to(&bytes, id) {
            bail!("the JSON answer is not the response to request {id}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(500)]));
        }
        return Ok((status, sse, bytes));
    }
    let mut parser = SseParser::default();
    let mut found = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        parser.push(&data);
        while let Some(event) = parser.next_data() {
            // Priming events (an id and a retry hint, empty data) and notifications pass by.
            if found.is_none() && is_response_to(&event, id) {
                found = Some(event);
            }
        }
    }
    let found = found.with_context(|| format!("the event stream ended without the response to request {id}"))?;
    Ok((status, sse, found))
}

fn is_response_to(message: &[u8], id: u64) -> bool {
    !message.is_empty()
        && serde_json::from_slice::<Head>(message)
            .is_ok_and(|head| head.method.is_none() && head.id.as_ref().and_then(|v| v.as_u64()) == Some(id))
}
