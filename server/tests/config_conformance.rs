//! Config conformance: every key of Centrifugo v6.9.1's configuration is either honoured or
//! refused at startup by name, never accepted and ignored.
//!
//! The keys are data, `config_keys/centrifugo-6.9.1.tsv`: Centrifugo's path, type, default
//! and environment variable (facts from its configuration reference), then Spinwire's verdict:
//! * `honoured:<file>` — a config setting the key loads with no warning, and `<file>` (under
//!   `server/src`) is where the setting takes effect; the test checks the file names the key's
//!   last segment, so the pointer cannot silently rot;
//! * `refused` — a config setting the key fails to load, and the error names the key (or the
//!   section holding it);
//! * `inert:<file>` — the key loads and does nothing, as in Centrifugo 6.9.1 or by design here
//!   (Go's write-buffer pool, a server's `server_ca_pem`); `<file>` says why;
//! * `inert-until:<key>=<json>[;<key>=<json>…]` — the key does nothing until those keys are
//!   set (for Centrifugo too: `admin.handler_prefix` without `admin.enabled`), and setting
//!   them is refused by name (theirs or the key's own).
//!
//! Each key is set to a sample value that differs from its default (the `sample` column when
//! the type's generic sample would be invalid), alone apart from the companion keys of the
//! `with` column (a JSON object of key paths and values); the file form and, for keys outside
//! arrays, the environment form (`CENTRIFUGO_<PATH>`) are both tried. A report of the outcomes
//! is written to `$CONFORMANCE_REPORT` when set. Centrifugo's own `defaultconfig` output must
//! load as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

const KEYS: &str = "tests/config_keys/centrifugo-6.9.1.tsv";
const DEFAULT_CONFIG: &str = "tests/config_keys/centrifugo-6.9.1-defaultconfig.json";

/// One row of the key list.
#[derive(Debug)]
struct Key {
    path: String,
    kind: String,
    default: String,
    env: String,
    verdict: Verdict,
    sample: Option<Value>,
    with: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Honoured(String),
    Inert(String),
    Refused,
    InertUntil(Vec<(String, Value)>),
}

/// What loading a config did.
#[derive(Debug)]
enum Outcome {
    Loaded { warnings: Vec<String> },
    Refused(String),
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse_verdict(text: &str, line: usize) -> Verdict {
    if let Some(file) = text.strip_prefix("honoured:") {
        return Verdict::Honoured(file.to_owned());
    }
    if let Some(file) = text.strip_prefix("inert:") {
        return Verdict::Inert(file.to_owned());
    }
    if text == "refused" {
        return Verdict::Refused;
    }
    if let Some(rest) = text.strip_prefix("inert-until:") {
        let switches = rest
            .split(';')
            .map(|switch| {
                let (key, value) =
                    switch.split_once('=').unwrap_or_else(|| panic!("line {line}: needs key=json"));
                let value = serde_json::from_str(value).unwrap_or_else(|e| panic!("line {line}: {e}"));
                (key.to_owned(), value)
            })
            .collect();
        return Verdict::InertUntil(switches);
    }
    panic!("line {line}: unknown verdict {text:?}")
}

fn read_keys() -> Vec<Key> {
    let text = std::fs::read_to_string(manifest_dir().join(KEYS)).expect("key list");
    let json_column = |cell: Option<&str>, line: usize| -> Option<Value> {
        let cell = cell.filter(|c| !c.is_empty())?;
        Some(serde_json::from_str(cell).unwrap_or_else(|e| panic!("line {line}: {cell:?}: {e}")))
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#') && !line.trim().is_empty())
        .skip(1) // header
        .map(|(index, line)| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("");
            Key {
                path: cell(0).to_owned(),
                kind: cell(1).to_owned(),
                default: cell(2).to_owned(),
                env: cell(3).to_owned(),
                verdict: parse_verdict(cell(4), index + 1),
                sample: json_column(cells.get(5).copied(), index + 1),
                with: json_column(cells.get(6).copied(), index + 1),
            }
        })
        .collect()
}

/// A value of the key's type that differs from its default.
fn sample(key: &Key) -> Value {
    if let Some(sample) = &key.sample {
        return sample.clone();
    }
    match key.kind.as_str() {
        "bool" => Value::Bool(key.default != "true"),
        "int" | "uint" => json!(key.default.parse::<i64>().map_or(3, |n| if n == 0 { 3 } else { n + 1 })),
        "duration" => json!(if key.default == "7s" { "9s" } else { "7s" }),
        "array<string>" => json!(["sample"]),
        "map<string,string>" => json!({"sample": "value"}),
        "pem(string)" => json!("sample.pem"),
        _ => json!("sample"),
    }
}

/// The smallest valid item of each array the key list walks into.
fn array_item(array_path: &str) -> Value {
    match array_path {
        "channel.namespaces" => json!({"name": "ns"}),
        "rpc.namespaces" => json!({"name": "rpcns"}),
        "proxies" => json!({"name": "p", "endpoint": "http://127.0.0.1:1/proxy"}),
        "consumers" => json!({"name": "cons", "type": "postgresql"}),
        path if path.ends_with("status_to_code_transforms") => {
            json!({"status_code": 404, "to_error": {"code": 1000, "message": "not found"}})
        }
        path if path.ends_with("connect_code_to_http_response.transforms") => {
            json!({"code": 3500, "to": {"status_code": 401}})
        }
        path if path.ends_with("transforms") => json!({"code": 4500, "to": {"code": 3500, "reason": "x"}}),
        other => panic!("no item template for array {other}"),
    }
}

/// Sets `path` (dotted, `[]` marking an array whose single item is created) to `value`.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut current = root;
    let mut walked = String::new();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let (name, is_array) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*segment, false),
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(name);
        let object = current.as_object_mut().expect("object on the way");
        if last && !is_array {
            object.insert(name.to_owned(), value);
            return;
        }
        if is_array {
            let array = object.entry(name.to_owned()).or_insert_with(|| json!([array_item(&walked)]));
            current = &mut array.as_array_mut().expect("array")[0];
        } else {
            current = object.entry(name.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        }
    }
}

/// The companion keys of `with`, set path by path (paths into array items last, so that a
/// whole array given there is the one they land in).
fn base_config(key: &Key) -> Value {
    let mut config = json!({});
    let Some(Value::Object(with)) = &key.with else { return config };
    let (items, plain): (Vec<_>, Vec<_>) = with.iter().partition(|(path, _)| path.contains("[]"));
    for (path, value) in plain.into_iter().chain(items) {
        set(&mut config, path, value.clone());
    }
    config
}

/// Loads `config` with `env` as the environment; also says which variables were looked up.
fn load(config: Value, env: &BTreeMap<String, String>) -> (Outcome, Vec<String>) {
    let read = std::cell::RefCell::new(Vec::new());
    let lookup = |name: &str| {
        read.borrow_mut().push(name.to_owned());
        env.get(name).cloned()
    };
    let outcome = match spinwire::config::build(Some(config), &lookup) {
        Ok(loaded) => Outcome::Loaded { warnings: loaded.warnings },
        Err(error) => Outcome::Refused(error.to_string()),
    };
    (outcome, read.into_inner())
}

/// `channel.namespaces[0].presence` → `channel.namespaces[].presence`.
fn without_indices(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '[' {
            while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                chars.next();
            }
        }
    }
    out
}

/// Whether a refusal names `path` or a section that holds it.
fn names(error: &str, path: &str) -> bool {
    let error = without_indices(error);
    let named = error.split(':').next().unwrap_or("").trim();
    !named.is_empty()
        && (path == named || path.starts_with(&format!("{named}.")) || path.starts_with(&format!("{named}[")))
}

/// The environment form of a key outside arrays, with its sample as text.
fn env_form(key: &Key, value: &Value) -> Option<BTreeMap<String, String>> {
    if key.env.is_empty() || key.env.contains('<') || key.path.contains("[]") {
        return None;
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
        }
        other => other.to_string(),
    };
    Some(BTreeMap::from([(key.env.clone(), text)]))
}

/// Checks one key; returns a description of what went wrong, if anything.
fn check(key: &Key, report: &mut Vec<String>) -> Option<String> {
    let value = sample(key);
    let mut file_config = base_config(key);
    set(&mut file_config, &key.path, value.clone());
    let (file_outcome, _) = load(file_config, &BTreeMap::new());
    report.push(format!("{}\t{:?}\t{}", key.path, key.verdict, describe(&file_outcome)));
    if let Some(problem) = expect(key, &file_outcome, "file") {
        return Some(problem);
    }
    if let Some(env) = env_form(key, &value) {
        let (env_outcome, read) = load(base_config(key), &env);
        if !read.contains(&key.env) {
            return Some(format!("{}: {} is never read", key.path, key.env));
        }
        if let Some(problem) = expect(key, &env_outcome, "env") {
            return Some(problem);
        }
    }
    if let Verdict::InertUntil(switches) = &key.verdict {
        let mut config = base_config(key);
        set(&mut config, &key.path, value);
        for (switch, switch_value) in switches {
            set(&mut config, switch, switch_value.clone());
        }
        let named =
            |error: &str| names(error, &key.path) || switches.iter().any(|(switch, _)| names(error, switch));
        match load(config, &BTreeMap::new()).0 {
            Outcome::Refused(error) if named(&error) => {}
            other => return Some(format!("{}: switched on: {}", key.path, describe(&other))),
        }
    }
    None
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Loaded { warnings } if warnings.is_empty() => "loaded".into(),
        Outcome::Loaded { warnings } => format!("loaded with warnings {warnings:?}"),
        Outcome::Refused(error) => format!("refused: {error}"),
    }
}

fn expect(key: &Key, outcome: &Outcome, form: &str) -> Option<String> {
    let ok = match (&key.verdict, outcome) {
        (Verdict::Honoured(_) | Verdict::Inert(_) | Verdict::InertUntil(_), Outcome::Loaded { warnings }) => {
            warnings.is_empty()
        }
        (Verdict::Refused, Outcome::Refused(error)) => names(error, &key.path),
        _ => false,
    };
    (!ok).then(|| format!("{} ({form}): expected {:?}, {}", key.path, key.verdict, describe(outcome)))
}

/// `honoured:<file>` and `inert:<file>`: the file exists and names the key's last segment.
fn check_pointer(key: &Key) -> Option<String> {
    let (Verdict::Honoured(file) | Verdict::Inert(file)) = &key.verdict else { return None };
    let path = manifest_dir().join("src").join(file);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Some(format!("{}: {} does not exist", key.path, path.display()));
    };
    let leaf = key.path.rsplit('.').next().unwrap_or(&key.path).trim_end_matches("[]");
    (!text.contains(leaf)).then(|| format!("{}: {file} never mentions {leaf}", key.path))
}

#[test]
fn every_centrifugo_key_is_honoured_or_refused_by_name() {
    let keys = read_keys();
    assert!(keys.len() > 1000, "the key list looks truncated: {} keys", keys.len());
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for key in &keys {
        problems.extend(check(key, &mut report));
        problems.extend(check_pointer(key));
    }
    if let Some(path) = std::env::var_os("CONFORMANCE_REPORT") {
        std::fs::write(Path::new(&path), report.join("\n") + "\n").expect("write report");
    }
    let mut counts = BTreeMap::new();
    for key in &keys {
        let class = match key.verdict {
            Verdict::Honoured(_) => "honoured",
            Verdict::Inert(_) => "inert, as in Centrifugo or by design",
            Verdict::Refused => "refused by name",
            Verdict::InertUntil(_) => "inert until switched on, which is refused by name",
        };
        *counts.entry(class).or_insert(0) += 1;
    }
    println!("Centrifugo v6.9.1 keys: {}", keys.len());
    for (class, count) in &counts {
        println!("  {class}: {count}");
    }
    assert!(problems.is_empty(), "{} keys do not conform:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn centrifugo_defaultconfig_output_loads_without_warnings() {
    let text = std::fs::read_to_string(manifest_dir().join(DEFAULT_CONFIG)).expect("defaultconfig");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    let loaded = spinwire::config::build(Some(value), &|_| None).expect("Centrifugo's defaults load");
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
}
