//! Text from outside (Kommo fields, form bodies, error bodies) made safe to
//! store and to log. One name per job: [`non_empty`] trims and drops blanks,
//! [`truncate`] cuts to a number of characters and marks the cut.

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

#[cfg(test)]
mod tests {
    use super::*;

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
