//! Logging shared by both binaries: `tracing`, JSON lines when stderr is not a terminal
//! (containers, systemd) and plain text on a terminal; `KEYWAY_LOG_FORMAT=json|text` overrides.
//! `KEYWAY_LOG` (falling back to `RUST_LOG`) is the filter, changeable at runtime with
//! [`set_filter`] (the admin port's `PUT /log-level`).
//!
//! A JSON line carries what log pipelines expect: `timestamp` (RFC 3339, UTC), `severity`
//! (Google Cloud Logging's names: DEBUG, INFO, WARNING, ERROR, CRITICAL for panics),
//! `message`, `component` (`proxy` or `controller`), `target`, the event's fields and the
//! fields of the spans it happened in (`pool`, `backend`, `key_id`, `request_id`, ...).
//!
//! An event field named [`JSON_FIELDS`] holding a JSON object is merged into the line's top
//! level as nested JSON (for lines whose shape a log pipeline expects, such as the per-model
//! cluster state that Alyx's dashboards read).

use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The name of an event field whose JSON-object value is merged into the line (see the
/// module docs); in text logs it stays a plain field.
pub const JSON_FIELDS: &str = "json_fields";

/// The event formatter of JSON lines.
#[derive(Clone, Debug)]
pub struct JsonLines {
    component: &'static str,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static COMPONENT: OnceLock<&'static str> = OnceLock::new();

/// Installs the global subscriber for `component`. Call once, from `main`.
pub fn init(component: &'static str, default_filter: &str) {
    let filter = std::env::var("KEYWAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let _ = COMPONENT.set(component);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json_wanted() {
        install_panic_hook(component);
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines::new(component))
                    .fmt_fields(JsonFields::new())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// `KEYWAY_LOG_FORMAT` (`json`, or `text`/`plain`), else JSON unless stderr is a terminal.
pub fn json_wanted() -> bool {
    match std::env::var("KEYWAY_LOG_FORMAT") {
        Ok(f) if f.eq_ignore_ascii_case("json") => true,
        Ok(f) if f.eq_ignore_ascii_case("text") || f.eq_ignore_ascii_case("plain") => false,
        _ => !std::io::stderr().is_terminal(),
    }
}

/// Replaces the log filter: a level (`debug`) or a directive list
/// (`warn,keyway_proxy=debug`). Returns the filter now in force.
pub fn set_filter(directives: &str) -> Result<String, String> {
    let directives = directives.trim();
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("invalid filter: {e}"))?;
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not initialised".to_string())?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the filter: {e}"))?;
    tracing::info!(filter = directives, "log filter changed");
    Ok(current_filter().unwrap_or_else(|| directives.to_string()))
}

/// The filter in force, when logging was initialised by [`init`].
pub fn current_filter() -> Option<String> {
    FILTER
        .get()
        .and_then(|h| h.with_current(|f| f.to_string()).ok())
}

/// Panics become one CRITICAL line (then the default hook's message).
fn install_panic_hook(component: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(rfc3339(SystemTime::now())),
        );
        line.insert("severity".into(), Value::String("CRITICAL".into()));
        line.insert("message".into(), Value::String(format!("panic: {info}")));
        line.insert("component".into(), Value::String(component.into()));
        eprintln!("{}", Value::Object(line));
        default(info);
    }));
}

// === impl JsonLines ===

impl JsonLines {
    pub fn new(component: &'static str) -> Self {
        Self { component }
    }
}

/// Google Cloud Logging's severity for a `tracing` level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
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
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(rfc3339(SystemTime::now())),
        );
        line.insert(
            "severity".into(),
            Value::String(severity(meta.level()).into()),
        );
        line.insert("component".into(), Value::String(self.component.into()));
        line.insert("target".into(), Value::String(meta.target().into()));
        // Span fields, outermost first, so the innermost span wins on a name clash; the
        // event's own fields win over all of them.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    line.extend(map);
                }
            }
        }
        let mut visitor = JsonVisitor(Map::new());
        event.record(&mut visitor);
        let mut fields = visitor.0;
        let message = fields
            .remove("message")
            .unwrap_or_else(|| Value::String(String::new()));
        if let Some(Value::String(raw)) = fields.remove(JSON_FIELDS) {
            match serde_json::from_str::<Value>(&raw) {
                Ok(Value::Object(map)) => line.extend(map),
                _ => {
                    fields.insert(JSON_FIELDS.into(), Value::String(raw));
                }
            }
        }
        line.extend(fields);
        line.insert("message".into(), message);
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
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
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// `2026-01-02T03:04:05.678Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `log` writes through the proxy's JSON format: the raw output and its lines parsed.
    fn lines_of(log: impl FnOnce()) -> (String, Vec<Value>) {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines::new("proxy"))
                .fmt_fields(JsonFields::new())
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out, lines)
    }

    #[test]
    fn lines_are_json_with_severity_component_and_span_fields() {
        let (out, lines) = lines_of(|| {
            let span = tracing::info_span!("request", pool = "default/openai", request_id = "r1");
            let _g = span.enter();
            tracing::warn!(key_id = "openai-1", count = 3, "key cooling");
            tracing::error!("boom");
        });
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["severity"], "WARNING");
        assert_eq!(lines[0]["message"], "key cooling");
        assert_eq!(lines[0]["component"], "proxy");
        assert_eq!(lines[0]["pool"], "default/openai");
        assert_eq!(lines[0]["request_id"], "r1");
        assert_eq!(lines[0]["key_id"], "openai-1");
        assert_eq!(lines[0]["count"], 3);
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["severity"], "ERROR");
    }

    #[test]
    fn json_fields_are_merged_as_nested_json() {
        let (out, lines) = lines_of(|| {
            let state = r#"{"c1":{"modelState":{"m":{"capacity":100}}}}"#;
            tracing::info!(json_fields = state, "state");
            tracing::info!(json_fields = "not json", "kept");
        });
        assert_eq!(lines[0]["c1"]["modelState"]["m"]["capacity"], 100, "{out}");
        assert!(lines[0].get(JSON_FIELDS).is_none());
        assert_eq!(lines[1][JSON_FIELDS], "not json");
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
