//! The crate's module graph has no cycle: no top-level module uses one
//! that uses it back, directly or through others. Read from the sources
//! (every `crate::<module>` path outside comments), so that a new import
//! that closes a loop fails here rather than in a reviewer's head.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The top-level module a file belongs to (`server/conn.rs` → `server`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What the crate's root re-exports, by name, with the module each comes
/// from (`Handle` → `handle`): `crate::Handle` uses that module too.
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut exports = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (module, names) = path.split_once("::").unwrap_or((path, ""));
        for name in names.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if name.chars().next().is_some_and(char::is_uppercase) {
                exports.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    exports
}

/// `code` without its comments.
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first names after every `PREFIX` path in `code`: `prefix::a::b`
/// gives `a`, a group `prefix::{a, b::c}` gives `a` and `b`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let group = if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = inner
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(inner.len(), |(j, _)| j);
            inner[..end]
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect::<Vec<_>>()
        } else {
            vec![rest.to_owned()]
        };
        for path in group {
            let name: String = path
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Panics with the cycle if `graph` has one.
fn assert_acyclic(what: &str, graph: &BTreeMap<String, BTreeSet<String>>) {
    fn visit(
        what: &str,
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("{what}: module cycle {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(what, next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(what, m, graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m != "lib")
        .collect();
    let exports = root_exports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(exports.contains_key("Handle"), "{exports:?}");

    // Top-level modules: `crate::module` paths, and names the root
    // re-exports.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Inside each directory module, its files (but `mod.rs`, the parent
    // that declares and re-exports them): `super::file` and
    // `crate::module::file` paths.
    let mut inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" {
            continue;
        }
        let code = without_comments(&std::fs::read_to_string(file).unwrap());
        let used = names_after(&code, "crate::").into_iter().filter_map(|n| {
            if modules.contains(&n) {
                Some(n)
            } else {
                exports.get(&n).cloned()
            }
        });
        graph
            .entry(from.clone())
            .or_default()
            .extend(used.filter(|m| *m != from));

        let rel = file.strip_prefix(src.join(&from)).ok();
        let Some(name) = rel
            .filter(|r| r.components().count() == 1)
            .and_then(|r| r.file_stem())
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "mod")
        else {
            continue;
        };
        let siblings: BTreeSet<String> = std::fs::read_dir(src.join(&from))
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let stem = p.file_stem()?.to_string_lossy().into_owned();
                (stem != "mod" && stem != name).then_some(stem)
            })
            .collect();
        let mut used = names_after(&code, "super::");
        used.extend(names_after(&code, &format!("crate::{from}::")));
        inner
            .entry(from.clone())
            .or_default()
            .entry(name)
            .or_default()
            .extend(used.into_iter().filter(|n| siblings.contains(n)));
    }
    assert_acyclic("crate", &graph);
    for (module, files) in &inner {
        assert_acyclic(module, files);
    }

    // The graph ARCHITECTURE.md draws: the leaves import nothing stateful,
    // the lifecycle knows neither the server nor the handoff.
    for leaf in ["config", "error", "stats"] {
        let deps = &graph[leaf];
        assert!(
            deps.iter().all(|d| d == "config"),
            "{leaf} must stay a leaf, uses {deps:?}"
        );
    }
    for (from, not) in [
        ("lifecycle", "server"),
        ("lifecycle", "handoff"),
        ("handoff", "server"),
    ] {
        assert!(!graph[from].contains(not), "{from} uses {not}: {graph:#?}");
    }
    eprintln!("{graph:#?}\n{inner:#?}");
}
