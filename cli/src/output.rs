//! `--output table|json|yaml`: every command builds one JSON value (usually the admin API's
//! answer as it is, so that scripts see the documented API) and a table for people.

//!
//! Everything meshctl prints goes through [`escape`]: names, messages and bodies come from
//! documents, sidecars and servers, and a control byte in them (ESC, NUL, a carriage return)
//! must not reach the terminal raw. The macros `say!` (stdout), `note!` (stderr) and their
//! `_part` forms (no newline) format, escape, and print (through [`write_stdout`] and
//! [`write_stderr`]); nothing else in meshctl prints.

use crate::{EXIT_FAILURE, Failure};
use serde_json::Value;
use std::borrow::Cow;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `println!`, with outside text escaped (line breaks kept).
macro_rules! say {
    () => {
        $crate::output::write_stdout("", true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&$crate::output::escape_lines(&::std::format!($($arg)*)), true)
    };
}

/// `print!`, with outside text escaped (line breaks kept).
macro_rules! say_part {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&$crate::output::escape_lines(&::std::format!($($arg)*)), false)
    };
}

/// `eprintln!`, with outside text escaped (line breaks kept).
macro_rules! note {
    () => {
        $crate::output::write_stderr("", true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stderr(&$crate::output::escape_lines(&::std::format!($($arg)*)), true)
    };
}

/// `eprint!`, with outside text escaped (line breaks kept).
macro_rules! note_part {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(&$crate::output::escape_lines(&::std::format!($($arg)*)), false)
    };
}

/// Writes escaped text to stdout. A write error (a closed pipe or terminal) is ignored, not a
/// panic as with `println!`: `meshctl get | head`, or the demo's terminal closed under it.
pub fn write_stdout(text: &str, newline: bool) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if newline {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// [`write_stdout`] for stderr.
pub fn write_stderr(text: &str, newline: bool) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if newline {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

/// Writes meshctl's own terminal control sequences (never outside text) to stdout.
pub fn raw_stdout(control: &str) {
    write_stdout(control, false);
}

/// Writes meshctl's own terminal control sequences (never outside text) to stderr.
pub fn raw_stderr(control: &str) {
    let mut err = std::io::stderr();
    let _ = err.write_all(control.as_bytes());
    let _ = err.flush();
}

/// Outside text made safe for a terminal: every control character (C0 with NUL, ESC, CR, LF and
/// tab; DEL; C1) and every bidirectional override is written as an escape (`\x1b`, `\0`, `\n`,
/// `\u{9b}`, `\u{202e}`), so that a name or a message cannot move the cursor, recolour or clear
/// the screen, or hide part of a line.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// [`escape`] for text of several lines: each line is escaped, the line breaks are kept.
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\n' {
            out.push(c);
        } else {
            push_escaped(&mut out, c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\0' => out.push_str("\\0"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if u32::from(c) < 0x80 && needs_escape(c) => {
            out.push_str(&format!("\\x{:02x}", u32::from(c)))
        }
        c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        c => out.push(c),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The admin API's JSON, pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` to print it for people.
pub fn emit<T: serde::Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T),
) -> Result<(), Failure> {
    if format == Format::Table {
        table(value);
        return Ok(());
    }
    // Through a JSON value, so that a typed answer prints as the API's JSON does.
    let value = serde_json::to_value(value)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing JSON: {e}")))?;
    match format {
        Format::Table => {}
        // JSON escapes control characters in strings itself; YAML quotes them too, and both
        // go through the same escaping as everything else all the same.
        Format::Json => {
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing JSON: {e}")))?;
            say!("{text}");
        }
        Format::Yaml => {
            // As kubectl's YAML: times in RFC 3339, not unix seconds.
            let text = serde_yaml_ng::to_string(&rfc3339_times(value))
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing YAML: {e}")))?;
            say_part!("{text}");
        }
    }
    Ok(())
}

/// The API group of mesh documents (`service.mesh.meshd.dev` is a kind meshd accepts).
pub const GROUP: &str = "mesh.meshd.dev";

/// What happened to a document, in one wording for every command, as kubectl says it:
/// `service/reviews created` (or `configured`, `unchanged`, `deleted`), with an optional note
/// in parentheses (`(dry run)`, `(revision 7)`). `service/reviews` can be pasted back into
/// `meshctl describe` or `delete`.
pub fn outcome(kind: &str, name: &str, outcome: &str, note: Option<&str>) -> String {
    let target = display_name(kind, name);
    match note {
        Some(note) => format!("{target} {outcome} ({note})"),
        None => format!("{target} {outcome}"),
    }
}

/// How a document is named in what meshctl prints: `service/reviews`.
pub fn display_name(kind: &str, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    let kind = kind.strip_suffix(&format!(".{GROUP}")).unwrap_or(&kind);
    format!("{kind}/{name}")
}

/// Whether a field of the admin API holds a unix time (`created_at`, `at`, `not_after`, ...).
fn is_time_field(key: &str) -> bool {
    key == "at"
        || key.ends_with("_at")
        || matches!(
            key,
            "not_before" | "not_after" | "last_seen" | "reissue_before" | "issued_before"
        )
}

/// Every unix time in `value` (by its field's name, and only a positive integer) as an RFC 3339
/// string, `2026-11-24T21:44:19Z`.
pub fn rfc3339_times(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v.as_i64() {
                        Some(t) if t > 0 && is_time_field(&k) => match rfc3339(t) {
                            Some(text) => Value::String(text),
                            None => v,
                        },
                        _ => rfc3339_times(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(rfc3339_times).collect()),
        other => other,
    }
}

/// `2026-11-24T21:44:19Z` for a unix time.
pub fn rfc3339(unix: i64) -> Option<String> {
    let d = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    ))
}

/// Columns aligned on the widest cell, three spaces apart (as kubectl prints them).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        // Cells are escaped before they are measured, so that a line break or a control
        // character in one neither breaks the columns nor reaches the terminal.
        let rows: Vec<Vec<Cow<'_, str>>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|cell| escape(cell)).collect())
            .collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        say_part!("{}", self.render());
    }
}

/// Two `label: value` columns, for one object (`meshctl ca status`, `describe`).
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {}\n", format!("{k}:"), escape(v)))
        .collect()
}

// --- values ------------------------------------------------------------------------------

/// A value shown in a cell: `-` when absent or empty.
pub trait Cell {
    fn cell(&self) -> Option<String>;
}

impl Cell for Value {
    fn cell(&self) -> Option<String> {
        match self {
            Value::String(s) => s.cell(),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl Cell for str {
    fn cell(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.to_string())
    }
}

impl Cell for String {
    fn cell(&self) -> Option<String> {
        self.as_str().cell()
    }
}

impl<T: Cell> Cell for Option<T> {
    fn cell(&self) -> Option<String> {
        self.as_ref().and_then(Cell::cell)
    }
}

macro_rules! display_cell {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            fn cell(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
display_cell!(bool, u8, u16, u32, u64, usize, i64);

/// A field as text, `-` when absent or empty.
pub fn text(v: &(impl Cell + ?Sized)) -> String {
    v.cell().unwrap_or_else(|| "-".into())
}

/// A unix time, as the API sends it (a number, or null).
pub trait UnixTime {
    fn unix(&self) -> Option<i64>;
}

impl UnixTime for Value {
    fn unix(&self) -> Option<i64> {
        self.as_i64()
    }
}

impl UnixTime for i64 {
    fn unix(&self) -> Option<i64> {
        Some(*self)
    }
}

impl UnixTime for Option<i64> {
    fn unix(&self) -> Option<i64> {
        *self
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `3d4h`, `52m`, `1h12m`, `45s`: a short duration, two units at most.
pub fn short_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if m < 10 && s > 0 => format!("{m}m{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// `5s ago` for a past unix time.
pub fn ago(unix: &impl UnixTime) -> String {
    match unix.unix() {
        Some(t) if t > 0 => format!("{} ago", short_duration(now() - t)),
        _ => "-".into(),
    }
}

/// `in 52m`, or `expired 3m ago`, for a future unix time.
pub fn expires(unix: &impl UnixTime) -> String {
    match unix.unix() {
        Some(t) if t >= now() => format!("in {}", short_duration(t - now())),
        Some(t) => format!("expired {} ago", short_duration(now() - t)),
        None => "-".into(),
    }
}

/// `2026-11-24 21:44:19Z` (UTC) for a unix time.
pub fn utc(unix: &impl UnixTime) -> String {
    let Some(t) = unix.unix() else {
        return "-".into();
    };
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => t.to_string(),
    }
}

/// `type.mesh.v1/RouteTable` → `RouteTable`.
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_times_are_rfc3339_and_outcomes_have_one_wording() {
        let v = rfc3339_times(json!({
            "documents": [{"created_at": 1_796_414_265, "revision": 3, "at": 0}],
            "not_after": 2_111_773_251,
            "window_secs": 60,
        }));
        assert_eq!(v["documents"][0]["created_at"], "2026-12-04T19:57:45Z");
        assert_eq!(v["documents"][0]["revision"], 3);
        assert_eq!(v["documents"][0]["at"], 0);
        assert_eq!(v["not_after"], "2036-12-01T19:40:51Z");
        assert_eq!(v["window_secs"], 60);
        assert_eq!(
            outcome("Service", "web", "created", None),
            "service/web created"
        );
        assert_eq!(
            outcome(
                "tlspolicy.mesh.meshd.dev",
                "t",
                "deleted",
                Some("revision 4")
            ),
            "tlspolicy/t deleted (revision 4)"
        );
    }

    #[test]
    fn outside_text_is_escaped() {
        assert_eq!(escape("web-1"), "web-1");
        assert_eq!(
            escape("a\u{1b}[31mred\0\r\n\t\u{7f}\u{9b}\u{202e}é"),
            "a\\x1b[31mred\\0\\r\\n\\t\\x7f\\u{9b}\\u{202e}é"
        );
        assert_eq!(escape_lines("a\u{1b}\nb\0\n"), "a\\x1b\nb\\0\n");
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["a\nb".into(), "\u{1b}[2J".into()]);
        assert_eq!(t.render(), "NAME   STATE\na\\nb   \\x1b[2J\n");
        assert_eq!(fields(&[("k", "\u{7}".into())]), "k:  \\x07\n");
    }

    /// Nothing in meshctl prints but the escaping macros of this module (and the few
    /// terminal control sequences of its own, through `raw_stderr`).
    #[test]
    fn every_output_goes_through_the_escaping() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut raw = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may print (and this one names the macros).
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for mac in [
                    "println!(",
                    "print!(",
                    "eprintln!(",
                    "eprint!(",
                    "write!(",
                    "writeln!(",
                ] {
                    let found = code.match_indices(mac).any(|(at, _)| {
                        let before = &code[..at];
                        !before.ends_with("::std::")
                            && !before.ends_with('e')
                            && !before.ends_with('_')
                    });
                    if found && !(name == "output.rs" && code.contains("::std::")) {
                        raw.push(format!("{name}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            raw.is_empty(),
            "printing without escaping:\n{}",
            raw.join("\n")
        );
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["web-1".into(), "SYNCED".into()]);
        t.row(vec!["a".into(), "".into()]);
        assert_eq!(t.render(), "NAME    STATE\nweb-1   SYNCED\na\n");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(125), "2m5s");
        assert_eq!(short_duration(52 * 60), "52m");
        assert_eq!(short_duration(3600 + 12 * 60), "1h12m");
        assert_eq!(short_duration(3 * 86_400 + 4 * 3600 + 5), "3d4h");
        assert_eq!(short_duration(-5), "0s");
        assert_eq!(utc(&json!(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            expires(&json!(now() + 600))
                .chars()
                .take(3)
                .collect::<String>(),
            "in "
        );
        assert!(expires(&json!(now() - 600)).starts_with("expired 10m"));
        assert_eq!(
            fields(&[("a", "1".into()), ("bcd", "2".into())]),
            "a:    1\nbcd:  2\n"
        );
    }
}
