//! Mesh documents as text, the same for meshd (admin API, `--config-dir`) and meshctl (`apply`,
//! `diff`), so that both refuse the same input with the same words:
//!
//! - JSON is strict: a key repeated in an object is an error naming the key's path (serde_json
//!   alone keeps the last one silently, while YAML refuses duplicates).
//! - A byte that is not UTF-8, or a character YAML does not allow raw (NUL, ESC, ...), is
//!   reported where it is: line, column and byte index.
//! - YAML's alias limit ("billion laughs") is worded as what it is.
//! - A value echoed in an error is quoted up to [`QUOTE_LIMIT`] characters, with its length.
//!
//! And the admin API's body limit, [`MAX_BODY`], which meshctl checks before sending.

use serde::de::{self, DeserializeSeed, Visitor};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

/// The largest request body meshd's admin API reads (a larger one gets 413).
pub const MAX_BODY: usize = 1 << 20;

/// How many characters of a value an error quotes.
pub const QUOTE_LIMIT: usize = 100;

// --- positions ---------------------------------------------------------------------------

/// The 1-based (line, column) of byte `index` in `text`; the column counts characters.
pub fn position(text: &[u8], index: usize) -> (usize, usize) {
    let before = &text[..index.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// `text` as UTF-8, or where it is not: `not UTF-8: byte 0xFF at line 3 column 5 (byte 42)`.
pub fn utf8(text: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(text).map_err(|e| {
        let at = e.valid_up_to();
        let (line, column) = position(text, at);
        let byte = text.get(at).copied().unwrap_or_default();
        format!("not UTF-8: byte 0x{byte:02X} at line {line} column {column} (byte {at})")
    })
}

/// Refuses a character that YAML does not allow in a document (YAML 1.2 §5.1: control
/// characters other than tab and line breaks, DEL, C1 controls, U+FFFE/U+FFFF), naming its
/// line and column. libyaml reports such a character at the start of the token it was reading,
/// which can be lines away.
pub fn check_yaml_characters(text: &str) -> Result<(), String> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}')
            || matches!(c, '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    };
    match text.char_indices().find(|&(_, c)| !allowed(c)) {
        None => Ok(()),
        Some((at, c)) => {
            let (line, column) = position(text.as_bytes(), at);
            Err(format!(
                "character U+{:04X} at line {line} column {column} is not allowed in YAML; \
                 write it escaped in a double-quoted string (\"\\x{:02X}\")",
                u32::from(c),
                u32::from(c).min(0xFF)
            ))
        }
    }
}

/// serde_yaml_ng's message with the position it leaves out (a duplicate key), and the alias
/// limit said as what it is.
pub fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    let at = e
        .location()
        .map(|at| format!(" at line {} column {}", at.line(), at.column()))
        .unwrap_or_default();
    if text.starts_with("repetition limit exceeded") {
        return format!(
            "too many aliases: expanding the anchors (&name) and aliases (*name){at} would make \
             the document too large (an alias bomb?); write the values out instead"
        );
    }
    if text.starts_with("recursion limit exceeded") {
        return format!("nested too deeply{at}");
    }
    match e.location() {
        // For a duplicate key the position is where the mapping starts.
        Some(at) if text.starts_with("duplicate entry") => format!(
            "{} in the mapping that starts at line {} column {}",
            shorten_quoted(&text),
            at.line(),
            at.column()
        ),
        Some(_) if !text.contains(" line ") => format!("{}{at}", shorten_quoted(&text)),
        _ => shorten_quoted(&text),
    }
}

// --- strict JSON -------------------------------------------------------------------------

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// `spec.rules[0].backends[1].weight` (a leading index is `[1].spec`).
pub fn path_text(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&clip(k));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Why strict JSON was refused.
#[derive(Debug)]
pub enum JsonError {
    /// A key appears twice in one object: its path (the second occurrence) and where.
    Duplicate {
        path: Vec<Step>,
        line: usize,
        column: usize,
    },
    /// Not JSON (serde_json's message has the line and column).
    Syntax(serde_json::Error),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Duplicate { path, line, column } => write!(
                f,
                "{}: duplicate key at line {line} column {column} (a key may appear only once \
                 in an object)",
                path_text(path)
            ),
            JsonError::Syntax(e) => f.write_str(&shorten_quoted(&e.to_string())),
        }
    }
}

impl std::error::Error for JsonError {}

/// JSON text as a value, refusing a key repeated in an object.
pub fn parse_json(text: &str) -> Result<Value, JsonError> {
    // First a pass that only checks keys (so that the value itself is serde_json's own,
    // whatever features serde_json was built with), then the value.
    let path = RefCell::new(Vec::new());
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let checked = KeyCheck {
        path: &path,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Err(e) = checked {
        return Err(match duplicate.into_inner() {
            Some(path) => JsonError::Duplicate {
                path,
                line: e.line(),
                column: e.column(),
            },
            None => JsonError::Syntax(e),
        });
    }
    serde_json::from_str(text).map_err(JsonError::Syntax)
}

/// Walks a JSON value, failing at the first key that an object already holds.
struct KeyCheck<'a> {
    path: &'a RefCell<Vec<Step>>,
    duplicate: &'a RefCell<Option<Vec<Step>>>,
}

impl KeyCheck<'_> {
    fn child(&self) -> Self {
        Self {
            path: self.path,
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeyCheck<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCheck<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            self.path.borrow_mut().push(Step::Index(index));
            let more = seq.next_element_seed(self.child())?;
            self.path.borrow_mut().pop();
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            self.path.borrow_mut().push(Step::Key(key.clone()));
            if !seen.insert(key) {
                *self.duplicate.borrow_mut() = Some(self.path.borrow().clone());
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self.child())?;
            self.path.borrow_mut().pop();
        }
        Ok(())
    }
}

// --- quoting values ----------------------------------------------------------------------

/// `value` cut to [`QUOTE_LIMIT`] characters, with `… (N characters)` when it was longer.
pub fn clip(value: &str) -> String {
    let count = value.chars().count();
    if count <= QUOTE_LIMIT {
        return value.to_string();
    }
    let head: String = value.chars().take(QUOTE_LIMIT).collect();
    format!("{head}… ({count} characters)")
}

/// `value` quoted as Rust's `{:?}` does, cut to [`QUOTE_LIMIT`] characters:
/// `"aaaa…" (943718 characters)`.
pub fn quote(value: &str) -> String {
    let count = value.chars().count();
    if count <= QUOTE_LIMIT {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(QUOTE_LIMIT).collect();
    format!("{:?} ({count} characters)", format!("{head}…"))
}

/// A message with every quoted part (`"..."`, `` `...` ``) longer than [`QUOTE_LIMIT`]
/// characters cut, saying how long it was: for messages built by libraries (serde's
/// ``unknown variant `...` ``, ``invalid type: string "..."``), which quote whole values.
pub fn shorten_quoted(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len().min(4 * QUOTE_LIMIT));
    let mut i = 0;
    while i < chars.len() {
        let open = chars[i];
        out.push(open);
        i += 1;
        if open != '"' && open != '`' {
            continue;
        }
        // Find the closing quote (a `"` may be escaped with `\`).
        let start = i;
        let mut end = None;
        let mut j = i;
        while j < chars.len() {
            if open == '"' && chars[j] == '\\' {
                j += 2;
                continue;
            }
            if chars[j] == open {
                end = Some(j);
                break;
            }
            j += 1;
        }
        let Some(end) = end else { continue };
        let inner = end - start;
        if inner > QUOTE_LIMIT {
            out.extend(&chars[start..start + QUOTE_LIMIT]);
            out.push('…');
            out.push(open);
            out.push_str(&format!(" ({inner} characters)"));
        } else {
            out.extend(&chars[start..=end]);
        }
        i = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let text = "{\"spec\": {\"rules\": [{}, {\"a\": 1, \"b\": {\"x\": 0, \"x\": 50}}]}}";
        match parse_json(text) {
            Err(JsonError::Duplicate { path, line, column }) => {
                assert_eq!(path_text(&path), "spec.rules[1].b.x");
                assert_eq!(line, 1);
                assert!(column > 40, "{column}");
            }
            other => panic!("{other:?}"),
        }
        let e = parse_json("[{\"kind\": 1}, {\"kind\": 1,\n \"kind\": 2}]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "[1].kind: duplicate key at line 2 column 7 (a key may appear only once in an object)"
        );
        // The same key in different objects is fine, and values are serde_json's.
        let v = parse_json("{\"a\": {\"k\": 1.5}, \"b\": {\"k\": [1, -2, null, true, \"s\"]}}")
            .unwrap();
        assert_eq!(v["b"]["k"][1], -2);
        assert_eq!(v["a"]["k"], 1.5);
        assert!(matches!(parse_json("{\"a\": }"), Err(JsonError::Syntax(_))));
        assert!(matches!(parse_json("{} x"), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn positions_are_lines_and_columns() {
        assert_eq!(position(b"a\nbc\nd", 4), (2, 3));
        assert_eq!(position(b"abc", 0), (1, 1));
        let e = utf8(b"a: 1\nb: \"\xc3\xa9\xff\"\n").unwrap_err();
        assert_eq!(e, "not UTF-8: byte 0xFF at line 2 column 6 (byte 11)");
        let e = check_yaml_characters("a: 1\nb: 2\nc: 3\nname: ab\0c\n").unwrap_err();
        assert!(e.starts_with("character U+0000 at line 4 column 9 "), "{e}");
        let e = check_yaml_characters("x: \u{1b}[31m").unwrap_err();
        assert!(e.contains("U+001B at line 1 column 4"), "{e}");
        check_yaml_characters("\u{feff}a: \"é\t\"\r\n").unwrap();
    }

    #[test]
    fn the_alias_limit_is_named() {
        let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let mut prev = 'a';
        for name in 'b'..='j' {
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = name;
        }
        let e = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&bomb).unwrap_err();
        let message = yaml_message(&e);
        assert!(message.contains("aliases"), "{message}");
        assert!(message.contains("anchors"), "{message}");
    }

    #[test]
    fn long_values_are_quoted_with_their_length() {
        let long = "x".repeat(1000);
        assert_eq!(quote("short"), "\"short\"");
        let q = quote(&long);
        assert!(q.ends_with("…\" (1000 characters)"), "{q}");
        assert!(q.chars().count() < 130, "{q}");
        assert_eq!(clip("ab"), "ab");
        let message = format!("unknown variant `{long}`, expected `a` or \"{long}\" x");
        let short = shorten_quoted(&message);
        assert!(short.len() < 300, "{short}");
        assert!(
            short.contains("…` (1000 characters), expected `a` or \""),
            "{short}"
        );
        assert_eq!(shorten_quoted("a \"b\\\"c\" `d"), "a \"b\\\"c\" `d");
    }
}
