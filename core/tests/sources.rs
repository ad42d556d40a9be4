//! Checks on the repository's own source text.
#![allow(clippy::disallowed_methods)] // reads the source files

use std::path::{Path, PathBuf};

/// Every source file under the workspace's code folders (build output and packages skipped).
fn source_files(root: &Path) -> Vec<PathBuf> {
    let mut todo: Vec<PathBuf> =
        ["core", "adapters", "examples", "tests", "bench", "fuzz", "scripts"]
            .iter()
            .map(|d| root.join(d))
            .collect();
    let mut files = Vec::new();
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | "node_modules" | "corpus" | "regressions")
                    && !name.starts_with('.')
                {
                    todo.push(path);
                }
            } else if has_source_extension(&path) {
                files.push(path);
            }
        }
    }
    files
}

fn has_source_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("rs" | "toml" | "md" | "sh" | "py" | "js" | "ts")
    )
}

#[test]
fn no_source_cites_the_design_brief_outside_the_repository() {
    // Split so this file does not match itself.
    let needle = concat!("DESIGN", ".md");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = source_files(&root);
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let mut citing = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.contains(needle) {
                let shown = path.strip_prefix(&root).unwrap_or(&path);
                citing.push(format!("{}:{}: {}", shown.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(citing.is_empty(), "cite ARCHITECTURE.md or state the fact:\n{}", citing.join("\n"));
}
