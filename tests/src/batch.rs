//! A small client for the Files and Batch APIs, as the tests drive them over HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Files and batches of one api (any replica), as one key's user.
pub struct BatchClient {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    base: String,
    key: Option<String>,
}

impl BatchClient {
    pub fn new(http: &reqwest::Client, base: impl Into<String>, key: Option<&str>) -> Self {
        BatchClient { http: http.clone(), base: base.into(), key: key.map(str::to_string) }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn json(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request to the api");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}")))
    }

    /// `POST /v1/files` with `purpose` and the file's bytes.
    pub async fn upload(&self, filename: &str, bytes: Vec<u8>, purpose: &str) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string());
        let form = reqwest::multipart::Form::new().text("purpose", purpose.to_string()).part("file", part);
        Self::json(self.request(reqwest::Method::POST, "/v1/files").multipart(form)).await
    }

    /// Uploads `bytes` as a batch input and returns the file id (panics unless 200).
    pub async fn upload_input(&self, bytes: Vec<u8>) -> String {
        let (status, file) = self.upload("input.jsonl", bytes, "batch").await;
        assert_eq!(status, 200, "{file}");
        file["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::json(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::json(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::json(self.request(reqwest::Method::DELETE, path)).await
    }

    /// The raw bytes of `GET <path>` and its status.
    pub async fn bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self.request(reqwest::Method::GET, path).send().await.expect("request to the api");
        (response.status().as_u16(), response.bytes().await.expect("response body").to_vec())
    }

    /// Creates a batch of `input_file_id` for `endpoint` with `window` (panics unless 200).
    pub async fn create(&self, input_file_id: &str, endpoint: &str, window: &str) -> Value {
        let (status, batch) =
            self.post("/v1/batches", &json!({ "input_file_id": input_file_id, "endpoint": endpoint, "completion_window": window })).await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["status"], "validating", "{batch}");
        batch
    }

    pub async fn batch(&self, id: &str) -> Value {
        let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls a batch until it reaches a terminal status, or panics after `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |batch| {
            ["completed", "failed", "expired", "cancelled"].contains(&batch["status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Polls a batch until `done` holds for it, or panics after `timeout`.
    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let batch = self.batch(id).await;
            if done(&batch) {
                return batch;
            }
            assert!(Instant::now() < deadline, "batch still {} after {timeout:?}: {batch}", batch["status"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lines of a file, parsed.
    pub async fn lines(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else { return Vec::new() };
        let (status, bytes) = self.bytes(&format!("/v1/files/{id}/content")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        String::from_utf8(bytes).unwrap().lines().map(|line| serde_json::from_str(line).expect("output lines are JSON")).collect()
    }

    /// The output and error file lines of a finished batch.
    pub async fn results(&self, batch: &Value) -> (Vec<Value>, Vec<Value>) {
        (self.lines(&batch["output_file_id"]).await, self.lines(&batch["error_file_id"]).await)
    }
}

/// A batch input of `n` chat requests to `model` (`custom_id` `req-<i>`, content `line <i> …`).
pub fn chat_input(n: usize, model: &str, extra: &Value) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let mut body = json!({ "model": model, "messages": [{ "role": "user", "content": format!("line {i} says hello") }] });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let line = json!({ "custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.into_bytes()
}
