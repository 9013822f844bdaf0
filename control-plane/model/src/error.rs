//! Errors of the model: each one names the document, the field path and what is wrong.

use crate::text::{QUOTE_LIMIT, clip, shorten_quoted};
use std::fmt;

/// One problem in one document.
///
/// Displays as `HTTPRoute default/reviews: spec.rules[0].backends[1].weight: must be 0..=100`.
/// For problems that concern no single field (a YAML syntax error, an empty input) `field` is
/// empty and the display is `<document>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// `Kind namespace/name`, or `document #N` when the document could not be identified.
    pub document: String,
    /// The path of the field, for example `spec.rules[0].backends[1].weight`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.document, self.message)
        } else {
            write!(f, "{}: {}: {}", self.document, self.field, self.message)
        }
    }
}

impl std::error::Error for ModelError {}

/// Every problem found, not only the first, so that an operator fixes a file in one round.
/// Displays one error per line. Never empty when returned as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelErrors(Vec<ModelError>);

// === impl ModelErrors ===

impl ModelErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ModelError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[ModelError] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<ModelError> {
        self.0
    }

    pub(crate) fn extend(&mut self, other: ModelErrors) {
        self.0.extend(other.0);
    }

    pub(crate) fn push(&mut self, error: ModelError) {
        self.0.push(error);
    }

    /// `Ok(value)` if nothing was collected.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ModelErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ModelErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ModelErrors {}

impl From<ModelError> for ModelErrors {
    fn from(e: ModelError) -> Self {
        Self(vec![e])
    }
}

impl IntoIterator for ModelErrors {
    type Item = ModelError;
    type IntoIter = std::vec::IntoIter<ModelError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ModelErrors {
    type Item = &'a ModelError;
    type IntoIter = std::slice::Iter<'a, ModelError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects the errors of one document while its checks run, so that every check runs and every
/// problem is reported.
pub(crate) struct Report {
    document: String,
    errors: ModelErrors,
}

// === impl Report ===

impl Report {
    pub(crate) fn new(document: impl Into<String>) -> Self {
        Self {
            document: clip_parts(&document.into()),
            errors: ModelErrors::default(),
        }
    }

    /// Records an error. Values are quoted at most [`QUOTE_LIMIT`] characters long (with their
    /// length), in the field path and the message alike: a 1 MiB label value must not make a
    /// 1 MiB error.
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ModelError {
            document: self.document.clone(),
            field: clip_parts(&field.into()),
            message: shorten_quoted(&message.into()),
        });
    }

    /// How many errors so far; compare with a later `mark()` to see whether a part failed.
    pub(crate) fn mark(&self) -> usize {
        self.errors.len()
    }

    /// `Some(value)` if no error was added since `mark`.
    pub(crate) fn ok_since<T>(&self, mark: usize, value: T) -> Option<T> {
        (self.errors.len() == mark).then_some(value)
    }

    pub(crate) fn into_errors(self) -> ModelErrors {
        self.errors
    }
}

/// A document label (`Service ns/name`) or a field path (`metadata.labels.KEY`) with each part
/// cut to [`QUOTE_LIMIT`] characters.
pub(crate) fn clip_parts(text: &str) -> String {
    if text.chars().count() <= QUOTE_LIMIT {
        return text.to_string();
    }
    let mut out = String::new();
    let mut part = String::new();
    for c in text.chars() {
        if matches!(c, ' ' | '/' | '.') {
            out.push_str(&clip(&part));
            out.push(c);
            part.clear();
        } else {
            part.push(c);
        }
    }
    out.push_str(&clip(&part));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_values_are_quoted_short_with_their_length() {
        let huge = "v".repeat(900_000);
        let mut r = Report::new(format!("Service default/{huge}"));
        r.error(
            format!("metadata.labels.{huge}"),
            format!("label value {huge:?} must be at most 63 letters"),
        );
        let text = r.into_errors().to_string();
        assert!(text.len() < 600, "{} bytes", text.len());
        assert_eq!(text.matches("(900000 characters)").count(), 3, "{text}");
    }

    #[test]
    fn display_names_document_field_and_message_one_per_line() {
        let mut r = Report::new("HTTPRoute default/reviews");
        r.error("spec.rules[0].backends[1].weight", "must be 0..=100");
        r.error("", "something without a field");
        let errors = r.into_errors();
        assert_eq!(
            errors.to_string(),
            "HTTPRoute default/reviews: spec.rules[0].backends[1].weight: must be 0..=100\n\
             HTTPRoute default/reviews: something without a field"
        );
        assert_eq!(errors.len(), 2);
    }
}
