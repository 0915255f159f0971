//! Logs and CloudWatch Embedded Metric Format (EMF).
//!
//! Log lines follow the function's Lambda logging settings
//! (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`) and carry what AWS
//! Powertools puts on every line: `service`, `function_name`, `cold_start`.
//! The Lambda runtime wraps every invocation in a span carrying `requestId`,
//! so lines include it; our own correlation ids (delivery id, outbox id, run
//! id) go in spans opened by the handlers.

mod log_format;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

pub use log_format::LogSettings;

/// The EMF namespace of every metric this system emits.
pub const NAMESPACE: &str = "KommoZoho";

/// Installs the log subscriber once, as the process environment configures it.
pub fn init() {
    let (settings, problem) = match crate::platform::config::Env::load_process(LogSettings::read) {
        Ok(s) => (s, None),
        Err(e) => (LogSettings::default(), Some(e)),
    };
    let installed =
        tracing::subscriber::set_global_default(settings.subscriber(std::io::stdout)).is_ok();
    if let (true, Some(e)) = (installed, problem) {
        tracing::warn!(error = %e, "logging settings ignored; using JSON at info");
    }
}

/// CloudWatch units used here.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// One EMF document: a few metrics under one namespace and `service` dimension,
/// printed to stdout as a single JSON line that CloudWatch turns into metrics.
#[derive(Debug)]
pub struct Metrics {
    namespace: String,
    service: String,
    values: BTreeMap<String, (f64, Unit)>,
    properties: Map<String, Value>,
}

impl Metrics {
    pub fn new(namespace: &str, service: &str) -> Self {
        Metrics {
            namespace: namespace.to_string(),
            service: service.to_string(),
            values: BTreeMap::new(),
            properties: Map::new(),
        }
    }

    /// Adds to a metric (counts accumulate).
    pub fn add(&mut self, name: &str, value: f64, unit: Unit) {
        let e = self.values.entry(name.to_string()).or_insert((0.0, unit));
        e.0 += value;
    }

    /// Sets a metric, replacing an earlier value (gauges, durations).
    pub fn set(&mut self, name: &str, value: f64, unit: Unit) {
        self.values.insert(name.to_string(), (value, unit));
    }

    /// A searchable property that is not a dimension (request id, run id).
    pub fn property(&mut self, key: &str, value: impl Into<Value>) {
        self.properties.insert(key.to_string(), value.into());
    }

    pub fn to_json(&self, timestamp_ms: i64) -> Value {
        let mut doc = self.properties.clone();
        let defs: Vec<Value> = self
            .values
            .iter()
            .map(|(name, (_, unit))| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["service"]],
                    "Metrics": defs,
                }]
            }),
        );
        doc.insert("service".into(), Value::String(self.service.clone()));
        for (name, (v, _)) in &self.values {
            doc.insert(name.clone(), json!(v));
        }
        Value::Object(doc)
    }

    /// Prints the document; nothing is printed when no metric was recorded.
    pub fn flush(&mut self) {
        if self.values.is_empty() {
            return;
        }
        println!("{}", self.to_json(chrono::Utc::now().timestamp_millis()));
        self.values.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_declares_every_metric() {
        let mut m = Metrics::new("KommoZoho", "outbox-drain");
        m.add("claimed", 3.0, Unit::Count);
        m.add("claimed", 2.0, Unit::Count);
        m.set("zoho_latency", 120.0, Unit::Milliseconds);
        m.property("requestId", "abc");
        let doc = m.to_json(1_700_000_000_000);
        assert_eq!(doc["claimed"], json!(5.0));
        assert_eq!(doc["service"], "outbox-drain");
        assert_eq!(doc["requestId"], "abc");
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "KommoZoho");
        let names: Vec<&str> = cw["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["claimed", "zoho_latency"]);
    }
}
