//! The file tree is the architecture: each folder of `src/` is one layer,
//! and code only reaches down. This test reads every `crate::…` path in the
//! non-test code of every source file (a `use` line or a path in the code,
//! so neither a re-export nor a fully written path can hide an upward
//! reference) and fails on one that names a higher layer.

use std::path::{Path, PathBuf};

/// Bottom first. A layer may use its own modules and every layer below.
const LAYERS: &[&[&str]] = &[
    &["error", "escape"],
    &["abi"],
    &["host"],
    &["guest"],
    &["kernel"],
    &["libvirt"],
    &["trace"],
    &["detect"],
    &["lifecycle"],
    &["cli"],
];

/// Test support: may use anything, and nothing but tests may use it.
const TEST_SUPPORT: &str = "fuzzing";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file belongs to: its folder under src/, or its own name.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` in `code`, with its line number.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                if name.is_empty() {
                    // `use crate::{a, b}`: every name in the braces.
                    if let Some(group) = after.strip_prefix('{') {
                        for part in group.split(['}', ',']) {
                            let n2: String = part
                                .trim()
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                .collect();
                            if !n2.is_empty() {
                                out.push((n + 1, n2));
                            }
                        }
                    }
                } else {
                    out.push((n + 1, name));
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn imports_only_reach_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let module = module_of(&src, f);
        if module == "lib" || module == TEST_SUPPORT {
            continue;
        }
        let module = if module == "main" {
            "cli".to_string()
        } else {
            module
        };
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("{}: module {module} is in no layer", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        // Test modules come last in a file; they may use test helpers.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (line, name) in crate_paths(code) {
            checked += 1;
            if name == TEST_SUPPORT {
                wrong.push(format!(
                    "{}:{line}: non-test code uses {TEST_SUPPORT}",
                    f.display()
                ));
                continue;
            }
            match layer_of(&name) {
                Some(l) if l <= own => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: {module} (layer {own}) uses crate::{name}, a higher layer",
                    f.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: crate::{name} is in no layer",
                    f.display()
                )),
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: is the scanner broken?"
    );
    assert!(
        wrong.is_empty(),
        "{} upward or unknown references:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_form() {
    let code = "use crate::trace::rings;\nlet x = crate::detect::check();\nuse crate::{abi, host::files};\n// crate::cli in a comment\n";
    let names: Vec<String> = crate_paths(code).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["trace", "detect", "abi", "host"]);
}
