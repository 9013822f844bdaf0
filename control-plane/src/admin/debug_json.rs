//! The `Debug` text of a generated `mesh.v1` message, as JSON, for the config dump.
//!
//! Why parse `Debug` text: prost's messages do not derive serde, and deriving it through
//! prost-build would print every enum field as its number (`"protocol": 1`), since prost keeps
//! enum fields as `i32`; naming them would take a serde attribute per enum field, kept in step
//! with the `.proto` files by hand. The `Debug` impls that prost derives already name enum values
//! (`Http`) and oneof variants (`Prefix("/api")`) and follow the `.proto` files by themselves;
//! their grammar is small (structs, tuples, lists, maps, strings, numbers, identifiers), so it is
//! read here into JSON:
//!
//! | `Debug` | JSON |
//! |---|---|
//! | `Cluster { name: "a", port: 80 }` | `{"name": "a", "port": 80}` (the type name dropped) |
//! | `None` / `Some(x)` | `null` / `x` |
//! | `Prefix("/api")` (a oneof variant) | `{"prefix": "/api"}` |
//! | `Http` (an enum value) | `"Http"` |
//! | `[1, 2]`, `{"k": "v"}` | arrays, objects |
//!
//! Text that does not parse gives `None`; the caller then shows the `Debug` text as it is.

use serde_json::{Map, Number, Value};

/// `format!("{value:?}")` as JSON, or `None` if that text is not in the grammar above.
pub fn debug_to_json(value: &impl std::fmt::Debug) -> Option<Value> {
    parse(&format!("{value:?}"))
}

/// Parses one `Debug` value; `None` unless the whole text is exactly one value.
pub fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.at == p.s.len()).then_some(v)
}

/// Nesting deeper than this is refused (the config is ours, but a parser should not be able to
/// overflow the stack whatever it is given).
const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let v = match self.peek()? {
            b'"' => self.string().map(Value::String),
            b'[' => self.list(),
            b'{' => self.map(),
            b'-' | b'0'..=b'9' => self.number(),
            c if c == b'_' || c.is_ascii_alphabetic() => self.named(),
            _ => None,
        };
        self.depth -= 1;
        v
    }

    /// A `,`-separated sequence of `item` up to `close` (a trailing comma allowed).
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            if self.eat(close) {
                return Some(());
            }
            item(self)?;
            if !self.eat(b',') {
                return self.eat(close).then_some(());
            }
        }
    }

    fn list(&mut self) -> Option<Value> {
        self.at += 1; // [
        let mut out = Vec::new();
        self.items(b']', |p| {
            out.push(p.value()?);
            Some(())
        })?;
        Some(Value::Array(out))
    }

    /// `{key: value, ...}`: a map (`BTreeMap` / `HashMap`); keys that are not strings are
    /// written as their JSON text.
    fn map(&mut self) -> Option<Value> {
        self.at += 1; // {
        let mut out = Map::new();
        self.items(b'}', |p| {
            let key = match p.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if !p.eat(b':') {
                return None;
            }
            out.insert(key, p.value()?);
            Some(())
        })?;
        Some(Value::Object(out))
    }

    fn ident(&mut self) -> Option<&str> {
        self.ws();
        // A raw identifier: prost names the field of `oneof match` `r#match`.
        if self.s[self.at..].starts_with(b"r#") {
            self.at += 2;
        }
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| *c == b'_' || c.is_ascii_alphanumeric())
        {
            self.at += 1;
        }
        // The bytes are ASCII, checked above.
        std::str::from_utf8(&self.s[start..self.at])
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// An identifier and what follows it: a struct, a tuple (variant), or a bare value.
    fn named(&mut self) -> Option<Value> {
        let name = self.ident()?.to_string();
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let mut out = Map::new();
                self.items(b'}', |p| {
                    let field = p.ident()?.to_string();
                    if !p.eat(b':') {
                        return None;
                    }
                    out.insert(field, p.value()?);
                    Some(())
                })?;
                Some(Value::Object(out))
            }
            Some(b'(') => {
                self.at += 1;
                let mut fields = Vec::new();
                self.items(b')', |p| {
                    fields.push(p.value()?);
                    Some(())
                })?;
                let inner = if fields.len() == 1 {
                    fields.pop()?
                } else {
                    Value::Array(fields)
                };
                if name == "Some" {
                    return Some(inner);
                }
                let mut out = Map::new();
                out.insert(snake_case(&name), inner);
                Some(Value::Object(out))
            }
            _ => Some(match name.as_str() {
                "None" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                // `NaN` and `inf` are not JSON numbers.
                _ => Value::String(name),
            }),
        }
    }

    fn number(&mut self) -> Option<Value> {
        self.ws();
        let start = self.at;
        if self.s.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_'))
        {
            // `1e-5` holds a `-`, but only after an `e`.
            if matches!(self.s[self.at], b'+' | b'-') && !matches!(self.s[self.at - 1], b'e' | b'E')
            {
                break;
            }
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::Number(u.into()));
        }
        match text.parse::<f64>() {
            Ok(f) => {
                Some(Number::from_f64(f).map_or_else(|| Value::String(text.into()), Value::Number))
            }
            // `-inf`
            Err(_) => text
                .strip_prefix('-')
                .filter(|rest| rest.chars().all(|c| c.is_ascii_alphabetic()))
                .map(|_| Value::String(text.into())),
        }
    }

    /// A Rust string literal as `Debug` writes it.
    fn string(&mut self) -> Option<String> {
        self.at += 1; // "
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.at)?;
            self.at += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.at)?;
                    self.at += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'0' => '\0',
                        b'\\' => '\\',
                        b'"' => '"',
                        b'\'' => '\'',
                        b'u' => {
                            // \u{1f600}
                            if self.s.get(self.at) != Some(&b'{') {
                                return None;
                            }
                            let end = self.s[self.at..].iter().position(|c| *c == b'}')?;
                            let hex =
                                std::str::from_utf8(&self.s[self.at + 1..self.at + end]).ok()?;
                            self.at += end + 1;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
    }
}

/// `PerRoute` → `per_route`: a oneof variant named as its field in the `.proto` file.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::{Cluster, HeaderMatch, Protocol, RouteMatch, header_match, route_match};
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn prost_messages_read_as_json_with_enum_and_oneof_names() {
        let m = RouteMatch {
            path: Some(route_match::Path::Prefix("/api \"v1\"\n\u{1b}".into())),
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                r#match: Some(header_match::Match::Present(true)),
            }],
            method: String::new(),
        };
        assert_eq!(
            debug_to_json(&m).unwrap(),
            json!({
                "path": {"prefix": "/api \"v1\"\n\u{1b}"},
                "headers": [{"name": "x-canary", "match": {"present": true}}],
                "method": "",
            })
        );
        let c = Cluster {
            name: "api.a:80".into(),
            protocol: Protocol::Http as i32,
            ..Default::default()
        };
        let v = debug_to_json(&c).unwrap_or_else(|| panic!("{c:?}"));
        assert_eq!(v["name"], "api.a:80");
        assert_eq!(v["protocol"], "Http");
        assert!(v["endpoints"].is_array(), "{v}");
    }

    #[test]
    fn scalars_maps_and_nesting() {
        let mut map = BTreeMap::new();
        map.insert("app".to_string(), vec![1u8, 2]);
        assert_eq!(debug_to_json(&map).unwrap(), json!({"app": [1, 2]}));
        assert_eq!(parse("-12").unwrap(), json!(-12));
        assert_eq!(parse("18446744073709551615").unwrap(), json!(u64::MAX));
        assert_eq!(parse("0.5").unwrap(), json!(0.5));
        assert_eq!(parse("1e-5").unwrap(), json!(1e-5));
        assert_eq!(parse("NaN").unwrap(), json!("NaN"));
        assert_eq!(parse("-inf").unwrap(), json!("-inf"));
        assert_eq!(
            parse("[None, Some(3), PerRoute]").unwrap(),
            json!([null, 3, "PerRoute"])
        );
        assert_eq!(
            parse("Scope(PerRoute, 2)").unwrap(),
            json!({"scope": ["PerRoute", 2]})
        );
        assert_eq!(parse("{1: \"a\"}").unwrap(), json!({"1": "a"}));
        assert_eq!(parse("Empty {}").unwrap(), json!({}));
    }

    #[test]
    fn text_outside_the_grammar_is_refused() {
        for bad in [
            "",
            "\"open",
            "A { b 1 }",
            "[1 2]",
            "1 2",
            "{",
            "@",
            "\"\\q\"",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(parse(&deep), None);
    }
}
