//! The shape of a log line, as Lambda's logging settings and AWS Powertools
//! users expect it: JSON or text by `AWS_LAMBDA_LOG_FORMAT`, a level by
//! `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`), and `service`, `function_name`
//! and `cold_start` on every line. The first invocation also emits the
//! `ColdStart` EMF metric, once per container.

use std::{
    fmt,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use serde_json::{Map, Value};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id},
    Event, Subscriber,
};
use tracing_subscriber::{
    filter::{filter_fn, EnvFilter},
    fmt::{
        format::{JsonFields, Writer},
        FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter,
    },
    layer::{Context, Layer, SubscriberExt},
    registry::{LookupSpan, Registry},
};

use super::{Metrics, Unit, NAMESPACE};
use crate::platform::config::Env;

/// The span `lambda_runtime` opens around each invocation.
const INVOKE_SPAN: &str = "Lambda runtime invoke";

/// How log lines look and which ones are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub json: bool,
    /// An `EnvFilter` directive.
    pub filter: String,
    pub service: String,
    pub function_name: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            json: true,
            filter: "info".into(),
            service: "kommo-zoho".into(),
            function_name: String::new(),
        }
    }
}

impl LogSettings {
    /// Lambda's application log level wins over `RUST_LOG`, as it does for
    /// the managed runtimes; JSON unless Lambda asks for text.
    pub fn read(env: &mut Env<'_>) -> LogSettings {
        let d = LogSettings::default();
        let filter = match env.text("AWS_LAMBDA_LOG_LEVEL") {
            Some(level) => lambda_level(env, &level),
            None => env.text("RUST_LOG").unwrap_or(d.filter),
        };
        LogSettings {
            json: env.choice("AWS_LAMBDA_LOG_FORMAT", &[("JSON", true), ("Text", false)]),
            filter,
            service: env.text("POWERTOOLS_SERVICE_NAME").unwrap_or(d.service),
            function_name: env.text("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        }
    }

    /// The subscriber these settings describe, writing lines (and the
    /// `ColdStart` metric) to `writer`.
    pub fn subscriber<W>(&self, writer: W) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
    {
        let invocations = Arc::new(AtomicU64::new(0));
        let format = LineFormat {
            settings: self.clone(),
            invocations: invocations.clone(),
        };
        let lines: Box<dyn Layer<Registry> + Send + Sync> = if self.json {
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(format)
                .with_writer(writer.clone())
                .boxed()
        } else {
            // CloudWatch shows escape codes as text.
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .event_format(format)
                .with_writer(writer.clone())
                .boxed()
        };
        let filter = EnvFilter::try_new(&self.filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let counter = InvocationCounter {
            invocations,
            metric: cold_start_metric(self),
            writer,
        };
        Box::new(
            Registry::default()
                .with(lines.with_filter(filter))
                .with(counter.with_filter(filter_fn(|m| m.name() == INVOKE_SPAN))),
        )
    }
}

/// The filter for one of Lambda's log levels (FATAL has no `tracing` twin).
fn lambda_level(env: &mut Env<'_>, level: &str) -> String {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => {
            env.problem("AWS_LAMBDA_LOG_LEVEL must be TRACE, DEBUG, INFO, WARN, ERROR or FATAL");
            "info"
        }
    }
    .to_string()
}

/// The `ColdStart` EMF document, with the same dimension as every other metric.
fn cold_start_metric(settings: &LogSettings) -> String {
    let mut m = Metrics::new(NAMESPACE, &settings.service);
    m.add("ColdStart", 1.0, Unit::Count);
    m.property("function_name", settings.function_name.clone());
    m.to_json(chrono::Utc::now().timestamp_millis()).to_string()
}

/// Counts invocation spans; the first one is the container's cold start.
struct InvocationCounter<W> {
    invocations: Arc<AtomicU64>,
    metric: String,
    writer: W,
}

impl<S, W> Layer<S> for InvocationCounter<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == INVOKE_SPAN
            && self.invocations.fetch_add(1, Ordering::SeqCst) == 0
        {
            // A lost metric line must not fail the invocation.
            let _ = writeln!(self.writer.make_writer(), "{}", self.metric);
        }
    }
}

/// Writes one line per event: Lambda's fields, the spans' fields, the event's.
struct LineFormat {
    settings: LogSettings,
    invocations: Arc<AtomicU64>,
}

impl LineFormat {
    /// True during init and the first invocation, false from the second on.
    fn cold(&self) -> bool {
        self.invocations.load(Ordering::SeqCst) <= 1
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    spans.push(f.fields.clone());
                }
            }
        }
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let level = event.metadata().level().as_str();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if self.settings.json {
            let mut line = Map::new();
            for span in spans {
                // Span fields were formatted by `JsonFields`: a JSON object each.
                if let Ok(Value::Object(f)) = serde_json::from_str::<Value>(&span) {
                    line.extend(f);
                }
            }
            line.extend(fields);
            line.insert("level".into(), level.into());
            line.insert("timestamp".into(), timestamp.into());
            line.insert("service".into(), self.settings.service.clone().into());
            line.insert(
                "function_name".into(),
                self.settings.function_name.clone().into(),
            );
            line.insert("cold_start".into(), self.cold().into());
            writeln!(writer, "{}", Value::Object(line))
        } else {
            let message = fields.remove("message").unwrap_or(Value::Null);
            write!(
                writer,
                "{timestamp} {level} service={} function_name={} cold_start={}",
                self.settings.service,
                self.settings.function_name,
                self.cold()
            )?;
            for span in spans.iter().filter(|s| !s.is_empty()) {
                write!(writer, " {span}")?;
            }
            match message {
                Value::String(m) => write!(writer, " {m}")?,
                Value::Null => {}
                other => write!(writer, " {other}")?,
            }
            for (k, v) in fields {
                write!(writer, " {k}={v}")?;
            }
            writeln!(writer)
        }
    }
}

/// An event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Every line written, for the assertions.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_string).collect()
        }
    }

    fn settings(vars: &[(&str, &str)]) -> LogSettings {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Env::load(lookup, LogSettings::read).expect("valid settings")
    }

    /// Two invocations as `lambda_runtime` wraps them, each logging once.
    fn two_invocations(settings: &LogSettings) -> Vec<String> {
        let out = Captured::default();
        tracing::subscriber::with_default(settings.subscriber(out.clone()), || {
            tracing::info!("initialised");
            for id in ["req-1", "req-2"] {
                let span = tracing::info_span!("Lambda runtime invoke", requestId = id);
                let _entered = span.enter();
                tracing::info!(delivery = 7, "handled");
                tracing::debug!("not at info");
            }
        });
        out.lines()
    }

    #[test]
    fn json_lines_carry_service_function_and_cold_start() {
        let s = settings(&[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_FUNCTION_NAME", "stack-webhook"),
            ("POWERTOOLS_SERVICE_NAME", "webhook"),
        ]);
        let lines = two_invocations(&s);
        let docs: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        let logs: Vec<&Value> = docs.iter().filter(|d| d.get("_aws").is_none()).collect();
        assert_eq!(logs.len(), 3, "{lines:?}");
        for d in &logs {
            assert_eq!(d["service"], "webhook");
            assert_eq!(d["function_name"], "stack-webhook");
            assert_eq!(d["level"], "INFO");
            assert!(d["timestamp"].is_string());
        }
        let cold: Vec<&Value> = logs.iter().map(|d| &d["cold_start"]).collect();
        assert_eq!(
            cold,
            [&Value::Bool(true), &Value::Bool(true), &Value::Bool(false)]
        );
        assert_eq!(logs[1]["requestId"], "req-1");
        assert_eq!(logs[1]["delivery"], 7);
        assert_eq!(logs[1]["message"], "handled");
        assert_eq!(logs[2]["requestId"], "req-2");
    }

    #[test]
    fn cold_start_metric_is_emitted_once() {
        let lines = two_invocations(&settings(&[("AWS_LAMBDA_FUNCTION_NAME", "f")]));
        let metrics: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|d| d.get("_aws").is_some())
            .collect();
        assert_eq!(metrics.len(), 1, "{lines:?}");
        let m = &metrics[0];
        assert_eq!(m["ColdStart"], 1.0);
        assert_eq!(m["function_name"], "f");
        assert_eq!(
            m["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "ColdStart"
        );
        assert_eq!(m["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
    }

    #[test]
    fn text_format_and_lambda_level_are_honoured() {
        let s = settings(&[
            ("AWS_LAMBDA_LOG_FORMAT", "Text"),
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
            ("RUST_LOG", "error"),
        ]);
        assert!(!s.json);
        let lines = two_invocations(&s);
        let logs: Vec<&String> = lines.iter().filter(|l| !l.starts_with('{')).collect();
        // info + (info, debug) × 2: Lambda's DEBUG wins over RUST_LOG=error.
        assert_eq!(logs.len(), 5, "{lines:?}");
        assert!(logs[1].contains(" INFO service=kommo-zoho function_name= cold_start=true"));
        assert!(logs[1].contains("requestId=\"req-1\""), "{}", logs[1]);
        assert!(logs[1].contains(" handled delivery=7"));
        assert!(logs[3].contains("cold_start=false"), "{}", logs[3]);
    }

    #[test]
    fn rust_log_applies_without_a_lambda_level_and_bad_values_are_named() {
        assert_eq!(settings(&[("RUST_LOG", "warn")]).filter, "warn");
        assert_eq!(settings(&[]), LogSettings::default());
        let err = Env::load(
            |k| (k == "AWS_LAMBDA_LOG_FORMAT").then(|| "YAML".to_string()),
            LogSettings::read,
        )
        .unwrap_err();
        assert!(err.to_string().contains("AWS_LAMBDA_LOG_FORMAT"), "{err}");
    }
}
