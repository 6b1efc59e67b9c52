//! The worker's JSON log lines, in the operator's shape (tracing-subscriber's JSON formatter with flattened
//! events, see operator/src/main.rs): `{"timestamp":"…Z","level":"INFO","message":"…", the fields…,
//! "target":"silverline_worker"}`, so that one log pipeline reads both binaries' pods the same way.

use serde_json::Value;

/// The `target` every worker line carries, as tracing names a crate.
pub const TARGET: &str = "silverline_worker";

/// One log line: timestamp (UTC, microseconds, as tracing-subscriber writes it), level, message, then the
/// fields of `fields` (an object; anything else is ignored) and the target, in that order.
pub fn line(level: &str, message: &str, fields: Value) -> String {
    let text = |v: &str| Value::String(v.to_owned()).to_string();
    let mut out = format!(
        "{{\"timestamp\":{},\"level\":{},\"message\":{}",
        text(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        text(level),
        text(message)
    );
    if let Value::Object(extra) = fields {
        // The shape's own keys are never overwritten by a field of the same name.
        for (key, value) in
            extra.iter().filter(|(k, _)| !matches!(k.as_str(), "timestamp" | "level" | "message" | "target"))
        {
            out.push_str(&format!(",{}:{value}", text(key)));
        }
    }
    out.push_str(&format!(",\"target\":{}}}", text(TARGET)));
    out
}

/// Writes one log line to stderr.
pub fn emit(level: &str, message: &str, fields: Value) {
    eprintln!("{}", line(level, message, fields));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_operators_shape_in_its_order() {
        let text = line("INFO", "run finished", serde_json::json!({"rows": 3, "level": "ignored"}));
        let order: Vec<usize> = ["\"timestamp\"", "\"level\"", "\"message\"", "\"rows\"", "\"target\""]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(text.matches("\"level\"").count(), 1, "{text}");
        let l: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["target"], TARGET);
        let ts = l["timestamp"].as_str().expect("text");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }
}
