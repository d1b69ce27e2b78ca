//! The file tree is the architecture: each folder of `src/` is one layer,
//! and code only reaches down. This test reads every `crate::…` path in the
//! non-test code of every source file (a `use` line or a path in the code,
//! so neither a re-export nor a fully written path can hide an upward
//! reference) and fails on one that names a higher layer.
//!
//! It also keeps dependencies where they belong, by crate name: `clap` (the
//! command line) only in `cli` and main.rs, `virt` (libvirt's bindings)
//! only in `libvirt`; and printing (`println!` and the like) only in `cli`:
//! every other layer returns what it has to say. And each check of guest
//! memory (`detect/checks/`) stands alone (`no_check_imports_another_check`).

use std::path::{Path, PathBuf};

/// Bottom first. A layer may use its own modules and every layer below.
const LAYERS: &[&[&str]] = &[
    &["base"],
    &["abi"],
    &["host"],
    &["guest"],
    &["kernel"],
    &["libvirt"],
    &["trace"],
    &["detect"],
    &["lifecycle"],
    &["report"],
    &["cli"],
];

/// Test support: may use anything, and nothing but tests may use it.
const TEST_SUPPORT: &str = "testkit";

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

/// `code` without its `//` comments (doc comments included), lines kept.
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code of a file that is not test code: test modules come last.
fn non_test_code(text: &str) -> String {
    without_comments(text.split("#[cfg(test)]").next().unwrap())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(s: &str) -> String {
    s.chars().take_while(|&c| is_ident(c)).collect()
}

/// The 1-based line of byte `at` in `code`.
fn line_at(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

/// The first name of every path that starts with `prefix` (`crate::`,
/// `super::`, `crate::detect::checks::`, ...) in comment-free `code`,
/// with its line: `PREFIX name`, and each item of `PREFIX{a, b::c, ...}`,
/// over several lines too.
fn path_heads(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().last().is_some_and(is_ident) {
            continue;
        }
        let after = &code[at + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The group's top-level items, up to its closing brace.
            let mut depth = 0;
            let mut item_start = 0;
            for (k, c) in group.char_indices() {
                let end = match c {
                    '{' => {
                        depth += 1;
                        false
                    }
                    '}' if depth == 0 => true,
                    '}' => {
                        depth -= 1;
                        false
                    }
                    ',' => depth == 0,
                    _ => false,
                };
                if end {
                    let item = &group[item_start..k];
                    let trimmed = item.trim_start();
                    let name = ident_at(trimmed);
                    if !name.is_empty() {
                        let pos = at + prefix.len() + 1 + item_start + (item.len() - trimmed.len());
                        out.push((line_at(code, pos), name));
                    }
                    item_start = k + 1;
                    if c == '}' {
                        break;
                    }
                }
            }
        } else {
            let name = ident_at(after);
            if !name.is_empty() {
                out.push((line_at(code, at), name));
            }
        }
    }
    out
}

/// Every `crate::NAME` in `code`, with its line number.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    path_heads(&without_comments(code), "crate::")
}

/// Dependencies only some layers may use, by crate name, with the
/// modules that may (`main` is main.rs).
const DEPENDENCIES: &[(&str, &[&str])] = &[
    ("clap", &["cli", "main"]),
    ("clap_complete", &["cli", "main"]),
    ("virt", &["libvirt"]),
];

/// Every use of crate `name` in comment-free `code`, by line: a path that
/// starts with it (`name::x`, `::name::x`, `use name::{...}`), `use name;`
/// or `extern crate name`. A path inside another (`crate::libvirt::x`,
/// `a::name::x`) is not it.
fn dependency_uses(code: &str, name: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(name) {
        let before = &code[..at];
        let after = &code[at + name.len()..];
        if before.chars().last().is_some_and(is_ident) || after.chars().next().is_some_and(is_ident)
        {
            continue;
        }
        // `::name` is a path from the crate root only if nothing precedes it.
        if let Some(b) = before.strip_suffix("::") {
            if b.chars().last().is_some_and(|c| is_ident(c) || c == '>') {
                continue;
            }
        }
        let path = after.trim_start().starts_with("::");
        let word_before = before.trim_end();
        let used = word_before.ends_with("use") || word_before.ends_with("extern crate");
        if path || used {
            out.push(line_at(code, at));
        }
    }
    out
}

/// Macros and calls that print, allowed only in `cli` (and main.rs).
const PRINTING: &[&str] = &[
    "print!",
    "println!",
    "eprint!",
    "eprintln!",
    "dbg!",
    "io::stdout(",
    "io::stderr(",
];

/// Every printing macro or standard stream in comment-free `code`, with
/// its line.
fn printing(code: &str) -> Vec<(usize, &'static str)> {
    let mut out = Vec::new();
    for form in PRINTING {
        for (at, _) in code.match_indices(form) {
            if !code[..at].chars().last().is_some_and(is_ident) {
                out.push((line_at(code, at), *form));
            }
        }
    }
    out.sort();
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
        let code = non_test_code(&text);
        for (line, name) in path_heads(&code, "crate::") {
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

fn all_sources() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    (src, files)
}

/// The command-line library only in `cli`, libvirt's bindings only in
/// `libvirt`, and printing only in `cli`: every other layer returns what
/// it has to say.
#[test]
fn dependencies_and_printing_stay_in_their_layer() {
    let (src, files) = all_sources();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for f in &files {
        let module = module_of(&src, f);
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        for (dep, allowed) in DEPENDENCIES {
            for line in dependency_uses(&code, dep) {
                seen += 1;
                if !allowed.contains(&module.as_str()) {
                    wrong.push(format!(
                        "{}:{line}: {module} uses the crate {dep} (only {} may)",
                        f.display(),
                        allowed.join(", ")
                    ));
                }
            }
        }
        for (line, form) in printing(&code) {
            seen += 1;
            if module != "cli" && module != "main" {
                wrong.push(format!(
                    "{}:{line}: {module} prints ({form}): return the text, and let cli print it",
                    f.display()
                ));
            }
        }
    }
    assert!(
        seen > 10,
        "only {seen} uses of clap, virt or printing found: is the scanner broken?"
    );
    assert!(
        wrong.is_empty(),
        "{} uses outside their layer:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Each check of guest memory stands alone: what checks share is in
/// `checks/mod.rs`, and no check uses another.
#[test]
fn no_check_imports_another_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/detect/checks");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    files.sort();
    let stem = |f: &PathBuf| f.file_stem().unwrap().to_string_lossy().into_owned();
    let checks: Vec<String> = files.iter().map(stem).filter(|s| s != "mod").collect();
    assert!(checks.len() > 5, "only {} checks found", checks.len());
    let mut wrong = Vec::new();
    for f in &files {
        let own = stem(f);
        if own == "mod" {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        for (line, name) in check_imports(&code, &own, &checks) {
            wrong.push(format!(
                "{}:{line}: check {own} uses check {name}",
                f.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} uses of one check by another (move what they share to checks/mod.rs):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The other checks (of `checks`) that comment-free `code`, check `own`'s,
/// uses, with their lines.
fn check_imports(code: &str, own: &str, checks: &[String]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = ["super::", "crate::detect::checks::"]
        .iter()
        .flat_map(|prefix| path_heads(code, prefix))
        .filter(|(_, name)| name != own && checks.contains(name))
        .collect();
    out.sort();
    out
}

#[test]
fn the_dependency_and_printing_scanners_see_every_form() {
    let code = without_comments(
        "use clap::{Args, Parser};\n#[derive(Clone, clap::ValueEnum)]\nuse crate::libvirt::connection;\nlet d: ::virt::domain::Domain;\nextern crate virt;\nuse virt;\nlet v = a::virt::x;\n// virt::x in a comment\nlet clapper = 1;\n",
    );
    assert_eq!(dependency_uses(&code, "clap"), [1, 2]);
    assert_eq!(dependency_uses(&code, "virt"), [4, 5, 6]);
    let code = without_comments(
        "println!(\"x\");\nstd::eprintln!(\"y\");\nlet w = write!(f, \"z\");\nprint!(\"a\"); dbg!(1);\n// println!(\"in a comment\")\nlet o = std::io::stdout();\ncmd.stdout(Stdio::null());\nmy_println!(1);\n",
    );
    let found: Vec<(usize, &str)> = printing(&code);
    assert_eq!(
        found,
        [
            (1, "println!"),
            (2, "eprintln!"),
            (4, "dbg!"),
            (4, "print!"),
            (6, "io::stdout(")
        ]
    );
}

#[test]
fn the_check_import_scanner_sees_every_form() {
    let checks: Vec<String> = ["code", "idt", "kprobes", "syscall_dispatch"]
        .map(String::from)
        .into();
    let code = without_comments(
        "use super::code::relocated;\nuse super::{capped, idt::IDT, Check};\nuse super::{\n    kprobes,\n    Context,\n};\nlet x = super::subtract(a, b);\nuse crate::detect::checks::code::x;\n//! see [`super::idt`]\nlet y = super::syscall_dispatch::f();\n",
    );
    let found: Vec<(usize, String)> = check_imports(&code, "syscall_dispatch", &checks);
    assert_eq!(
        found,
        [
            (1, "code".to_string()),
            (2, "idt".to_string()),
            (4, "kprobes".to_string()),
            (8, "code".to_string())
        ]
    );
}
