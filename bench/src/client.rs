//! A lean HTTP/1.1 client: one keep-alive connection per simulated client (hyper's
//! connection-level API, no pool), TCP_NODELAY, request bodies built once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Where the api is, checked to be this machine.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    /// `Authorization: Bearer …`, when the api wants a key.
    pub authorization: Option<HeaderValue>,
}

impl Target {
    pub fn parse(url: &str, api_key: Option<&str>) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("http://").context("--url must start with http:// (no TLS)")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority.rsplit_once(':').context("--url needs a port, e.g. http://127.0.0.1:8080")?;
        let port: u16 = port.parse().context("--url port")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = match host {
            "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
            other => other.parse().with_context(|| format!("--url host {other:?}: give an IP address or localhost"))?,
        };
        if !ip.is_loopback() {
            bail!("the benchmark only sends traffic to this machine (127.0.0.1, ::1, localhost), not {ip}");
        }
        let authorization = match api_key {
            Some(key) => Some(HeaderValue::from_str(&format!("Bearer {key}")).context("the API key is not a valid header value")?),
            None => None,
        };
        Ok(Target { addr: SocketAddr::new(ip, port), host_header: authority.to_string(), authorization })
    }
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
}

impl Conn {
    pub async fn open(target: &Target) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(target.addr).await.with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, target: target.clone() })
    }

    /// Sends one request (a JSON body, if any); the response's body is still to be read.
    pub async fn send(&mut self, method: Method, path: &str, body: &Bytes) -> anyhow::Result<Response<Incoming>> {
        let content_type = (!body.is_empty()).then_some("application/json");
        self.send_as(method, path, content_type, body).await
    }

    /// Sends one request whose body is of `content_type`; the response's body is still to be read.
    pub async fn send_as(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &Bytes,
    ) -> anyhow::Result<Response<Incoming>> {
        self.send_with(method, path, content_type, &[], body).await
    }

    /// [`send_as`](Conn::send_as) with more headers (MCP's `Accept`, `Mcp-Session-Id`, …).
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&HeaderName, &HeaderValue)],
        body: &Bytes,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut builder = Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.target.host_header);
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(authorization) = &self.target.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, authorization.clone());
        }
        let request = builder.body(Full::new(body.clone()))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(request).await?)
    }

    /// One request, whole response.
    pub async fn call(&mut self, method: Method, path: &str, body: &Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// Server-sent events parsed incrementally: bytes go in as they arrive, whole events' `data`
/// come out, whatever the chunk boundaries.
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Where the search for the next blank line resumes (bytes before it hold none).
    scanned: usize,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The `data` of the next complete event (several `data:` lines joined by `\n`), if one
    /// has arrived. Events without data (comments, keep-alives) are skipped.
    pub fn next_data(&mut self) -> Option<Bytes> {
        loop {
            let Some((end, terminator)) = find_blank_line(&self.buf, self.scanned) else {
                // A terminator may straddle the end: look at the last two bytes again next time.
                self.scanned = self.buf.len().saturating_sub(2);
                return None;
            };
            let event = self.buf.split_to(end + terminator).freeze();
            self.scanned = 0;
            let event = event.slice(..end);
            let mut data: Option<BytesMut> = None;
            for line in event.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(value) = line.strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    match &mut data {
                        Some(data) => {
                            data.extend_from_slice(b"\n");
                            data.extend_from_slice(value);
                        }
                        None => data = Some(BytesMut::from(value)),
                    }
                }
            }
            if let Some(data) = data {
                return Some(data.freeze());
            }
        }
    }
}

/// Where the first blank line at or after `from` starts (the `\n` ending the event's last
/// line), and the length of the `\n\n` or `\n\r\n` found there.
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(at) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let j = i + at;
        match (buf.get(j + 1), buf.get(j + 2)) {
            (Some(b'\n'), _) => return Some((j, 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((j, 3)),
            _ => i = j + 1,
        }
    }
    None
}

#[derive(serde::Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(serde::Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// What one streamed chat completion delivered.
pub struct StreamResult {
    /// From sending the request to the first chunk with non-empty `choices[0].delta.content`.
    pub first_token: Duration,
    /// From sending the request to `data: [DONE]`.
    pub done: Duration,
    pub content: String,
    /// SSE events with data, `[DONE]` included.
    pub events: u64,
    /// Body bytes received (SSE framing included).
    pub body_bytes: u64,
    /// Body frames the client read (TCP reads that carried body data, roughly).
    pub frames: u64,
}

/// Sends a streaming chat request and reads it to `data: [DONE]`, timing the first token.
pub async fn stream_chat(conn: &mut Conn, body: &Bytes) -> anyhow::Result<StreamResult> {
    let start = Instant::now();
    let response = conn.send(Method::POST, "/v1/chat/completions", body).await?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let text = response.into_body().collect().await?.to_bytes();
        bail!("stream request answered {status}: {}", String::from_utf8_lossy(&text[..text.len().min(500)]));
    }
    let mut body = response.into_body();
    let mut parser = SseParser::default();
    let mut result =
        StreamResult { first_token: Duration::ZERO, done: Duration::ZERO, content: String::new(), events: 0, body_bytes: 0, frames: 0 };
    let mut first = None;
    let mut done = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else { continue };
        result.frames += 1;
        result.body_bytes += data.len() as u64;
        parser.push(&data);
        while let Some(event) = parser.next_data() {
            result.events += 1;
            if done.is_some() {
                bail!("data after [DONE]: {}", String::from_utf8_lossy(&event));
            }
            if &event[..] == b"[DONE]" {
                done = Some(start.elapsed());
                continue;
            }
            let chunk: Chunk = serde_json::from_slice(&event)
                .with_context(|| format!("undecodable SSE chunk: {}", String::from_utf8_lossy(&event[..event.len().min(300)])))?;
            if let Some(error) = chunk.error {
                bail!("the stream carried an error: {error}");
            }
            if let Some(content) = chunk.choices.into_iter().next().and_then(|c| c.delta).and_then(|d| d.content)
                && !content.is_empty()
            {
                if first.is_none() {
                    first = Some(start.elapsed());
                }
                result.content.push_str(&content);
            }
        }
    }
    result.done = done.context("the stream ended without data: [DONE]")?;
    result.first_token = first.unwrap_or(result.done);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let text = b"data: {\"a\":1}\n\ndata: one\ndata: two\n\n: comment\n\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut parser = SseParser::default();
            let mut out = Vec::new();
            for part in [&text[..split], &text[split..]] {
                parser.push(part);
                while let Some(data) = parser.next_data() {
                    out.push(String::from_utf8(data.to_vec()).unwrap());
                }
            }
            assert_eq!(out, ["{\"a\":1}", "one\ntwo", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let text = b"data: x\r\n\r\ndata: y\n\n";
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for b in text {
            parser.push(&[*b]);
            while let Some(data) = parser.next_data() {
                out.push(data);
            }
        }
        assert_eq!(out, ["x", "y"]);
    }
}
