//! `--output table|json|yaml`: every command builds one JSON value (usually the admin API's
//! answer as it is, so that scripts see the documented API) and a table for people.

use crate::{EXIT_FAILURE, Failure};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

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
pub fn emit(format: Format, value: &Value, table: impl FnOnce(&Value)) -> Result<(), Failure> {
    match format {
        Format::Table => table(value),
        Format::Json => {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing JSON: {e}")))?;
            println!("{text}");
        }
        Format::Yaml => {
            let text = serde_yaml_ng::to_string(value)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing YAML: {e}")))?;
            print!("{text}");
        }
    }
    Ok(())
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
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
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
        print!("{}", self.render());
    }
}

/// Two `label: value` columns, for one object (`meshctl ca status`, `describe`).
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

// --- values ------------------------------------------------------------------------------

/// A string field, `-` when absent or empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "-".into(),
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
pub fn ago(unix: &Value) -> String {
    match unix.as_i64() {
        Some(t) if t > 0 => format!("{} ago", short_duration(now() - t)),
        _ => "-".into(),
    }
}

/// `in 52m`, or `expired 3m ago`, for a future unix time.
pub fn expires(unix: &Value) -> String {
    match unix.as_i64() {
        Some(t) if t >= now() => format!("in {}", short_duration(t - now())),
        Some(t) => format!("expired {} ago", short_duration(now() - t)),
        None => "-".into(),
    }
}

/// `2026-11-24 21:44:19Z` (UTC) for a unix time.
pub fn utc(unix: &Value) -> String {
    let Some(t) = unix.as_i64() else {
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
