//! `--config-dir`: a directory of documents, applied at start and whenever a file changes.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory (not in subdirectories;
//! names starting with `.` are skipped, which leaves out editor swap files and the `..data`
//! links of a mounted ConfigMap while following the file links next to them) is read, and all
//! of their documents are applied as one set with the actor [`ACTOR`]. If any file fails, each
//! error is logged on its own line with the file's path, and the whole set is skipped: the
//! last good model stays in effect until the files change again.
//!
//! Changes are found by polling every [`POLL_INTERVAL`] for a different list of
//! (path, modification time, length): no inotify, which also works on network and ConfigMap
//! volumes. Files add and update documents; a file removed from the directory deletes nothing
//! (delete with `meshctl delete`), so that an emptied or half-synced directory never wipes the
//! mesh.

use super::{Documents, Outcome};
use crate::model::Document;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The actor of changes from the directory, in the revision history and the audit log.
pub const ACTOR: &str = "config-dir";
/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The polling task; stops when dropped.
#[derive(Debug)]
pub struct ConfigDirWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigDirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the directory looked like: (path, modification time, length) of each file, sorted.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The state between two polls.
#[derive(Default)]
struct Poll {
    /// The directory as last processed (applied, or refused and logged).
    seen: Option<Fingerprint>,
    /// The last error listing the directory, so that a lasting one is logged once.
    list_error: Option<String>,
}

// === impl Documents ===

impl Documents {
    /// Applies `dir` now, then watches it every [`POLL_INTERVAL`] until the returned watcher
    /// is dropped (`None` without a directory). Problems are logged, never returned: a bad file
    /// must not stop meshd.
    pub async fn watch_config_dir(&self, dir: Option<PathBuf>) -> Option<ConfigDirWatcher> {
        let dir = dir?;
        let documents = self.clone();
        let mut poll = Poll::default();
        documents.sync_config_dir(&dir, &mut poll).await;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the first sync just ran
            loop {
                tick.tick().await;
                documents.sync_config_dir(&dir, &mut poll).await;
            }
        });
        Some(ConfigDirWatcher { task })
    }

    /// One poll: if the directory changed, read and apply it.
    async fn sync_config_dir(&self, dir: &Path, poll: &mut Poll) {
        let listed = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || fingerprint(&dir)).await
        };
        let print = match listed {
            Ok(Ok(print)) => {
                poll.list_error = None;
                print
            }
            Ok(Err(e)) => {
                let message = format!("config-dir {}: cannot list: {e}", dir.display());
                if poll.list_error.as_ref() != Some(&message) {
                    tracing::warn!("{message}; the last good configuration stays in effect");
                    poll.list_error = Some(message);
                }
                return;
            }
            Err(e) => {
                tracing::error!("config-dir {}: the scan task failed: {e}", dir.display());
                return;
            }
        };
        if poll.seen.as_ref() == Some(&print) {
            return;
        }
        let paths: Vec<PathBuf> = print.iter().map(|(p, _, _)| p.clone()).collect();
        // Remember this state whatever happens below, except for a store failure (retried on
        // the next poll): a bad file is reported once, not every second.
        poll.seen = Some(print);
        let read = tokio::task::spawn_blocking(move || read_files(paths)).await;
        let (docs, origin, failed) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("config-dir {}: the read task failed: {e}", dir.display());
                poll.seen = None;
                return;
            }
        };
        if failed {
            skipped(dir);
            return;
        }
        if docs.is_empty() {
            tracing::debug!(dir = %dir.display(), "config-dir: no documents");
            return;
        }
        let count = docs.len();
        match self.apply(docs, ACTOR).await {
            Ok(applied) => {
                let changed = applied
                    .iter()
                    .filter(|a| a.outcome != Outcome::Unchanged)
                    .count();
                tracing::info!(
                    dir = %dir.display(),
                    documents = count,
                    changed,
                    "config-dir applied"
                );
            }
            Err(super::ApplyError::Invalid(errors)) => {
                for e in &errors {
                    let files = origin.get(&e.document).map_or_else(
                        || dir.display().to_string(),
                        |paths| {
                            paths
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    );
                    tracing::warn!("config-dir {files}: {e}");
                }
                skipped(dir);
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("config-dir {}: {line}", dir.display());
                }
                tracing::error!(
                    "config-dir {}: not applied; retrying on the next poll",
                    dir.display()
                );
                poll.seen = None;
            }
        }
    }
}

fn skipped(dir: &Path) {
    tracing::warn!(
        "config-dir {}: nothing applied; the last good configuration stays in effect until the files change",
        dir.display()
    );
}

/// Whether meshd reads `path` from the directory.
fn is_document_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !hidden && matches!(ext.as_deref(), Some("yaml" | "yml" | "json"))
}

/// The document files of `dir` (symbolic links followed) with their mtime and length.
fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !is_document_file(&path) {
            continue;
        }
        // Follows links; a dangling one (or a file removed meanwhile) is left out.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            files.push((path, meta.modified().ok(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Which files a document label (`Kind ns/name`, as errors name documents) came from.
type Origin = BTreeMap<String, Vec<PathBuf>>;

/// Reads and parses every file, logging each problem with its path. Returns the documents,
/// where each came from, and whether any file failed.
fn read_files(paths: Vec<PathBuf>) -> (Vec<Document>, Origin, bool) {
    let mut docs = Vec::new();
    let mut origin = Origin::new();
    let mut failed = false;
    for path in paths {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                failed = true;
                tracing::warn!("config-dir {}: cannot read: {e}", path.display());
                continue;
            }
        };
        // Where a byte is not UTF-8 (line, column, byte index), as the admin API says it.
        let text = match mesh_model::text::utf8(&bytes) {
            Ok(text) => text,
            Err(e) => {
                failed = true;
                tracing::warn!("config-dir {}: {e}", path.display());
                continue;
            }
        };
        let parsed = if is_json(&path) {
            Document::parse_json(text).map(|d| vec![d])
        } else {
            Document::parse_yaml(text)
        };
        match parsed {
            Ok(parsed) => {
                for d in parsed {
                    origin
                        .entry(d.key().to_string())
                        .or_default()
                        .push(path.clone());
                    docs.push(d);
                }
            }
            Err(errors) => {
                failed = true;
                for e in &errors {
                    tracing::warn!("config-dir {}: {e}", path.display());
                }
            }
        }
    }
    (docs, origin, failed)
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_yaml_and_json_files_are_read() {
        for yes in ["a.yaml", "b.yml", "c.json", "D.YAML"] {
            assert!(is_document_file(Path::new(yes)), "{yes}");
        }
        for no in [".a.yaml", "a.yaml.swp", "a.txt", "..data", "yaml"] {
            assert!(!is_document_file(Path::new(no)), "{no}");
        }
    }
}
