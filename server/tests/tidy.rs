//! Tidy checks, in the spirit of rust-analyzer's: the architecture's rules as tests over the
//! source text, so `cargo test` keeps them true.
//!
//! - **Layers.** A module never names a module of a higher layer (`crate::…` paths in code,
//!   comments and strings aside). The order, top to bottom, is [`LAYERS`]; it is written once
//!   more in `server/ARCHITECTURE.md`.
//! - **Only the node talks to the engines**: no other module names `engine`.
//! - **Transport names** stay out of the session, node, hub and engine layers.
//! - **The codec does no IO**: nothing in `protocol/` names tokio, sockets or files.
//! - **Short functions**: none over [`MAX_FUNCTION_LINES`] lines outside generated code and
//!   tests, in this crate, the code generator and the benchmark tools.
//!
//! Test code (`#[cfg(test)]` modules and files) is exempt from the layer and length rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crate's top-level modules by layer, top to bottom. A module may name modules of its own
/// layer or below, never above.
const LAYERS: &[(&str, &[&str])] = &[
    ("composition", &["cli", "server"]),
    ("edges", &["api", "transport", "consumer"]),
    ("session", &["session"]),
    ("node", &["node"]),
    ("hub", &["hub"]),
    ("core", &["engine", "protocol", "auth", "channel", "filter", "proxy", "jwks", "track", "telemetry"]),
    ("base", &["config", "errors", "proto", "common", "sync", "tls", "metrics", "clients"]),
];

/// Pairs in one layer that must not name each other either: both edges are thin adapters over
/// the session and the node; consumers are clients of the API executor.
const SIBLINGS_APART: &[(&str, &str)] =
    &[("api", "transport"), ("transport", "api"), ("consumer", "transport"), ("transport", "consumer")];

/// The only modules that may name the engines: the node, and the engines themselves (everyone
/// else reaches them through the node and shares their values through `common`).
const ENGINE_USERS: &[&str] = &["node", "engine"];

/// Layers that must not know which transports exist.
const TRANSPORT_BLIND: &[&str] = &["session", "node", "hub", "engine"];

/// Transport names and the transport crates, lowercase. Short ones must stand alone (between
/// non-letters) to count.
const TRANSPORT_NAMES: &[&str] = &[
    "websocket",
    "webtransport",
    "http_stream",
    "sse",
    "grpc",
    "tungstenite",
    "hyper",
    "tonic",
    "quinn",
    "h3",
];

const MAX_FUNCTION_LINES: usize = 80;

/// One source file of the crate.
#[derive(Debug)]
struct Source {
    /// Path under `src/`.
    path: PathBuf,
    /// The top-level module it belongs to (`""` for `lib.rs` and `main.rs`).
    module: String,
    text: String,
    /// Compiled only for tests (declared under `#[cfg(test)]`, itself or an ancestor).
    test_only: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Finding {
    path: PathBuf,
    line: usize,
    what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "src/{}:{}: {}", self.path.display(), self.line, self.what)
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, generated code excluded.
fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut sources: Vec<Source> = files
        .into_iter()
        .filter(|path| !path.components().any(|c| c.as_os_str() == "gen"))
        .map(|path| {
            let relative = path.strip_prefix(&root).unwrap().to_path_buf();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = match first.as_str() {
                "lib.rs" | "main.rs" => String::new(),
                other => other.trim_end_matches(".rs").to_owned(),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            Source { path: relative, module, text, test_only: false }
        })
        .collect();
    mark_test_only(&mut sources);
    sources
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Marks the files of modules declared `#[cfg(test)] mod name;`, and everything under them.
fn mark_test_only(sources: &mut [Source]) {
    let mut test_roots = Vec::new();
    for source in sources.iter() {
        let lines: Vec<&str> = source.text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let Some(name) = declared_module(pair[1]) else { continue };
            // A module's children live next to `mod.rs`/`lib.rs`, or in a directory named
            // after the file.
            let dir = match source.path.file_name().unwrap().to_str().unwrap() {
                "mod.rs" | "lib.rs" | "main.rs" => source.path.parent().unwrap().to_path_buf(),
                file => source.path.parent().unwrap().join(file.trim_end_matches(".rs")),
            };
            test_roots.push(dir.join(name));
        }
    }
    for source in sources.iter_mut() {
        let path = source.path.with_extension("");
        source.test_only = test_roots.iter().any(|root| path == *root || path.starts_with(root));
    }
}

/// `name` of a line `mod name;` (any visibility).
fn declared_module(line: &str) -> Option<&str> {
    let line = line.trim();
    let rest = line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
    rest.strip_prefix("mod ")?.strip_suffix(';')
}

/// The code of `text` with comments, string and character literals blanked out (newlines
/// kept, so line numbers still hold).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.push_str("  ");
            i += 2;
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !is_ident(chars.get(i.wrapping_sub(1)))
        {
            i = skip_raw_string(&chars, i, &mut out);
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let skip = if chars[i] == '\\' { 2 } else { 1 };
                for _ in 0..skip.min(chars.len() - i) {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            let end =
                chars[i + 1..].iter().skip(1).position(|&c| c == '\'').map_or(chars.len(), |p| i + 2 + p);
            for _ in i..=end.min(chars.len() - 1) {
                out.push(' ');
            }
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `'x'` or `'\n'` rather than a lifetime `'a`.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// Blanks a raw string `r#"…"#` starting at `start`; returns the index after it.
fn skip_raw_string(chars: &[char], start: usize, out: &mut String) -> usize {
    let mut i = start + 1;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        // `r#ident` (a raw identifier), not a string.
        out.extend(&chars[start..i]);
        return i;
    }
    let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
    let rest: String = chars[i + 1..].iter().collect();
    let end = rest.find(&closing).map_or(chars.len(), |p| i + 1 + rest[..p].chars().count() + closing.len());
    for c in &chars[start..end.min(chars.len())] {
        out.push(if *c == '\n' { '\n' } else { ' ' });
    }
    end
}

/// Line ranges (0-based, inclusive) of `#[cfg(test)] mod … { … }` blocks, found by rustfmt's
/// layout: the block ends at the first line that is its indentation plus `}`.
fn test_blocks(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let next = lines[i + 1];
        if lines[i].trim() == "#[cfg(test)]"
            && next.trim_start().contains("mod ")
            && next.trim_end().ends_with('{')
        {
            let indent = next.len() - next.trim_start().len();
            let closing = format!("{}}}", " ".repeat(indent));
            let end = (i + 2..lines.len()).find(|&j| lines[j] == closing).unwrap_or(lines.len() - 1);
            blocks.push((i, end));
            i = end;
        }
        i += 1;
    }
    blocks
}

fn in_blocks(blocks: &[(usize, usize)], line: usize) -> bool {
    blocks.iter().any(|&(start, end)| (start..=end).contains(&line))
}

/// Every `crate::name` (or `spinwire::name` in the binary) in a line of code.
fn named_modules(code_line: &str) -> Vec<&str> {
    let mut names = Vec::new();
    for prefix in ["crate::", "spinwire::"] {
        let mut rest = code_line;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.push(&rest[..end]);
        }
    }
    names
}

/// Upward references: a module naming one of a higher layer, or a sibling it must not name.
fn layer_violations(sources: &[Source]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for source in sources.iter().filter(|s| !s.test_only) {
        let Some(own) = layer_of(&source.module) else { continue };
        let code = code_only(&source.text);
        let raw: Vec<&str> = source.text.lines().collect();
        let blocks = test_blocks(&raw);
        for (number, line) in code.lines().enumerate() {
            if in_blocks(&blocks, number) {
                continue;
            }
            for target in named_modules(line) {
                let Some(theirs) = layer_of(target) else { continue };
                let apart = SIBLINGS_APART.contains(&(source.module.as_str(), target));
                let engine = target == "engine" && !ENGINE_USERS.contains(&source.module.as_str());
                if theirs < own || apart || engine {
                    let why = if engine {
                        "only the node talks to the engines"
                    } else {
                        "a layer it must not reach"
                    };
                    let what = format!(
                        "`{}` ({}) names `{target}` ({}): {why}",
                        source.module, LAYERS[own].0, LAYERS[theirs].0
                    );
                    findings.push(Finding { path: source.path.clone(), line: number + 1, what });
                }
            }
        }
    }
    findings
}

/// Where a lowercase `name` occurs in a lowercase `line`, standing alone when it is short.
fn mentions(line: &str, name: &str) -> bool {
    let alone = name.len() <= 4;
    let mut start = 0;
    while let Some(at) = line[start..].find(name) {
        let (from, to) = (start + at, start + at + name.len());
        let letter = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !alone || (!letter(line[..from].chars().next_back()) && !letter(line[to..].chars().next())) {
            return true;
        }
        start = to;
    }
    false
}

fn transport_mentions(sources: &[Source]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for source in sources.iter().filter(|s| TRANSPORT_BLIND.contains(&s.module.as_str())) {
        for (number, line) in source.text.lines().enumerate() {
            let line = line.to_ascii_lowercase();
            for name in TRANSPORT_NAMES.iter().filter(|name| mentions(&line, name)) {
                let what = format!("`{}` names the transport `{name}`", source.module);
                findings.push(Finding { path: source.path.clone(), line: number + 1, what });
            }
        }
    }
    findings
}

fn io_in_codec(sources: &[Source]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for source in sources.iter().filter(|s| s.module == "protocol") {
        for (number, line) in code_only(&source.text).lines().enumerate() {
            for io in ["tokio", "std::net", "std::fs", "std::io::Read", "std::io::Write"] {
                if line.contains(io) {
                    let what = format!("the codec names `{io}`");
                    findings.push(Finding { path: source.path.clone(), line: number + 1, what });
                }
            }
        }
    }
    findings
}

/// `fn` items longer than the limit, by rustfmt's layout (the body closes at the `fn`'s own
/// indentation).
fn long_functions(path: &Path, text: &str) -> Vec<Finding> {
    let lines: Vec<&str> = text.lines().collect();
    let blocks = test_blocks(&lines);
    let mut findings = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        if in_blocks(&blocks, start) || !is_fn_start(line) {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let Some(open) =
            (start..lines.len()).find(|&j| lines[j].contains('{') || lines[j].trim_end().ends_with(';'))
        else {
            continue;
        };
        let opener = lines[open].trim_end();
        if !opener.ends_with('{') {
            continue; // A declaration without a body, or a one-line body.
        }
        let closing = format!("{}}}", " ".repeat(indent));
        let end = (open + 1..lines.len()).find(|&j| lines[j] == closing).unwrap_or(lines.len() - 1);
        let length = end - start + 1;
        if length > MAX_FUNCTION_LINES {
            let name =
                line.trim_start().split("fn ").nth(1).unwrap_or("").split(['(', '<']).next().unwrap_or("");
            let what = format!("`{name}` is {length} lines (at most {MAX_FUNCTION_LINES})");
            findings.push(Finding { path: path.to_path_buf(), line: start + 1, what });
        }
    }
    findings
}

fn is_fn_start(line: &str) -> bool {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.peek() {
        if word.starts_with("pub") || ["async", "const", "unsafe", "extern"].contains(word) {
            words.next();
        } else {
            break;
        }
    }
    words.next() == Some("fn")
}

fn assert_none(what: &str, findings: Vec<Finding>) {
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(report.is_empty(), "{what}:\n{}", report.join("\n"));
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let sources = sources();
    for layer_module in LAYERS.iter().flat_map(|(_, modules)| modules.iter()) {
        assert!(sources.iter().any(|s| s.module == *layer_module), "no sources for `{layer_module}`");
    }
    let modules: BTreeSet<&str> =
        sources.iter().map(|s| s.module.as_str()).filter(|m| !m.is_empty()).collect();
    let unplaced: Vec<&&str> = modules
        .iter()
        .filter(|m| layer_of(m).is_none() && !sources.iter().any(|s| &s.module == *m && s.test_only))
        .collect();
    assert!(unplaced.is_empty(), "modules missing from LAYERS: {unplaced:?}");
    assert_none("upward references", layer_violations(&sources));
}

#[test]
fn session_node_hub_and_engines_know_no_transport() {
    assert_none("transport names below the edges", transport_mentions(&sources()));
}

#[test]
fn the_codec_does_no_io() {
    assert_none("IO in protocol/", io_in_codec(&sources()));
}

#[test]
fn functions_stay_short() {
    let mut findings = Vec::new();
    for source in sources().iter().filter(|s| !s.test_only) {
        findings.extend(long_functions(&Path::new("src").join(&source.path), &source.text));
    }
    // The other crates' code too: the code generator and the benchmark tools.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for crate_src in ["codegen/src", "tests/bench/src"] {
        collect(&root.join(crate_src), &mut files);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        findings.extend(long_functions(&file, &text));
    }
    assert_none("long functions", findings);
}

/// The checks themselves catch what they are for (so a passing run means something).
#[test]
fn the_checks_catch_violations() {
    let source = |module: &str, text: &str| Source {
        path: PathBuf::from(format!("{module}/x.rs")),
        module: module.to_owned(),
        text: text.to_owned(),
        test_only: false,
    };
    let upward = [source("hub", "use crate::session::Session;\nfn f() { crate::node::x(); }\n")];
    assert_eq!(layer_violations(&upward).len(), 2);
    let fine = [source(
        "session",
        "use crate::hub::SessionHandle; // crate::transport in a comment\nlet s = \"crate::api\";\n",
    )];
    assert!(layer_violations(&fine).is_empty());
    let sibling = [source("api", "use crate::transport::x;")];
    assert_eq!(layer_violations(&sibling).len(), 1);
    let engine = [
        source("session", "use crate::engine::StreamPosition;"),
        source("node", "use crate::engine::Broker;"),
    ];
    assert_eq!(layer_violations(&engine).len(), 1, "only the node may name the engines");
    let tests = [source("hub", "#[cfg(test)]\nmod tests {\n    use crate::session::Session;\n}\n")];
    assert!(layer_violations(&tests).is_empty(), "test blocks are exempt");
    let named = [source("hub", "//! Writes to a WebSocket.\nlet ok = assert_eq; // classes\n")];
    assert_eq!(transport_mentions(&named).len(), 1, "`sse` inside a word does not count");
    let io = [source("protocol", "use tokio::net::TcpStream;")];
    assert_eq!(io_in_codec(&io).len(), 1);
    let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES);
    let long = format!("fn long() {{\n{body}}}\nfn short() {{\n}}\n");
    assert_eq!(long_functions(Path::new("x.rs"), &long).len(), 1);
}
