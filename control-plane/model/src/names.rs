//! Name rules, as Kubernetes has them, so that every document can also be a Kubernetes object.
//! Each check returns the message to report (the caller knows the field).

/// A DNS-1123 label: object names, namespaces, port names.
pub(crate) fn dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "{value:?} is {} characters long; at most 63 are allowed (DNS-1123 label)",
            value.len()
        ));
    }
    if !is_label(value) {
        return Err(format!(
            "{value:?} is not a DNS-1123 label: use lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A host name as an HTTPRoute lists it: a DNS-1123 subdomain, optionally with a leading `*.`
/// wildcard (`*.example.com` matches `a.example.com` and `a.b.example.com`, as in the Gateway
/// API). No port: a route serves its host names on every port.
pub(crate) fn hostname(value: &str) -> Result<(), String> {
    let rest = value.strip_prefix("*.").unwrap_or(value);
    if rest.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 253 {
        return Err(format!("{value:?} is longer than 253 characters"));
    }
    if value.contains(':') {
        return Err(format!(
            "{value:?} must not carry a port: a route serves its host names on every port"
        ));
    }
    if !rest.split('.').all(|l| l.len() <= 63 && is_label(l)) {
        return Err(format!(
            "{value:?} is not a valid host name: lowercase DNS labels separated by '.', \
             optionally starting with \"*.\""
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name up to 63 of `[A-Za-z0-9._-]`.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(is_label))
    {
        return Err(format!(
            "label key {key:?}: the prefix before '/' must be a DNS subdomain"
        ));
    }
    if name.is_empty() || name.len() > 63 || !is_label_value(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !is_label_value(value) {
        return Err(format!(
            "label value {value:?} must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// An HTTP method as routes and policies compare it: an upper-case token (`GET`, `PROPFIND`).
pub(crate) fn http_method(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err(format!(
            "{value:?} must be upper case ({:?}): methods are compared case-sensitively",
            value.to_ascii_uppercase()
        ));
    }
    if !value
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    {
        return Err(format!("{value:?} is not an HTTP method"));
    }
    Ok(())
}

/// An HTTP header name (an RFC 9110 token), not a pseudo-header.
pub(crate) fn header_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.starts_with(':') {
        return Err(format!(
            "{value:?}: pseudo-headers cannot be matched; match the path or the host instead"
        ));
    }
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if !value.bytes().all(token) {
        return Err(format!("{value:?} is not a valid header name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_kubernetes() {
        assert!(dns_label("reviews-v2").is_ok());
        assert!(dns_label("a").is_ok());
        assert!(dns_label("Reviews").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(63)).is_ok());
        let long = dns_label(&"a".repeat(64)).unwrap_err();
        assert!(long.contains("at most 63"), "{long}");
    }

    #[test]
    fn host_names_allow_a_leading_wildcard_only() {
        assert!(hostname("api.example.com").is_ok());
        assert!(hostname("*.example.com").is_ok());
        assert!(hostname("reviews").is_ok());
        assert!(hostname("a.*.example.com").is_err());
        assert!(hostname("API.example.com").is_err());
        assert!(hostname("reviews:9080").unwrap_err().contains("port"));
        assert!(hostname("*.").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("/name").is_err());
        assert!(label_key("a b").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("-v1").is_err());
    }

    #[test]
    fn methods_and_header_names() {
        assert!(http_method("GET").is_ok());
        assert!(http_method("get").unwrap_err().contains("\"GET\""));
        assert!(header_name("x-canary").is_ok());
        assert!(header_name(":authority").is_err());
        assert!(header_name("x canary").is_err());
    }
}
