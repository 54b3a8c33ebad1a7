//! The JSON log line of `RATEL_LOG_FORMAT=json` (DESIGN.md "Operations"): one object per
//! event with exactly `time` (RFC 3339 UTC, microseconds), `level`, `target`, `message`,
//! then the event's own fields flattened beside them (numbers and booleans as JSON values,
//! anything else as its text). A field named like one of the four fixed keys is written as
//! `field.<name>` so that no key appears twice.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter (see the module doc).
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut line = String::with_capacity(128 + fields.rest.len());
        line.push_str("{\"time\":");
        push_str_value(&mut line, &time);
        line.push_str(",\"level\":");
        push_str_value(&mut line, meta.level().as_str());
        line.push_str(",\"target\":");
        push_str_value(&mut line, meta.target());
        line.push_str(",\"message\":");
        push_str_value(&mut line, fields.message.as_deref().unwrap_or(""));
        line.push_str(&fields.rest);
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_str_value(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// The message and the other fields of one event (`rest` is `,"k":v` pairs).
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: String,
}

impl Fields {
    fn push(&mut self, field: &Field, json: String) {
        let name = field.name();
        let key = if matches!(name, "time" | "level" | "target") {
            format!("field.{name}")
        } else {
            name.to_string()
        };
        self.rest.push(',');
        push_str_value(&mut self.rest, &key);
        self.rest.push(':');
        self.rest.push_str(&json);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.push(field, serde_json::Value::from(value).to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, serde_json::Value::from(value).to_string());
    }
}
