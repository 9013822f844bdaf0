//! `meshctl apply -f FILE|DIR|-`: every document of every file, sent to meshd as one set (all
//! of it is applied, or none of it), and one line per document as kubectl prints it:
//! `httproute/reviews configured`.
//!
//! Files are read and their YAML / JSON syntax checked here, so that a syntax error names its
//! file; everything else (kinds, fields, references) is meshd's to check, and its errors, one
//! per line, are printed as they come, with `document #N` turned back into the file it was in.

use crate::admin::Client;
use crate::output::{self, Format};
use crate::{EXIT_FAILURE, EXIT_USAGE, Failure};
use mesh_admin_api::{ApplyResults, DocumentKey, DocumentOutcome, PlanResults};
use mesh_model::text as syntax;
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory (its *.yaml, *.yml and *.json files, not recursive) or `-` for
    /// standard input; repeat for more.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    files: Vec<String>,
    /// Have meshd validate the documents and say what would change, without storing anything.
    #[arg(long)]
    dry_run: bool,
}

/// Where a document came from, for error messages: `-f x.yaml` and its position in the file.
pub(crate) struct Origin {
    file: String,
    index: usize,
}

pub async fn run(
    args: &ApplyArgs,
    format: Format,
    api: Result<Client, Failure>,
) -> Result<(), Failure> {
    let (docs, origins) = read_documents(&args.files)?;
    let path = if args.dry_run {
        "/api/v1/documents?dryRun=true"
    } else {
        "/api/v1/documents"
    };
    let api = api?;
    let say_all = |results: &mut dyn Iterator<Item = (&DocumentKey, DocumentOutcome)>| {
        let note = args.dry_run.then_some("dry run");
        for (key, outcome) in results {
            say!(
                "{}",
                output::outcome(&key.kind, &key.name, outcome.as_str(), note)
            );
        }
    };
    if args.dry_run {
        let plan: PlanResults = send(api, path, docs, &origins).await?;
        output::emit(format, &plan, |p| {
            say_all(&mut p.results.iter().map(|r| (&r.key, r.outcome)))
        })
    } else {
        let applied: ApplyResults = send(api, path, docs, &origins).await?;
        output::emit(format, &applied, |a| {
            say_all(&mut a.results.iter().map(|r| (&r.key, r.outcome)))
        })
    }
}

/// Every document of every `-f` argument, with where each came from; an error if there is
/// none.
pub(crate) fn read_documents(files: &[String]) -> Result<(Vec<Value>, Vec<Origin>), Failure> {
    let mut docs = Vec::new();
    let mut origins = Vec::new();
    for arg in files {
        for (file, text) in read_arg(arg)? {
            let parsed = parse(&file, &text)?;
            for (index, doc) in parsed.into_iter().enumerate() {
                docs.push(doc);
                origins.push(Origin {
                    file: if file == "-" {
                        "stdin".into()
                    } else {
                        file.clone()
                    },
                    index: index + 1,
                });
            }
        }
    }
    if docs.is_empty() {
        let files: Vec<String> = files.iter().map(|f| format!("-f {f}")).collect();
        return Err(Failure::new(
            EXIT_FAILURE,
            format!("no documents in {}", files.join(", ")),
        ));
    }
    Ok((docs, origins))
}

/// Posts the documents as one set; meshd's errors name the files the documents came from.
pub(crate) async fn send<T: serde::de::DeserializeOwned>(
    api: Client,
    path: &str,
    docs: Vec<Value>,
    origins: &[Origin],
) -> Result<T, Failure> {
    api.submit(path, &Value::Array(docs))
        .await
        .map_err(|mut f| {
            f.message = name_documents(&f.message, origins);
            f
        })
}

/// The (label, text) of each file an `-f` argument names.
fn read_arg(arg: &str) -> Result<Vec<(String, String)>, Failure> {
    let label = format!("-f {arg}");
    if arg == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::new(EXIT_USAGE, format!("{label}: {}", io_message(&e))))?;
        return Ok(vec![("-".to_string(), utf8_text(&label, bytes)?)]);
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("{label}: {}", io_message(&e))))?;
    let files = if meta.is_dir() {
        let files = document_files(path)
            .map_err(|e| Failure::new(EXIT_USAGE, format!("{label}: {}", io_message(&e))))?;
        if files.is_empty() {
            return Err(Failure::new(
                EXIT_USAGE,
                format!("{label}: no *.yaml, *.yml or *.json files in this directory"),
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|file| {
            let shown = file.display().to_string();
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("-f {shown}: {}", io_message(&e))))?;
            let text = utf8_text(&format!("-f {shown}"), bytes)?;
            Ok((shown, text))
        })
        .collect()
}

/// The text of a file, or where it is not UTF-8 (line, column and byte index).
fn utf8_text(label: &str, bytes: Vec<u8>) -> Result<String, Failure> {
    String::from_utf8(bytes).map_err(|e| {
        let message = match syntax::utf8(e.as_bytes()) {
            Err(where_) => where_,
            Ok(_) => e.to_string(),
        };
        Failure::new(EXIT_FAILURE, format!("{label}: {message}"))
    })
}

/// The `*.yaml`, `*.yml` and `*.json` files directly in `dir`, by name (hidden files skipped,
/// as meshd's `--config-dir` does).
fn document_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !hidden && matches!(ext.as_deref(), Some("yaml" | "yml" | "json")) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of one file: JSON (an object or an array of objects) for `*.json`, else a
/// YAML stream (empty documents skipped). Syntax errors name the file.
fn parse(file: &str, text: &str) -> Result<Vec<Value>, Failure> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(EXIT_FAILURE, format!("-f {file}: invalid {what}: {e}"))
    };
    if file.to_ascii_lowercase().ends_with(".json") {
        // Strict, as meshd is: a repeated key is an error with its path, not the last one wins.
        return match syntax::parse_json(text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(value) => Ok(vec![value]),
            Err(e) => Err(invalid("JSON", &e)),
        };
    }
    syntax::check_yaml_characters(text).map_err(|e| invalid("YAML", &e))?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Through serde_yaml_ng's Value, which refuses duplicate keys (as meshd does).
        let value = serde_yaml_ng::Value::deserialize(de)
            .map_err(|e| invalid("YAML", &syntax::yaml_message(&e)))?;
        let value = serde_json::to_value(value)
            .map_err(|e| invalid("YAML", &format!("document #{}: {e}", i + 1)))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// meshd names a document it cannot identify `document #N` (its position in the request);
/// this says which file that was.
fn name_documents(message: &str, origins: &[Origin]) -> String {
    const MARK: &str = "document #";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let origin = after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| origins.get(n));
        match origin {
            Some(o) => out.push_str(&format!("{} document #{}", o.file, o.index)),
            None => out.push_str(&rest[at..at + MARK.len() + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// An I/O error as one line without Rust's `(os error N)` suffix.
fn io_message(e: &std::io::Error) -> String {
    crate::admin::without_os_error(&e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_documents_are_named_by_file() {
        let origins = vec![
            Origin {
                file: "a.yaml".into(),
                index: 1,
            },
            Origin {
                file: "b.yaml".into(),
                index: 2,
            },
        ];
        assert_eq!(
            name_documents(
                "document #2: kind: is required\nService (document #1): metadata.name: is required\nHTTPRoute a/b: x",
                &origins
            ),
            "b.yaml document #2: kind: is required\nService (a.yaml document #1): metadata.name: is required\nHTTPRoute a/b: x"
        );
        assert_eq!(name_documents("document #9: x", &origins), "document #9: x");
    }

    #[test]
    fn io_errors_read_like_the_shell() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
    }

    #[test]
    fn yaml_streams_skip_empty_documents_and_name_the_file_on_errors() {
        let docs = parse("x.yaml", "---\n# nothing\n---\na: 1\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        let e = parse("x.yaml", "a: [1\n").err().unwrap();
        assert_eq!(e.code, EXIT_FAILURE);
        assert!(
            e.message.starts_with("-f x.yaml: invalid YAML: "),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\n'), "{}", e.message);
        let e = parse("x.yaml", "a: 1\na: 2\n").err().unwrap();
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }
}
