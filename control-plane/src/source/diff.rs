//! A unified line diff (`--- a`, `+++ b`, `@@ -l,n +l,n @@`, three lines of context), for the
//! dry run of an apply. Documents are short, so a longest-common-subsequence table is fine; past
//! [`MAX_CELLS`] the diff degrades to "everything removed, everything added" rather than use
//! much memory.

/// The largest LCS table (old lines × new lines) computed.
const MAX_CELLS: usize = 4_000_000;
/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Remove,
    Add,
}

/// The diff of `old` → `new`, with `old_name` / `new_name` in the header. Empty when equal.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edit_script(&a, &b);
    if ops.iter().all(|(op, _, _)| *op == Op::Keep) {
        return String::new();
    }

    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Group the script into hunks: changes with up to 2*CONTEXT kept lines between them.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _, _))| *op != Op::Keep)
        .map(|(i, _)| i)
        .collect();
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        let start = i.saturating_sub(CONTEXT);
        let end = (i + CONTEXT + 1).min(ops.len());
        match hunks.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = end,
            _ => hunks.push((start, end)),
        }
    }
    for (start, end) in hunks {
        let slice = &ops[start..end];
        let old_count = slice.iter().filter(|(op, _, _)| *op != Op::Add).count();
        let new_count = slice.iter().filter(|(op, _, _)| *op != Op::Remove).count();
        // Line numbers are 1-based; an empty side starts at the line before (as diff does).
        let (_, old_at, new_at) = slice[0];
        let old_start = if old_count == 0 { old_at } else { old_at + 1 };
        let new_start = if new_count == 0 { new_at } else { new_at + 1 };
        out.push_str(&format!(
            "@@ -{old_start},{old_count} +{new_start},{new_count} @@\n"
        ));
        for &(op, i, j) in slice {
            let (sign, line) = match op {
                Op::Keep => (' ', a[i]),
                Op::Remove => ('-', a[i]),
                Op::Add => ('+', b[j]),
            };
            out.push(sign);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The edit script as (op, index in `a`, index in `b`); for an `Add` the index in `a` is where
/// it goes, for a `Remove` the index in `b` likewise.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let mut ops: Vec<_> = (0..n).map(|i| (Op::Remove, i, 0)).collect();
        ops.extend((0..m).map(|j| (Op::Add, n, j)));
        return ops;
    }
    // lcs[i][j]: the length of the longest common subsequence of a[i..] and b[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Keep, i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
            // Removals before additions on a tie, as diff(1) prints them.
            ops.push((Op::Remove, i, j));
            i += 1;
        } else {
            ops.push((Op::Add, i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), "");
    }

    #[test]
    fn a_change_shows_with_context_and_line_numbers() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified("old", "new", old, new),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "two\n").replace("19\n", "nineteen\n");
        let d = unified("o", "n", &old, &new);
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-2\n+two\n"), "{d}");
        assert!(d.contains("-19\n+nineteen\n"), "{d}");
    }

    #[test]
    fn a_new_document_is_all_additions() {
        assert_eq!(
            unified("/dev/null", "new", "", "a\nb\n"),
            "--- /dev/null\n+++ new\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }
}
