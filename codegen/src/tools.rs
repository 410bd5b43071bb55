//! The pinned local code generators, installed on first use under `target/codegen-tools/`.
//!
//! Remote buf plugins are not an option (no network beyond the package registries), so each
//! plugin comes from its own ecosystem's registry at an exact version: grpcio-tools from PyPI
//! (its bundled protoc is also the protoc driver for every plugin), protoc-gen-go and
//! protoc-gen-go-grpc from the Go module proxy, protoc-gen-es from npm (`codegen/package.json`).
//! A stamp file records what was installed; changing a pin here reinstalls.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const GRPCIO_TOOLS: &str = "grpcio-tools==1.85.1";
const PYTHON_PROTOBUF: &str = "protobuf==7.36.2";
const PROTOC_GEN_GO: &str = "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12";
const PROTOC_GEN_GO_GRPC: &str = "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2";

/// Paths to the installed generators.
pub struct Tools {
    /// Python interpreter of the tools venv (runs `grpc_tools.protoc`).
    pub python: PathBuf,
    pub protoc_gen_go: PathBuf,
    pub protoc_gen_go_grpc: PathBuf,
    pub protoc_gen_es: PathBuf,
}

impl Tools {
    /// Installs whatever is missing or pinned differently, then returns the tool paths.
    pub fn ensure(root: &Path) -> Result<Self> {
        let dir = root.join("target/codegen-tools");
        fs::create_dir_all(&dir)?;
        let stamp_path = dir.join("stamp");
        let wanted = format!("{GRPCIO_TOOLS} {PYTHON_PROTOBUF} {PROTOC_GEN_GO} {PROTOC_GEN_GO_GRPC}\n");
        let tools = Self {
            python: dir.join("venv/bin/python"),
            protoc_gen_go: dir.join("bin/protoc-gen-go"),
            protoc_gen_go_grpc: dir.join("bin/protoc-gen-go-grpc"),
            protoc_gen_es: root.join("codegen/node_modules/.bin/protoc-gen-es"),
        };
        let installed = fs::read_to_string(&stamp_path).unwrap_or_default();
        let present =
            [&tools.python, &tools.protoc_gen_go, &tools.protoc_gen_go_grpc].iter().all(|p| p.exists());
        if installed != wanted || !present {
            eprintln!("codegen: installing pinned generators into {}", dir.display());
            run(Command::new("python3").args(["-m", "venv"]).arg(dir.join("venv")))?;
            run(Command::new(&tools.python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                GRPCIO_TOOLS,
                PYTHON_PROTOBUF,
            ]))?;
            // One `go install` per module: versioned installs must name a single module.
            for package in [PROTOC_GEN_GO, PROTOC_GEN_GO_GRPC] {
                run(Command::new("go").args(["install", package]).env("GOBIN", dir.join("bin")))?;
            }
            fs::write(&stamp_path, wanted)?;
        }
        // Pinned in codegen/package.json; reinstalled when that file is newer than the install.
        let lock = root.join("codegen/node_modules/.package-lock.json");
        let stale = match (fs::metadata(&lock), fs::metadata(root.join("codegen/package.json"))) {
            (Ok(installed), Ok(wanted)) => installed.modified()? < wanted.modified()?,
            _ => true,
        };
        if !tools.protoc_gen_es.exists() || stale {
            eprintln!("codegen: installing codegen/package.json (protoc-gen-es, buf)");
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(root.join("codegen")))?;
        }
        Ok(tools)
    }
}

/// Runs a command, failing with its output when it does not succeed.
pub fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
