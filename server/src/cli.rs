//! Command line: Centrifugo's flags and subcommands, plus `--dev` for a zero-config first run.
//!
//! `spinwire [--config FILE] [--dev] [--<config.key> VALUE …]` runs the server;
//! `version`, `genconfig`, `checkconfig`, `defaultconfig`, `gentoken`, `gensubtoken`,
//! `checktoken` and `checksubtoken` behave like their Centrifugo namesakes; `gencert` writes a
//! development certificate for HTTPS and WebTransport.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::auth::{Expiry, TokenVerifier, mint_hs256};
use crate::common::unix_now;
use crate::config::{self, Config, LoadedConfig};

/// Parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    pub command: Option<String>,
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub strict: bool,
    pub quiet: bool,
    pub user: Option<String>,
    pub channel: Option<String>,
    /// Token lifetime in seconds; negative = no `exp`.
    pub ttl: Option<i64>,
    /// Output directory (`gencert`).
    pub out: Option<PathBuf>,
    /// `--some.config.key value` overrides.
    pub overrides: Vec<(String, Value)>,
    pub positional: Vec<String>,
}

const SUBCOMMANDS: &[&str] = &[
    "serve",
    "version",
    "genconfig",
    "checkconfig",
    "defaultconfig",
    "gentoken",
    "gensubtoken",
    "checktoken",
    "checksubtoken",
    "gencert",
    "help",
];

/// Parses a flag value the way the config would: booleans and numbers as such, else a string.
fn flag_value(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
    }
}

impl Args {
    pub fn parse(raw: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut args = Self::default();
        let mut iter = raw.into_iter().peekable();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (flag.to_owned(), Some(value.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String> {
                if let Some(v) = inline.clone() {
                    return Ok(v);
                }
                iter.next().with_context(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
                "-o" | "--out" => args.out = Some(PathBuf::from(value("--out")?)),
                "--dev" => args.dev = true,
                "--strict" => args.strict = true,
                "-q" | "--quiet" => args.quiet = true,
                "-u" | "--user" => args.user = Some(value("--user")?),
                "-s" | "--channel" => {
                    // `-s` means --strict for checkconfig and --channel for gensubtoken.
                    if args.command.as_deref() == Some("checkconfig") && flag == "-s" {
                        args.strict = true;
                    } else {
                        args.channel = Some(value("--channel")?);
                    }
                }
                "-t" | "--ttl" => {
                    let text = value("--ttl")?;
                    args.ttl = Some(text.parse().with_context(|| format!("invalid --ttl {text:?}"))?);
                }
                "-p" => args.overrides.push(("http_server.port".into(), flag_value(&value("-p")?))),
                "-a" => args.overrides.push(("http_server.address".into(), flag_value(&value("-a")?))),
                "-h" | "--help" => args.command = Some("help".into()),
                "--pid_file" => args.overrides.push(("pid_file".into(), flag_value(&value("--pid_file")?))),
                other if other.starts_with("--") && other[2..].contains('.') => {
                    let key = other[2..].to_owned();
                    // Boolean flags may stand alone (`--client.insecure`).
                    let text = match inline.clone() {
                        Some(v) => v,
                        None => match iter.peek() {
                            Some(next) if !next.starts_with('-') => iter.next().expect("peeked"),
                            _ => "true".to_owned(),
                        },
                    };
                    args.overrides.push((key, flag_value(&text)));
                }
                other if other.starts_with('-') => bail!("unknown flag {other}"),
                other => {
                    if args.command.is_none() && args.positional.is_empty() && SUBCOMMANDS.contains(&other) {
                        args.command = Some(other.to_owned());
                    } else {
                        args.positional.push(other.to_owned());
                    }
                }
            }
        }
        Ok(args)
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads the config named by `--config` (or `./config.json` when present), the environment
/// and flag overrides.
pub fn load(args: &Args) -> Result<LoadedConfig> {
    let path = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from("config.json")).filter(|p| p.exists()),
    };
    let file = match &path {
        Some(path) => Some(config::load_file(path)?),
        None => None,
    };
    let mut overrides = args.overrides.clone();
    if args.dev {
        overrides.splice(0..0, dev_overrides(file.as_ref()));
    }
    let mut loaded = config::build_with(file, &env_lookup, &overrides)?;
    for (name, _) in std::env::vars() {
        let Some(rest) = config::env::PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else { continue };
        // Kubernetes injects <SERVICE>_PORT… and …_SERVICE_… variables; VAR_ is for templating.
        let injected = rest.contains("_PORT") || rest.contains("_SERVICE_") || rest.starts_with("VAR_");
        if !injected && !loaded.env_names_read.contains(&name) {
            loaded.warnings.push(format!("{name}: unknown environment variable"));
        }
    }
    Ok(loaded)
}

fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Development mode: generated secrets (unless configured), loopback addresses (unless
/// configured), health on, every origin allowed, and a default namespace where clients may
/// subscribe, publish and read presence and history.
fn dev_overrides(file: Option<&Value>) -> Vec<(String, Value)> {
    let configured = |path: &str| {
        let in_file = file
            .and_then(|f| path.split('.').try_fold(f, |v, k| v.get(k)))
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        let env_suffix = path.to_ascii_uppercase().replace('.', "_");
        in_file || config::env::PREFIXES.iter().any(|p| std::env::var(format!("{p}{env_suffix}")).is_ok())
    };
    let mut out = Vec::new();
    if !configured("client.token.hmac_secret_key") {
        out.push(("client.token.hmac_secret_key".into(), Value::String(random_secret())));
    }
    if !configured("http_api.key") {
        out.push(("http_api.key".into(), Value::String(random_secret())));
    }
    if !configured("grpc_api.key") {
        out.push(("grpc_api.key".into(), Value::String(random_secret())));
    }
    // Development only: every listener stays on this machine unless an address is configured.
    for section in ["http_server", "grpc_api", "uni_grpc", "grpc_stream"] {
        if !configured(&format!("{section}.address")) {
            out.push((format!("{section}.address"), Value::String("127.0.0.1".into())));
        }
    }
    out.push(("health.enabled".into(), Value::Bool(true)));
    // gRPC-first: the server API, both client streams and gRPC-web on their default ports.
    for section in ["grpc_api", "uni_grpc", "grpc_stream", "grpc_web"] {
        out.push((format!("{section}.enabled"), Value::Bool(true)));
    }
    out.push(("grpc_web.allowed_origins".into(), json!(["*"])));
    out.push(("client.allowed_origins".into(), json!(["*"])));
    if file.and_then(|f| f.pointer("/channel/without_namespace")).is_none() {
        out.push((
            "channel.without_namespace".into(),
            json!({
                "presence": true,
                "join_leave": true,
                "force_push_join_leave": true,
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": true,
                "allow_subscribe_for_client": true,
                "allow_publish_for_subscriber": true,
                "allow_presence_for_subscriber": true,
                "allow_history_for_subscriber": true
            }),
        ));
    }
    out
}

/// Prints what a developer needs to connect (dev mode).
pub fn print_dev_banner(config: &Config, http_port: u16) {
    let secret = &config.client.token.hmac_secret_key;
    let token = mint_hs256(secret, &json!({"sub": "dev-user", "exp": unix_now() + 7 * 24 * 3600}));
    let key = &config.http_api.key;
    let tls = config.http_server.tls.enabled;
    let (ws_scheme, http_scheme) = if tls { ("wss", "https") } else { ("ws", "http") };
    let webtransport = if config.webtransport.enabled {
        format!(
            "\x20 WebTransport https://localhost:{http_port}{}   (HTTP/3, UDP)\n",
            config.webtransport.handler_prefix
        )
    } else {
        String::new()
    };
    println!(
        "\nSpinwire is running in development mode (memory engine).\n\n\
         \x20 WebSocket   {ws_scheme}://localhost:{http_port}{ws}\n{webtransport}\
         \x20 HTTP API    {http_scheme}://localhost:{http_port}{api}   (X-API-Key: {key})\n\
         \x20 gRPC API    localhost:{grpc_port}, also gRPC-web   (authorization: apikey {grpc_key})\n\
         \x20 gRPC client streams  localhost:{stream_port}   (ClientStreamService, CentrifugoUniStream)\n\
         \x20 HMAC secret {secret}\n\
         \x20 Token for user \"dev-user\" (7 days):\n    {token}\n\n\
         \x20 Try:\n    curl -s -X POST -H 'X-API-Key: {key}' -d '{{\"channel\":\"news\",\"data\":{{\"text\":\"hello\"}}}}' {http_scheme}://localhost:{http_port}{api}/publish\n",
        grpc_port = config.grpc_api.port,
        grpc_key = config.grpc_api.key,
        stream_port = config.grpc_stream.port,
        ws = config.websocket.handler_prefix,
        api = config.http_api.handler_prefix,
    );
}

/// Runs a non-server subcommand; returns the process exit code.
pub fn run_subcommand(command: &str, args: &Args) -> Result<i32> {
    match command {
        "version" => println!("Spinwire v{} (Centrifugo v6 compatible; client protocol v2)", crate::VERSION),
        "help" => println!("{HELP}"),
        "checkconfig" => checkconfig(args)?,
        "genconfig" => {
            let path = args.config.clone().unwrap_or_else(|| PathBuf::from("config.json"));
            genconfig(&path)?;
            println!("{} created", path.display());
        }
        "defaultconfig" => defaultconfig(args)?,
        "gentoken" => gentoken(args)?,
        "gensubtoken" => gensubtoken(args)?,
        "checktoken" => checktoken(args)?,
        "checksubtoken" => checksubtoken(args)?,
        "gencert" => gencert(args)?,
        other => bail!("unknown command {other:?}; see `spinwire help`"),
    }
    Ok(0)
}

fn checkconfig(args: &Args) -> Result<()> {
    let path = args.config.clone().unwrap_or_else(|| PathBuf::from("config.json"));
    let file = config::load_file(&path)?;
    let loaded = config::build(Some(file), &env_lookup)?;
    check_verifiers(&loaded.config)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if args.strict && !loaded.warnings.is_empty() {
        bail!("{} problem(s) found in strict mode", loaded.warnings.len());
    }
    Ok(())
}

fn defaultconfig(args: &Args) -> Result<()> {
    let text = serde_json::to_string_pretty(&Config::default())?;
    match &args.config {
        Some(path) => {
            if path.exists() {
                bail!("{} already exists", path.display());
            }
            std::fs::write(path, text + "\n")?;
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// The claims of a token for `-u USER` valid for `-t TTL` seconds (default a week; negative:
/// no expiry), and the TTL.
fn token_claims(args: &Args) -> (serde_json::Value, i64) {
    let user = args.user.clone().unwrap_or_default();
    let ttl = args.ttl.unwrap_or(7 * 24 * 3600);
    let mut claims = json!({"sub": user, "iat": unix_now()});
    if ttl >= 0 {
        claims["exp"] = json!(unix_now() + ttl);
    }
    (claims, ttl)
}

fn gentoken(args: &Args) -> Result<()> {
    let loaded = load(args)?;
    let secret = &loaded.config.client.token.hmac_secret_key;
    if secret.is_empty() {
        bail!("client.token.hmac_secret_key: not set; HMAC tokens cannot be generated");
    }
    let (claims, ttl) = token_claims(args);
    let kind = format!("HMAC SHA-256 JWT for user \"{}\"", claims["sub"].as_str().unwrap_or(""));
    print_token(args.quiet, &kind, ttl, &mint_hs256(secret, &claims));
    Ok(())
}

fn gensubtoken(args: &Args) -> Result<()> {
    let loaded = load(args)?;
    let client = &loaded.config.client;
    if client.token.hmac_secret_key.is_empty() {
        bail!("client.token.hmac_secret_key: not set; HMAC tokens cannot be generated");
    }
    let (mut claims, ttl) = token_claims(args);
    let channel = args.channel.clone().context("gensubtoken needs -s CHANNEL")?;
    claims["channel"] = json!(channel);
    let own_secret = &client.subscription_token.token.hmac_secret_key;
    let secret = if client.subscription_token.enabled && !own_secret.is_empty() {
        own_secret
    } else {
        &client.token.hmac_secret_key
    };
    let user = claims["sub"].as_str().unwrap_or("");
    let kind = format!("HMAC SHA-256 JWT for user \"{user}\" and channel \"{channel}\"");
    print_token(args.quiet, &kind, ttl, &mint_hs256(secret, &claims));
    Ok(())
}

fn checktoken(args: &Args) -> Result<()> {
    let loaded = load(args)?;
    let token = args.positional.first().context("token argument required")?;
    let skip = loaded.config.client.insecure_skip_token_signature_verify;
    let verifier = TokenVerifier::new(&loaded.config.client.token, "client.token", skip)?;
    let claims = verifier.verify_connect(token, unix_now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("valid token for user \"{}\"{}", claims.user, describe_expiry(claims.expiry));
    Ok(())
}

fn checksubtoken(args: &Args) -> Result<()> {
    let loaded = load(args)?;
    let token = args.positional.first().context("token argument required")?;
    let client = &loaded.config.client;
    let skip = client.insecure_skip_token_signature_verify;
    let verifier = if client.subscription_token.enabled {
        TokenVerifier::new(&client.subscription_token.token, "client.subscription_token", skip)?
    } else {
        TokenVerifier::new(&client.token, "client.token", skip)?
    };
    let claims = verifier.verify_subscribe(token, unix_now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "valid subscription token for user \"{}\" and channel \"{}\"{}",
        claims.user,
        claims.channel,
        describe_expiry(claims.expiry)
    );
    Ok(())
}

fn describe_expiry(expiry: Expiry) -> String {
    match expiry {
        Expiry::Never => String::from(", no expiration"),
        Expiry::At(at) => format!(", expires in {} s", at - unix_now()),
    }
}

fn print_token(quiet: bool, what: &str, ttl: i64, token: &str) {
    if quiet {
        println!("{token}");
    } else if ttl >= 0 {
        println!("{what} with expiration TTL {ttl}s:\n{token}");
    } else {
        println!("{what} without expiration:\n{token}");
    }
}

/// Verifier keys are part of config validity (e.g. a malformed RSA key).
pub fn check_verifiers(config: &Config) -> Result<()> {
    TokenVerifier::new(&config.client.token, "client.token", false)?;
    if config.client.subscription_token.enabled {
        TokenVerifier::new(&config.client.subscription_token.token, "client.subscription_token", false)?;
    }
    Ok(())
}

fn genconfig(path: &Path) -> Result<()> {
    if path.exists() {
        bail!("{} already exists; not overwriting", path.display());
    }
    let value = json!({
        "client": {"token": {"hmac_secret_key": random_secret()}, "allowed_origins": []},
        "http_api": {"key": random_secret()},
    });
    let text = match path.extension().and_then(|e| e.to_str()).unwrap_or("json") {
        "yaml" | "yml" => serde_yaml_ng::to_string(&value)?,
        "toml" => toml::to_string_pretty(&value)?,
        _ => serde_json::to_string_pretty(&value)? + "\n",
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Default validity of `gencert` certificates: under the 14 days browsers accept for pinning.
const GENCERT_DEFAULT_TTL: i64 = 10 * 24 * 3600;

/// Writes a short-lived self-signed certificate for local HTTPS and WebTransport, and prints
/// its SHA-256 hash for `serverCertificateHashes`.
fn gencert(args: &Args) -> Result<()> {
    let hosts = if args.positional.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]
    } else {
        args.positional.clone()
    };
    let ttl = args.ttl.unwrap_or(GENCERT_DEFAULT_TTL);
    let ttl = u64::try_from(ttl).context("gencert needs a positive -t TTL_SECONDS")?;
    let generated = crate::tls::generate_dev_certificate(&hosts, std::time::Duration::from_secs(ttl))?;
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join("spinwire-cert.pem");
    let key_path = dir.join("spinwire-key.pem");
    std::fs::write(&cert_path, &generated.cert_pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, generated.key_pem.as_bytes())?;
    let hex: String = generated.sha256.iter().map(|b| format!("{b:02x}")).collect();
    if args.quiet {
        println!("{hex}");
        return Ok(());
    }
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, generated.sha256);
    let config = json!({
        "http_server": {
            "tls": {"enabled": true, "cert_pem": cert_path, "key_pem": key_path},
            "http3": {"enabled": true},
        },
        "webtransport": {"enabled": true},
    });
    println!(
        "wrote {} and {} (ECDSA P-256, valid {} s, for {})",
        cert_path.display(),
        key_path.display(),
        ttl,
        hosts.join(", ")
    );
    println!("sha256: {hex}");
    println!("config: {config}");
    println!(
        "browser: new WebTransport(url, {{serverCertificateHashes: [{{algorithm: \"sha-256\", \
         value: Uint8Array.from(atob(\"{b64}\"), c => c.charCodeAt(0))}}]}})"
    );
    Ok(())
}

/// Writes a private key readable by its owner only (where the platform has modes). An existing
/// file is replaced, not rewritten in place, so its old mode or a symlink there does not carry
/// over.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("cannot replace {}", path.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, data).with_context(|| format!("cannot write {}", path.display()))
}

const HELP: &str = "spinwire: real-time messaging server, wire-compatible with Centrifugo v6

USAGE:
  spinwire [--config FILE] [--dev] [--<config.key> VALUE ...]   run the server
  spinwire version
  spinwire genconfig [-c FILE]          write a config with generated secrets
  spinwire checkconfig [-c FILE] [--strict]
  spinwire defaultconfig [-c FILE]      print (or write) the full default config
  spinwire gentoken [-c FILE] [-u USER] [-t TTL_SECONDS|-1] [-q]
  spinwire gensubtoken [-c FILE] -u USER -s CHANNEL [-t TTL] [-q]
  spinwire checktoken [-c FILE] TOKEN
  spinwire checksubtoken [-c FILE] TOKEN
  spinwire gencert [-o DIR] [-t TTL_SECONDS] [-q] [HOST ...]
                                        short-lived ECDSA certificate for local HTTPS and
                                        WebTransport; prints its SHA-256 for serverCertificateHashes

Environment: SPINWIRE_<KEY_PATH> (and CENTRIFUGO_<KEY_PATH>), e.g.
  SPINWIRE_CLIENT_TOKEN_HMAC_SECRET_KEY, SPINWIRE_HTTP_API_KEY, SPINWIRE_HTTP_SERVER_PORT";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::parse(args.iter().map(|s| (*s).to_owned())).unwrap()
    }

    #[test]
    fn parses_centrifugo_style_flags() {
        let args =
            parse(&["--config", "c.json", "--http_server.port=9000", "--client.insecure", "-p", "8001"]);
        assert_eq!(args.config.as_deref(), Some(Path::new("c.json")));
        assert_eq!(args.overrides[0], ("http_server.port".into(), json!(9000)));
        assert_eq!(args.overrides[1], ("client.insecure".into(), json!(true)));
        assert_eq!(args.overrides[2], ("http_server.port".into(), json!(8001)));
        let args = parse(&["gensubtoken", "-u", "42", "-s", "$chat:x", "-q"]);
        assert_eq!(args.command.as_deref(), Some("gensubtoken"));
        assert_eq!(args.channel.as_deref(), Some("$chat:x"));
        assert!(args.quiet);
        let args = parse(&["checkconfig", "-s"]);
        assert!(args.strict);
        assert!(Args::parse(["--bogus".to_owned()]).is_err());
    }

    #[test]
    fn dev_mode_listens_on_loopback_unless_an_address_is_configured() {
        let address = |overrides: &[(String, Value)], section: &str| {
            overrides.iter().find(|(key, _)| *key == format!("{section}.address")).map(|(_, v)| v.clone())
        };
        let defaults = dev_overrides(None);
        for section in ["http_server", "grpc_api", "uni_grpc", "grpc_stream"] {
            assert_eq!(address(&defaults, section), Some(json!("127.0.0.1")), "{section}");
        }
        let file = json!({"http_server": {"address": "0.0.0.0"}});
        let configured = dev_overrides(Some(&file));
        assert_eq!(address(&configured, "http_server"), None, "a configured address stays");
        assert_eq!(address(&configured, "grpc_api"), Some(json!("127.0.0.1")));
    }
}
