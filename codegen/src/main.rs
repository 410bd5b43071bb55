//! Regenerates every committed artefact derived from `proto/`, or checks that none has drifted.
//!
//! ```text
//! cargo run -p codegen              # rewrite the generated trees
//! cargo run -p codegen -- --check   # fail (exit 1) when a committed tree differs
//! cargo run -p codegen -- --check --proto-dir <dir>   # same, against another proto tree
//! ```
//!
//! Outputs, each a directory owned entirely by the generator (nothing hand-written inside):
//!
//! | target | directory | how |
//! |---|---|---|
//! | Rust (server) | `server/src/proto/gen/` | protox + tonic-prost-build, in process ([`rust`]) |
//! | Python | `sdks/python/src/spinwire/_proto/` | grpcio-tools' protoc: messages, gRPC stubs, `.pyi` |
//! | Go | `sdks/go/gen/` | protoc-gen-go + protoc-gen-go-grpc |
//! | TypeScript | `sdks/typescript/src/gen/` | protoc-gen-es |
//!
//! plus the SDK version files stamped from `sdks/VERSION` ([`sdk_version`]), so the three
//! packages always carry the same version.
//!
//! The foreign generators are local plugins at pinned versions ([`tools`]), installed on first
//! use under `target/codegen-tools/` from PyPI, the Go module proxy and npm. Everything is
//! generated into a scratch directory first, so `--check` and a normal run do the same work
//! and differ only in whether the result is compared or copied over.

mod foreign;
mod rust;
mod sdk_version;
mod tools;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Proto files compiled, relative to the proto root.
pub const PROTO_FILES: &[&str] = &[
    "centrifugal/centrifuge/protocol/client.proto",
    "centrifugal/centrifugo/api/api.proto",
    "centrifugal/centrifugo/unistream/unistream.proto",
    "spinwire/stream/v1/stream.proto",
];

/// Proto files only the server uses (node-to-node messages, and the proxy and lifecycle
/// protocols it speaks to application backends): compiled into Rust, no SDK.
pub const SERVER_ONLY_PROTO_FILES: &[&str] = &[
    "spinwire/cluster/v1/cluster.proto",
    "centrifugal/centrifugo/proxy/proxy.proto",
    "spinwire/lifecycle/v1/lifecycle.proto",
];

/// Directories (relative to the workspace root) that belong to the generator.
pub const GENERATED_DIRS: &[&str] =
    &["server/src/proto/gen", "sdks/python/src/spinwire/_proto", "sdks/go/gen", "sdks/typescript/src/gen"];

/// Single files (relative to the workspace root) the generator rewrites.
pub const GENERATED_FILES: &[&str] = sdk_version::STAMPED_FILES;

struct Args {
    check: bool,
    proto_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { check: false, proto_dir: None };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--check" => args.check = true,
            "--proto-dir" => {
                args.proto_dir = Some(PathBuf::from(iter.next().context("--proto-dir needs a path")?))
            }
            other => bail!("unknown argument {other:?}; usage: codegen [--check] [--proto-dir DIR]"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let root = workspace_root();
    let proto_root = args.proto_dir.clone().unwrap_or_else(|| root.join("proto"));

    let scratch = std::env::temp_dir().join(format!("spinwire-codegen-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let result = generate_all(&root, &proto_root, &scratch)
        .and_then(|()| if args.check { check(&root, &scratch) } else { install(&root, &scratch) });
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn generate_all(root: &Path, proto_root: &Path, scratch: &Path) -> Result<()> {
    let tools = tools::Tools::ensure(root)?;
    rust::generate(proto_root, &scratch.join("server/src/proto/gen"))?;
    foreign::python(&tools, proto_root, &scratch.join("sdks/python/src/spinwire/_proto"))?;
    foreign::go(&tools, proto_root, &scratch.join("sdks/go/gen"))?;
    foreign::typescript(&tools, proto_root, &scratch.join("sdks/typescript/src/gen"))?;
    sdk_version::stamp(root, scratch)?;
    Ok(())
}

/// Every generated path (relative to the workspace root) with its contents.
fn collect(base: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for dir in GENERATED_DIRS {
        let dir_path = base.join(dir);
        if dir_path.exists() {
            walk(base, &dir_path, &mut files)?;
        }
    }
    for file in GENERATED_FILES {
        let path = base.join(file);
        if path.exists() {
            files.insert((*file).to_owned(), fs::read(&path)?);
        }
    }
    Ok(files)
}

fn walk(base: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            // Interpreter caches are not generated artefacts.
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            walk(base, &path, files)?;
        } else {
            let relative = path.strip_prefix(base)?.to_string_lossy().replace('\\', "/");
            files.insert(relative, fs::read(&path)?);
        }
    }
    Ok(())
}

fn check(root: &Path, scratch: &Path) -> Result<()> {
    let committed = collect(root)?;
    let fresh = collect(scratch)?;
    let mut drift = Vec::new();
    for name in committed.keys().chain(fresh.keys()) {
        if committed.get(name) != fresh.get(name) && !drift.contains(name) {
            drift.push(name.clone());
        }
    }
    if drift.is_empty() {
        println!("generated code matches proto/ ({} files)", fresh.len());
        return Ok(());
    }
    for name in &drift {
        let state = match (committed.contains_key(name), fresh.contains_key(name)) {
            (true, false) => "stale (no longer generated)",
            (false, true) => "missing",
            _ => "differs",
        };
        eprintln!("drift: {name}: {state}");
    }
    bail!("{} generated file(s) out of date with proto/: run `cargo run -p codegen`", drift.len())
}

fn install(root: &Path, scratch: &Path) -> Result<()> {
    for dir in GENERATED_DIRS {
        let target = root.join(dir);
        let _ = fs::remove_dir_all(&target);
        copy_tree(&scratch.join(dir), &target)?;
    }
    for file in GENERATED_FILES {
        let target = root.join(file);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(scratch.join(file), &target).with_context(|| format!("writing {file}"))?;
    }
    let count = collect(root)?.len();
    println!("wrote {count} generated files");
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().expect("directory entries have names"));
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen lives one level below the workspace root")
        .to_path_buf()
}
