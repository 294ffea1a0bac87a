//! Tidy: the architecture checked by tests, as rust-analyzer's `tidy` does. It reads the
//! sources and the documents, never runs a browser, and owns no code of the gateway.
//!
//! - **Import edges.** `ARCHITECTURE.md`'s table "Allowed imports" has one row per top-level
//!   module and the modules it may import. Every `crate::<module>` path (a `use crate::{a, b}`
//!   group too), every `super::` chain that climbs to the crate root, and `ingot::<module>` in
//!   `main.rs` is an edge; one the table does not allow fails, naming the file and line, and so
//!   does a cycle (in the table or in the code). Comments, strings and `#[cfg(test)]` items are
//!   left out: unit tests may use `crate::testing`.
//! - **Module docs.** Every file of `src/` starts with a `//!` comment (what the module owns
//!   and what it must not touch).
//! - **Metric help.** Every metric name declared in `src/telemetry.rs` has a `describe_*!`, no
//!   other module names a metric (`counter!`, `gauge!`, `histogram!`), and a gateway's
//!   `/metrics` has a `# HELP` line for every `# TYPE` line.
//!
//! Each checker is a function of strings, and a unit test below plants a violation in it and
//! checks that it is caught, so none of these tests passes by finding nothing to check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The heading of the table of allowed edges in `ARCHITECTURE.md`.
const TABLE_HEADING: &str = "### Allowed imports";

/// The row of the table whose imports every module may use.
const EVERY_MODULE: &str = "*";

/// The pseudo-module name of `src/main.rs` (a crate of its own that imports `ingot::*`).
const MAIN: &str = "main";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// The table of allowed edges.

/// What each top-level module may import, from `ARCHITECTURE.md`.
#[derive(Debug, Default)]
struct Rules {
    allowed: BTreeMap<String, BTreeSet<String>>,
    /// What every module may import (the `*` row): the leaves. The leaves themselves do not
    /// get this row, so that they cannot import each other unless their own rows say so.
    everyone: BTreeSet<String>,
}

impl Rules {
    fn allows(&self, from: &str, to: &str) -> bool {
        (self.everyone.contains(to) && !self.everyone.contains(from))
            || self.allowed.get(from).is_some_and(|a| a.contains(to))
    }
}

/// Parses the table under [`TABLE_HEADING`]: `| `module` | `a`, `b` |` rows (`—` or nothing
/// for none). Panics when the heading or the table is missing or a row is malformed.
fn parse_table(markdown: &str) -> Rules {
    let start = markdown
        .find(TABLE_HEADING)
        .unwrap_or_else(|| panic!("no {TABLE_HEADING:?} heading"));
    let mut rules = Rules::default();
    let rows = markdown[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'));
    for row in rows.skip(2) {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 2, "a row of two cells: {row}");
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .filter(|n| !n.is_empty() && n != "—")
                .collect()
        };
        let from = cells[0].trim().trim_matches('`').to_owned();
        let to = names(cells[1]);
        if from == EVERY_MODULE {
            rules.everyone = to;
        } else {
            assert!(
                rules.allowed.insert(from.clone(), to).is_none(),
                "{from} has two rows"
            );
        }
    }
    assert!(!rules.allowed.is_empty(), "the table has no rows");
    rules
}

// ---------------------------------------------------------------------------------------
// Reading the sources.

/// A token of Rust source with comments, strings and character literals removed.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Splits `source` into tokens with their line numbers, dropping comments, string and
/// character literals (raw strings included) and lifetimes.
fn tokens(source: &str) -> Vec<(usize, Tok)> {
    let s: Vec<char> = source.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let skip_to = |i: usize, line: &mut usize, end: usize| {
        *line += s[i..end.min(s.len())]
            .iter()
            .filter(|c| **c == '\n')
            .count();
        end
    };
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            let end = (i..s.len()).find(|&j| s[j] == '\n').unwrap_or(s.len());
            i = end;
        } else if c == '/' && next == Some('*') {
            i = skip_to(i, &mut line, block_comment_end(&s, i));
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            let open = if c == 'b' { i + 1 } else { i };
            i = skip_to(i, &mut line, string_end(&s, open));
        } else if let Some(end) = raw_string_end(&s, i) {
            i = skip_to(i, &mut line, end);
        } else if c == '\'' {
            i = char_or_lifetime_end(&s, i);
        } else if c.is_alphanumeric() || c == '_' {
            let end = (i..s.len())
                .find(|&j| !(s[j].is_alphanumeric() || s[j] == '_'))
                .unwrap_or(s.len());
            out.push((line, Tok::Ident(s[i..end].iter().collect())));
            i = end;
        } else if c == ':' && next == Some(':') {
            out.push((line, Tok::Path));
            i += 2;
        } else {
            out.push((line, Tok::Punct(c)));
            i += 1;
        }
    }
    out
}

fn block_comment_end(s: &[char], start: usize) -> usize {
    let (mut i, mut depth) = (start, 0);
    while i + 1 < s.len() {
        match (s[i], s[i + 1]) {
            ('/', '*') => (depth, i) = (depth + 1, i + 2),
            ('*', '/') => {
                (depth, i) = (depth - 1, i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// The index after the `"` that closes the string opening at `open`.
fn string_end(s: &[char], open: usize) -> usize {
    let mut i = open + 1;
    while i < s.len() {
        match s[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// The end of a raw string (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `i`, if one does.
fn raw_string_end(s: &[char], i: usize) -> Option<usize> {
    let r = if s[i] == 'b' { i + 1 } else { i };
    if s.get(r) != Some(&'r') || (i > 0 && (s[i - 1].is_alphanumeric() || s[i - 1] == '_')) {
        return None;
    }
    let hashes = s[r + 1..].iter().take_while(|c| **c == '#').count();
    if s.get(r + 1 + hashes) != Some(&'"') {
        return None;
    }
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let body = r + 2 + hashes;
    let end = (body..s.len())
        .find(|&j| s[j..].starts_with(&close))
        .map_or(s.len(), |j| j + close.len());
    Some(end)
}

/// Skips a character literal (`'{'`, `'\n'`, `'\u{7f}'`) or a lifetime (`'a`).
fn char_or_lifetime_end(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        return (i + 2..s.len())
            .find(|&j| s[j] == '\'')
            .map_or(s.len(), |j| j + 1);
    }
    if s.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    // A lifetime or a label: the quote alone; its name becomes an identifier.
    i + 1
}

/// The module path of a source file: `src/a/b.rs` is `[a, b]`, `src/a/mod.rs` is `[a]`.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_prefix("src/").unwrap_or(rel);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut path: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// One import of another top-level module: where, and which module.
#[derive(Debug, Clone, PartialEq)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// The names a path continues with after `crate::` (or `ingot::`) at `toks[at]`: one
/// identifier, or the first identifier of each item of a `{…}` group.
fn heads(toks: &[(usize, Tok)], at: usize) -> Vec<(usize, String)> {
    match toks.get(at) {
        Some((line, Tok::Ident(name))) => vec![(*line, name.clone())],
        Some((_, Tok::Punct('{'))) => {
            let (mut depth, mut expect, mut found) = (0, false, Vec::new());
            for (line, tok) in &toks[at..] {
                match tok {
                    Tok::Punct('{') => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Punct(',') if depth == 1 => expect = true,
                    Tok::Ident(name) if depth == 1 => {
                        if expect && name != "self" {
                            found.push((*line, name.clone()));
                        }
                        expect = false;
                    }
                    _ if depth == 1 => expect = false,
                    _ => {}
                }
            }
            found
        }
        _ => Vec::new(),
    }
}

/// Whether the tokens at `at` are `#[cfg(test)]`.
fn is_cfg_test(toks: &[(usize, Tok)], at: usize) -> bool {
    let want = ["#", "[", "cfg", "(", "test", ")", "]"];
    want.iter()
        .enumerate()
        .all(|(k, w)| match toks.get(at + k) {
            Some((_, Tok::Ident(name))) => name == w,
            Some((_, Tok::Punct(c))) => w.len() == 1 && w.starts_with(*c),
            _ => false,
        })
}

/// Where an item under `#[cfg(test)]` ends: `Pending` until its first `;` or `{`, then
/// `Block(depth)` until the brace depth falls back to `depth`.
#[derive(Clone, Copy)]
enum TestItem {
    Pending(usize),
    Block(usize),
}

/// The top-level modules that the non-test code of the file at `rel` (under the repository)
/// names: `crate::`, `super::` chains up to the root, and `ingot::` in `src/main.rs`.
fn edges_in(
    rel: &str,
    source: &str,
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> Vec<Edge> {
    let is_main = rel == "src/main.rs";
    let file_path = if is_main {
        vec![MAIN.to_owned()]
    } else {
        module_path(rel)
    };
    let from = file_path[0].clone();
    let root = if is_main { "ingot" } else { "crate" };
    let toks = tokens(source);
    let (mut depth, mut inline, mut test, mut edges) = (0usize, Vec::new(), None, Vec::new());
    let mut i = 0;
    while i < toks.len() {
        if test.is_none() && is_cfg_test(&toks, i) {
            test = Some(TestItem::Pending(depth));
            i += 7;
            continue;
        }
        match &toks[i].1 {
            Tok::Punct('{') => {
                if let Some(TestItem::Pending(d)) = test {
                    test = Some(TestItem::Block(d));
                }
                depth += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                if matches!(test, Some(TestItem::Block(d)) if d == depth) {
                    test = None;
                }
            }
            Tok::Punct(';') if matches!(test, Some(TestItem::Pending(d)) if d == depth) => {
                test = None;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((_, Tok::Ident(name))), Some((_, Tok::Punct('{')))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Ident(kw) if test.is_none() => {
                let after_dollar = i > 0 && toks[i - 1].1 == Tok::Punct('$');
                let names = if kw == root
                    && !after_dollar
                    && toks.get(i + 1).map(|t| &t.1) == Some(&Tok::Path)
                {
                    heads(&toks, i + 2)
                } else if kw == "super" && (i == 0 || toks[i - 1].1 != Tok::Path) {
                    super_heads(&toks, i, file_path.len() + inline.len())
                } else {
                    Vec::new()
                };
                // A name the crate root re-exports (`ingot::Gateway`) is its module's.
                let to_module = |(line, n): (usize, String)| match reexports.get(&n) {
                    Some(module) => Some((line, module.clone())),
                    None => modules.contains(&n).then_some((line, n)),
                };
                for (line, to) in names
                    .into_iter()
                    .filter_map(to_module)
                    .filter(|(_, n)| *n != from)
                {
                    edges.push(Edge {
                        file: rel.to_owned(),
                        line,
                        from: from.clone(),
                        to,
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    edges
}

/// The names the crate root re-exports (`pub use gateway::{Gateway, GatewayError};` in
/// `lib.rs`), each with the top-level module it comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    // Only the root's own (unindented) re-exports, of one of its modules.
    for line in lib.lines() {
        let Some((module, rest)) = line
            .strip_prefix("pub use ")
            .and_then(|l| l.split_once("::"))
            .filter(|(m, _)| !["crate", "self", "super"].contains(m))
        else {
            continue;
        };
        let names = rest.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        for name in names.filter(|n| !n.is_empty() && *n != "self") {
            found.insert(name.to_owned(), module.to_owned());
        }
    }
    found
}

/// The top-level modules a `super::super::…` chain starting at `toks[at]` names, when it
/// climbs from a module `levels` deep to the crate root; otherwise none.
fn super_heads(toks: &[(usize, Tok)], at: usize, levels: usize) -> Vec<(usize, String)> {
    let mut k = 0;
    let mut j = at;
    while matches!(&toks.get(j), Some((_, Tok::Ident(s))) if s == "super")
        && toks.get(j + 1).map(|t| &t.1) == Some(&Tok::Path)
    {
        k += 1;
        j += 2;
    }
    if k == levels {
        heads(toks, j)
    } else {
        Vec::new()
    }
}

/// The top-level modules of `src/` (directories and files, not `lib.rs` and `main.rs`).
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let mut modules: BTreeSet<String> = std::fs::read_dir(src)
        .expect("read src")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".rs") {
                Some("lib" | "main") => None,
                Some(stem) => Some(stem.to_owned()),
                None if e.path().is_dir() => Some(name),
                None => None,
            }
        })
        .collect();
    modules.insert(MAIN.to_owned());
    modules
}

/// Every `.rs` file under `dir`, as (path relative to the repository, text).
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(repo()).expect("under the repository");
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((rel.to_string_lossy().into_owned(), text));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

/// The edges of `files` that `rules` does not allow, one line each naming file and edge;
/// then a cycle of the table and a cycle of the code, if there is one.
fn violations(
    rules: &Rules,
    files: &[(String, String)],
    modules: &BTreeSet<String>,
) -> Vec<String> {
    let mut found = Vec::new();
    for module in rules.allowed.keys().chain(&rules.everyone) {
        if !modules.contains(module) {
            found.push(format!(
                "the table names `{module}`, which src/ does not have"
            ));
        }
    }
    let mut code: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let lib = files.iter().find(|(rel, _)| rel == "src/lib.rs");
    let reexports = lib
        .map(|(_, text)| root_reexports(text))
        .unwrap_or_default();
    for (rel, text) in files.iter().filter(|(rel, _)| rel != "src/lib.rs") {
        for edge in edges_in(rel, text, modules, &reexports) {
            if !rules.allows(&edge.from, &edge.to) {
                found.push(format!(
                    "{}:{}: `{}` imports `{}`, which ARCHITECTURE.md's table does not allow",
                    edge.file, edge.line, edge.from, edge.to
                ));
            }
            code.entry(edge.from).or_default().insert(edge.to);
        }
    }
    if let Some(cycle) = find_cycle(&rules.allowed) {
        found.push(format!("the table has a cycle: {}", cycle.join(" -> ")));
    }
    if let Some(cycle) = find_cycle(&code) {
        found.push(format!("the code has a cycle: {}", cycle.join(" -> ")));
    }
    found
}

/// A cycle of `graph` as a path that ends where it starts, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The metric-name constants of `telemetry.rs` (`pub const X: &str = "ingot_…";`) that no
/// `describe_*!(X, …)` gives help, and the files other than `src/telemetry.rs` that name a
/// metric themselves.
fn undescribed_metrics(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, text) in files {
        let toks = tokens(text);
        let macro_at = |i: usize, names: &[&str]| {
            matches!(&toks[i].1, Tok::Ident(m) if names.contains(&m.as_str()))
                && toks.get(i + 1).map(|t| &t.1) == Some(&Tok::Punct('!'))
        };
        if rel != "src/telemetry.rs" {
            for (i, (line, _)) in toks.iter().enumerate() {
                if macro_at(i, &["counter", "gauge", "histogram"]) {
                    found.push(format!("{rel}:{line}: names a metric outside telemetry.rs"));
                }
            }
            continue;
        }
        let described: BTreeSet<&str> = (0..toks.len())
            .filter(|&i| {
                macro_at(
                    i,
                    &["describe_counter", "describe_gauge", "describe_histogram"],
                )
            })
            .filter_map(|i| match toks.get(i + 3) {
                Some((_, Tok::Ident(name))) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": &str = ") else {
                continue;
            };
            let value = value.trim_end_matches(';');
            if value.starts_with("\"ingot_") && !described.contains(name) {
                found.push(format!("{rel}: metric {name} ({value}) has no help text"));
            }
        }
    }
    found
}

/// The files whose first line is not a `//!` module comment.
fn undocumented_modules(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(rel, _)| format!("{rel}: no `//!` comment saying what the module owns"))
        .collect()
}

/// The metrics of a Prometheus text exposition that have a `# TYPE` line but no `# HELP`.
fn types_without_help(exposition: &str) -> Vec<String> {
    let named = |prefix: &str| -> BTreeSet<String> {
        exposition
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    };
    let helped = named("# HELP ");
    named("# TYPE ")
        .into_iter()
        .filter(|name| !helped.contains(name))
        .collect()
}

/// Where a construct appears outside the one file allowed to hold it: `(needle, home)`
/// pairs, each needle a piece of code that only `home` may write.
fn outside_home(files: &[(String, String)], rules: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, text) in files {
        for (needle, home) in rules.iter().filter(|(_, home)| rel != home) {
            for (n, line) in text.lines().enumerate() {
                if line.contains(needle) && !line.trim_start().starts_with("//") {
                    found.push(format!(
                        "{rel}:{}: `{needle}` belongs in {home} alone",
                        n + 1
                    ));
                }
            }
        }
    }
    found
}

/// The constructs issue 21 put in one place: close frames (their codes are
/// `vocab::Disconnect::close`'s table, framed by `proxy.rs`) and the server side of a
/// WebSocket upgrade (`api/upgrade.rs`, for CDP and the viewer alike).
const ONE_PLACE: [(&str, &str); 3] = [
    ("CloseCode::", "src/proxy.rs"),
    ("CloseFrame {", "src/proxy.rs"),
    ("Role::Server", "src/api/upgrade.rs"),
];

// ---------------------------------------------------------------------------------------
// The tests on the repository.

#[test]
fn close_frames_and_websocket_upgrades_are_each_built_in_one_place() {
    let found = outside_home(&read_sources(), &ONE_PLACE);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

fn read_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(&repo().join("src"), &mut files);
    files
}

#[test]
fn every_import_between_top_level_modules_is_in_the_architecture_table() {
    let markdown = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("read");
    let rules = parse_table(&markdown);
    let modules = top_level_modules(&repo().join("src"));
    let missing: Vec<_> = modules
        .iter()
        .filter(|m| !rules.allowed.contains_key(*m))
        .collect();
    assert!(missing.is_empty(), "modules without a row: {missing:?}");
    let found = violations(&rules, &read_sources(), &modules);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let found = undocumented_modules(&read_sources());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn every_metric_has_help_and_only_telemetry_names_metrics() {
    let found = undescribed_metrics(&read_sources());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_has_a_help_line() {
    let gw = crate::inproc::FakeGateway::start().await;
    let r = gw.http.get(gw.url("/metrics")).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert!(text.contains("# TYPE ingot_sessions_live gauge"), "{text}");
    let missing = types_without_help(&text);
    assert!(missing.is_empty(), "metrics without # HELP: {missing:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// The checkers on planted input: each must catch what it is for.

#[test]
fn a_close_code_chosen_outside_proxy_rs_is_caught() {
    let files = [
        ("src/proxy.rs", "let c = CloseCode::Away;"),
        (
            "src/viewer/socket.rs",
            "// CloseCode::Away in a comment\nlet c = CloseCode::Normal;",
        ),
    ]
    .map(|(p, t)| (p.to_owned(), t.to_owned()));
    let found = outside_home(&files, &ONE_PLACE);
    assert_eq!(
        found,
        ["src/viewer/socket.rs:2: `CloseCode::` belongs in src/proxy.rs alone"]
    );
}

fn planted_rules() -> Rules {
    parse_table(
        "# x\n### Allowed imports\n\nSome words.\n\n| Module | May import |\n|---|---|\n\
         | `api` | `session`, `vocab` |\n| `session` | `cdp` |\n| `cdp` | — |\n\
         | `vocab` | |\n| `main` | `api` |\n| `*` | `sync`, `vocab` |\n| `sync` | |\n\nAfter.\n",
    )
}

fn planted_modules() -> BTreeSet<String> {
    ["api", "session", "cdp", "vocab", "sync", "main"]
        .map(str::to_owned)
        .into()
}

fn check_planted(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    violations(&planted_rules(), &files, &planted_modules())
}

#[test]
fn the_table_parses_rows_dashes_and_the_every_module_row() {
    let rules = planted_rules();
    assert!(rules.allows("api", "session") && rules.allows("api", "vocab"));
    assert!(rules.allows("cdp", "sync"), "the * row");
    assert!(!rules.allows("cdp", "session") && !rules.allows("session", "api"));
    assert!(!rules.allows("sync", "vocab"), "a leaf's own row only");
    assert_eq!(rules.allowed["cdp"], BTreeSet::new());
}

#[test]
fn allowed_imports_pass() {
    let found = check_planted(&[
        (
            "src/api/mod.rs",
            "use crate::session::Registry;\nuse crate::{vocab, sync::lock};",
        ),
        (
            "src/session/create.rs",
            "use super::state;\nfn f() { crate::cdp::Mux::new() }",
        ),
        ("src/main.rs", "use ingot::api;"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

/// `main.rs` reaches the library through the root's re-exports too: `ingot::Session`
/// is `session`'s, which `main` may not import here.
#[test]
fn an_import_through_a_root_reexport_counts_as_its_modules() {
    let found = check_planted(&[
        (
            "src/lib.rs",
            "pub use session::{Session, Registry};\npub use api::Router;",
        ),
        (
            "src/main.rs",
            "use ingot::Router;\nuse ingot::{Session, api};",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("src/main.rs:2: `main` imports `session`"),
        "{found:?}"
    );
}

#[test]
fn a_planted_upward_import_fails_naming_the_file_line_and_edge() {
    let found = check_planted(&[(
        "src/cdp/mux.rs",
        "//! Doc.\n\nuse crate::session::Session;\n",
    )]);
    assert_eq!(
        found,
        ["src/cdp/mux.rs:3: `cdp` imports `session`, which ARCHITECTURE.md's table does not allow"]
    );
}

#[test]
fn a_group_a_super_chain_and_a_main_import_are_edges() {
    let found = check_planted(&[
        (
            "src/vocab.rs",
            "use crate::{\n    sync,\n    api::{x, y},\n};",
        ),
        ("src/cdp/mux.rs", "fn f() { super::super::session::go(); }"),
        (
            "src/session/mod.rs",
            "mod inner { fn f() { super::super::api::x(); } }",
        ),
        ("src/main.rs", "fn main() { ingot::session::run(); }"),
    ]);
    let not_allowed = "which ARCHITECTURE.md's table does not allow";
    assert_eq!(
        found,
        [
            // A leaf does not get the `*` row: vocab may not import sync.
            format!("src/vocab.rs:2: `vocab` imports `sync`, {not_allowed}"),
            format!("src/vocab.rs:3: `vocab` imports `api`, {not_allowed}"),
            format!("src/cdp/mux.rs:1: `cdp` imports `session`, {not_allowed}"),
            format!("src/session/mod.rs:1: `session` imports `api`, {not_allowed}"),
            format!("src/main.rs:1: `main` imports `session`, {not_allowed}"),
        ]
    );
}

#[test]
fn a_cycle_in_the_code_fails() {
    let found = check_planted(&[
        ("src/api/mod.rs", "use crate::session;"),
        ("src/session/mod.rs", "use crate::api;"),
    ]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[1], "the code has a cycle: api -> session -> api");
}

#[test]
fn comments_strings_test_code_and_macro_crate_are_not_edges() {
    let found = check_planted(&[(
        "src/cdp/mux.rs",
        "// use crate::session;\n/* crate::api /* nested */ crate::api */\n\
         const S: &str = \"crate::session\";\nconst R: &str = r#\"crate::api \"x\"\"#;\n\
         const C: char = '{';\nfn f<'a>(x: &'a str) { $crate::session::x(); }\n\
         #[cfg(test)]\nmod tests { use crate::session; fn g() { crate::api::x() } }\n\
         #[cfg(test)]\nuse crate::api::y;\n",
    )]);
    assert!(found.is_empty(), "{found:?}");
    // The same import after the test module counts again.
    let found = check_planted(&[(
        "src/cdp/mux.rs",
        "#[cfg(test)]\nmod tests { use crate::session; }\nuse crate::api;\n",
    )]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/cdp/mux.rs:3: `cdp` imports `api`"),
        "{found:?}"
    );
}

#[test]
fn a_cycle_in_the_table_fails() {
    let mut rules = planted_rules();
    rules
        .allowed
        .get_mut("cdp")
        .expect("cdp row")
        .insert("api".into());
    let found = violations(&rules, &[], &planted_modules());
    assert_eq!(
        found,
        ["the table has a cycle: api -> session -> cdp -> api"]
    );
}

#[test]
fn a_table_row_for_a_module_that_does_not_exist_fails() {
    let mut modules = planted_modules();
    modules.remove("cdp");
    let found = violations(&planted_rules(), &[], &modules);
    assert_eq!(found, ["the table names `cdp`, which src/ does not have"]);
}

#[test]
fn a_metric_without_help_or_named_outside_telemetry_is_caught() {
    let telemetry = "pub const LIVE: &str = \"ingot_live\";\n\
                     pub const LOST: &str = \"ingot_lost_total\";\n\
                     pub const KINDS: [&str; 1] = [\"x\"];\n\
                     pub const OTHER: &str = \"not_a_metric\";\n\
                     fn describe() { describe_gauge!(LIVE, \"Live.\"); }\n";
    let files = [
        ("src/telemetry.rs".to_owned(), telemetry.to_owned()),
        (
            "src/api/mod.rs".to_owned(),
            "fn f() {\n counter!(\"x\").increment(1); }".to_owned(),
        ),
    ];
    assert_eq!(
        undescribed_metrics(&files),
        [
            "src/telemetry.rs: metric LOST (\"ingot_lost_total\") has no help text",
            "src/api/mod.rs:2: names a metric outside telemetry.rs",
        ]
    );
}

#[test]
fn a_module_without_a_doc_comment_is_caught() {
    let files = [
        ("src/a.rs".to_owned(), "\n//! Owns a.\nfn f() {}".to_owned()),
        (
            "src/b.rs".to_owned(),
            "/// An item doc.\nfn f() {}".to_owned(),
        ),
        ("src/c.rs".to_owned(), "use x;\n//! Too late.".to_owned()),
    ];
    assert_eq!(
        undocumented_modules(&files),
        [
            "src/b.rs: no `//!` comment saying what the module owns",
            "src/c.rs: no `//!` comment saying what the module owns",
        ]
    );
}

#[test]
fn a_type_line_without_help_is_caught() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
                # TYPE b gauge\nb 0\n";
    assert_eq!(types_without_help(text), ["b"]);
}
