//! Text from outside (Kommo fields, form bodies, error bodies) made safe to
//! store and to log. One name per job: [`non_empty`] trims and drops blanks,
//! [`truncate`] cuts to a number of characters and marks the cut,
//! [`storable`] drops what Postgres cannot store.

/// Trimmed, with an empty or all-blank string as `None`.
pub fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// At most `max_chars` characters. A cut string ends in `…`, so a reader of a
/// log line or an error knows there was more; the `…` is not counted.
pub fn truncate(s: &str, max_chars: usize) -> String {
    let mut chars = s.char_indices();
    match chars.nth(max_chars) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// At most `max_chars` characters, cut silently: for values stored in a
/// column or sent to an API field with a length limit.
pub fn clamp(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Without NUL: Postgres refuses it in `text` and `jsonb`, so one `%00` in a
/// Kommo field would fail its delivery for ever and every full refresh with
/// it. Every string from Kommo passes here before anything stores it.
pub fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// [`storable`] for every string (and key) of a JSON document.
pub fn storable_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (storable(&k).into_owned(), storable_json(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_dropped_everywhere_postgres_would_refuse_it() {
        assert_eq!(storable("a\0b"), "ab");
        assert!(matches!(storable("plain"), std::borrow::Cow::Borrowed(_)));
        let v = serde_json::json!({"na\0me": ["x\0", {"y": "\0z"}], "n": 1});
        assert_eq!(
            storable_json(v),
            serde_json::json!({"name": ["x", {"y": "z"}], "n": 1})
        );
    }

    #[test]
    fn non_empty_trims_and_drops_blanks() {
        assert_eq!(non_empty(Some("  Ana ")), Some("Ana".to_string()));
        assert_eq!(non_empty(Some(" \t")), None);
        assert_eq!(non_empty(None), None);
    }

    #[test]
    fn truncate_marks_a_cut_and_respects_characters() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(clamp("héllo", 2), "hé");
    }
}
