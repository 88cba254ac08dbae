//! A scrape of a Switchyard part's `/metrics`, parsed as Prometheus parses it
//! (`prometheus-parse`), with look-ups by metric name and labels.

use prometheus_parse::{Sample, Scrape, Value};

pub struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    /// `GET url` (a `/metrics` endpoint), parsed; panics unless it answers 200 with the text format.
    pub async fn scrape(http: &reqwest::Client, url: &str) -> Metrics {
        let response = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = response.text().await.expect("reading /metrics");
        assert_eq!(status, 200, "GET {url}: {text}");
        assert!(content_type.starts_with("text/plain"), "GET {url}: content-type {content_type:?}");
        Metrics::parse(text)
    }

    pub fn parse(text: String) -> Metrics {
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("the exposition text parses");
        Metrics { scrape, text }
    }

    /// The exposition text as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn samples<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
    }

    /// The sum of the counter, gauge or untyped samples of `name` whose labels include `labels`
    /// (`None` when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in self.samples(name, labels) {
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{name} is a histogram or summary; use count()"),
            };
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    /// Like [`Self::value`], 0 when absent (a counter nothing incremented yet).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// How many observations the histogram `name` holds over the series matching `labels`.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .map(|sample| match &sample.value {
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    /// How many observations of the histogram `name` (series matching `labels`) were ≤ `bound`.
    pub fn bucket(&self, name: &str, labels: &[(&str, &str)], bound: f64) -> f64 {
        self.samples(name, labels)
            .map(|sample| match &sample.value {
                Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than == bound).map_or(0.0, |b| b.count),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    /// Whether the histogram `name` has a `# TYPE … histogram` line and buckets.
    pub fn is_histogram(&self, name: &str) -> bool {
        self.text.contains(&format!("# TYPE {name} histogram")) && self.scrape.samples.iter().any(|s| s.metric == name)
    }
}
