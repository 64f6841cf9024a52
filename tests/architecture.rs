//! The shape of the tree, checked: the daemon's top-level modules import each other
//! without cycles, none of them uses the lab crate, and `unsafe` appears only in the
//! syscall module. Reads `src/` as text; test-only code (unit test modules, the
//! fuzzing entry points, fixtures) is left out, since it may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that exist only for tests and fuzzing.
const TEST_ONLY: &[&str] = &["fuzzing", "testkit"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a source file without comments and without its unit test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::name` the code mentions.
fn crate_refs(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Top-level module → the top-level modules its non-test code refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph, and every non-test source file with its code.
fn graph() -> (Graph, Vec<(PathBuf, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    let mut sources = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" || TEST_ONLY.contains(&top.as_str()) {
            continue;
        }
        // Unit tests kept in a file of their own, and the stores' conformance suite.
        if f.file_name().is_some_and(|n| n == "tests.rs" || n == "conformance.rs") {
            continue;
        }
        let c = code(&f);
        let refs = crate_refs(&c);
        g.entry(top.clone())
            .or_default()
            .extend(refs.into_iter().filter(|r| *r != top));
        sources.push((f, c));
    }
    (g, sources)
}

#[test]
fn the_daemon_modules_import_each_other_without_cycles() {
    let (g, _) = graph();
    assert!(g.len() >= 10, "found the modules: {:?}", g.keys());
    // Depth-first search from every module: a module met again on the current
    // path closes a cycle.
    fn visit<'a>(n: &'a str, g: &'a Graph, path: &mut Vec<&'a str>, explored: &mut BTreeSet<&'a str>) {
        if let Some(i) = path.iter().position(|p| *p == n) {
            panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
        }
        if !explored.insert(n) {
            return;
        }
        path.push(n);
        for d in g.get(n).into_iter().flatten() {
            if g.contains_key(d) {
                visit(d, g, path, explored);
            }
        }
        path.pop();
    }
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut BTreeSet::new());
    }
    // The leaves stay leaves.
    for leaf in ["names", "telemetry", "wire", "route", "sys"] {
        let deps: Vec<&String> = g[leaf].iter().filter(|d| g.contains_key(*d)).collect();
        assert!(deps.is_empty(), "{leaf} is a leaf module but imports {deps:?}");
    }
    // The model decides; it never reaches up into the faces or the assembly.
    for (lower, upper) in [
        ("model", "control"),
        ("model", "app"),
        ("model", "config"),
        ("store", "model"),
    ] {
        assert!(!g[lower].contains(upper), "{lower} imports {upper}");
    }
}

#[test]
fn no_daemon_module_uses_the_lab() {
    let (_, sources) = graph();
    for (f, c) in sources {
        assert!(
            !c.contains("tunloom_lab") && !c.contains("testbed") && !c.contains("netns::"),
            "{} refers to the lab",
            f.display()
        );
    }
}

#[test]
fn unsafe_lives_only_in_the_syscall_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let in_sys = f.strip_prefix(&src).unwrap().starts_with("sys");
        let c = code(&f);
        if !in_sys {
            assert!(!c.contains("unsafe "), "{} has unsafe code", f.display());
        }
    }
}
