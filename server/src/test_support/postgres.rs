//! A throwaway PostgreSQL server: `initdb` into a scratch directory, `postgres` on a free
//! loopback port (trust authentication, no fsync), stopped with a fast shutdown on drop.
//!
//! The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`) unless `initdb` is on the
//! path. PostgreSQL refuses to run as root, so under root both run as the `postgres` user
//! (through `setpriv`, which execs in place and keeps the server's pid ours to signal).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, scratch_dir, wait_for_port};

const REQUIRED_BY: &str = "SPINWIRE_REQUIRE_POSTGRES";

/// A running server, stopped (and its files removed) on drop.
#[derive(Debug)]
pub(crate) struct PostgresServer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(output) = Command::new("sh").args(["-c", "command -v initdb"]).output()
        && output.status.success()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        return path.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` with `args`, as the `postgres` user when we are root.
fn command(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
        command.args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

impl PostgresServer {
    /// Starts one, or returns `None` (after saying so) when PostgreSQL is not installed and the
    /// run does not require it.
    pub(crate) async fn start() -> Option<Self> {
        let required = std::env::var(REQUIRED_BY).is_ok_and(|v| v == "1");
        let Some(bin) = bin_dir() else {
            assert!(!required, "PostgreSQL required ({REQUIRED_BY}=1) but initdb was not found");
            eprintln!("skipping: PostgreSQL not available; install it or run tests/run-all.sh");
            return None;
        };
        let port = free_port();
        let dir = scratch_dir("postgres", port);
        if is_root() {
            let status = Command::new("chown").arg("postgres:").arg(&dir).status().expect("chown");
            assert!(status.success(), "chown {dir:?} to postgres");
        }
        let data = dir.join("data");
        let init_args: Vec<String> =
            ["-D", &data.display().to_string(), "-A", "trust", "-U", "postgres", "--no-sync"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let init = command(&bin.join("initdb"), &init_args).stdout(Stdio::null()).output().expect("initdb");
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let settings = [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
        ];
        let mut args = vec!["-D".to_owned(), data.display().to_string(), "-p".to_owned(), port.to_string()];
        for setting in settings {
            args.extend(["-c".to_owned(), setting.to_owned()]);
        }
        let child = command(&bin.join("postgres"), &args).stdout(Stdio::null()).spawn().expect("postgres");
        let server = Self { child, dir, port };
        wait_for_port(port, "postgres").await;
        server.wait_until_accepting().await;
        Some(server)
    }

    /// The port opens before recovery ends ("the database system is starting up").
    async fn wait_until_accepting(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio_postgres::connect(&self.dsn(), tokio_postgres::NoTls).await {
                Ok(_) => return,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "postgres did not accept queries: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub(crate) fn dsn(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT: a fast shutdown that ends the backends and releases shared memory.
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
