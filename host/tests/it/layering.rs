//! The house rules of `host/src`, checked on the source: each area depends
//! only on the areas below it (the order of `lib.rs`'s table), no module
//! depends on itself through others, and only `plugin/` touches wasmtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The areas, lowest first: each may use only those before it.
const ORDER: [&str; 13] = [
    "log_limit",
    "log_sink",
    "metrics",
    "plugin",
    "upstream",
    "api",
    "config",
    "fleet",
    "policy",
    "proxy",
    "admin",
    "server",
    "cli",
];

/// Every `.rs` file under `host/src` with its module path (`proxy::pipeline`).
fn modules() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("lib.rs") && !f.ends_with("main.rs"))
        .map(|f| {
            let relative = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            (parts.join("::"), std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The source without its `#[cfg(test)]` modules (tests may reach anywhere).
fn product_code(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod tests").next().unwrap()
}

/// The modules `text` names as `crate::a::b...`, resolved to the longest
/// known module path.
fn uses(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(&candidate) {
                found.insert(candidate);
                break;
            }
        }
    }
    found
}

fn area(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn areas_depend_only_on_areas_below_them() {
    let modules = modules();
    let known: BTreeSet<String> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut wrong = Vec::new();
    for (module, text) in &modules {
        let Some(mine) = ORDER.iter().position(|a| *a == area(module)) else {
            wrong.push(format!("{module}: area not in the order"));
            continue;
        };
        for used in uses(product_code(text), &known) {
            let theirs = ORDER.iter().position(|a| *a == area(&used)).unwrap();
            if theirs > mine {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_module_depends_on_itself() {
    let modules = modules();
    let known: BTreeSet<String> = modules.iter().map(|(m, _)| m.clone()).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, text)| {
            let mut used = uses(product_code(text), &known);
            // A module may use its own children and its parent's re-exports.
            used.retain(|u| {
                u != m && !u.starts_with(&format!("{m}::")) && !m.starts_with(&format!("{u}::"))
            });
            (m.clone(), used)
        })
        .collect();
    fn reaches(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(from).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) && reaches(graph, next, to, seen) {
                return true;
            }
        }
        false
    }
    let cycles: Vec<&String> = graph
        .keys()
        .filter(|m| reaches(&graph, m, m, &mut BTreeSet::new()))
        .collect();
    assert!(cycles.is_empty(), "modules in a cycle: {cycles:?}");
}

#[test]
fn only_the_plugin_area_uses_wasmtime() {
    let users: Vec<String> = modules()
        .into_iter()
        .filter(|(m, text)| {
            area(m) != "plugin" && (text.contains("wasmtime::") || text.contains("wasmtime_wasi"))
        })
        .map(|(m, _)| m)
        .collect();
    assert!(users.is_empty(), "wasmtime outside plugin/: {users:?}");
}
