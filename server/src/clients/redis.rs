//! How to reach one Redis: its address (URL or `host:port`) with the section's credentials,
//! database and TLS applied, and a client for it. Shared by the engine's shards and the Redis
//! Streams consumer, which dial their own connections.

use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, TlsCertificates};

use crate::config::{RedisEngine, Tls};

/// Reads a PEM field of a TLS section (text, base64 or path), empty when unset.
fn pem(key: &str, source: &str) -> Result<Option<Vec<u8>>, String> {
    if source.is_empty() {
        return Ok(None);
    }
    crate::config::read_pem_source(key, source).map(Some).map_err(|e| format!("{e:#}"))
}

/// `host:port` becomes `redis://host:port`; URLs pass through.
fn normalize_address(address: &str) -> String {
    if address.contains("://") { address.to_owned() } else { format!("redis://{address}") }
}

/// Who to log in as, and which database, where the address does not say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub db: i64,
}

impl<'a> Login<'a> {
    /// An engine section's credentials and database.
    pub fn of(section: &'a RedisEngine) -> Self {
        Self { user: &section.user, password: &section.password, db: section.db }
    }
}

/// Connection info for one address with `login` and TLS applied.
pub fn connection_info(login: Login<'_>, address: &str, tls: &Tls) -> Result<ConnectionInfo, String> {
    let mut info = normalize_address(address)
        .into_connection_info()
        .map_err(|e| format!("invalid Redis address {address:?}: {e}"))?;
    let mut redis = info.redis_settings().clone();
    if redis.username().is_none() && !login.user.is_empty() {
        redis = redis.set_username(login.user);
    }
    if redis.password().is_none() && !login.password.is_empty() {
        redis = redis.set_password(login.password);
    }
    if redis.db() == 0 && login.db != 0 {
        redis = redis.set_db(login.db);
    }
    // RESP2 everywhere but Cluster PUB/SUB: plain PUB/SUB connections and scripts behave the
    // same on every Redis-compatible server that way (so `force_resp2` always holds).
    redis = redis.set_protocol(ProtocolVersion::RESP2);
    info = info.set_redis_settings(redis);
    if tls.enabled
        && let ConnectionAddr::Tcp(host, port) = info.addr().clone()
    {
        info = info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: tls.insecure_skip_verify,
            tls_params: None,
        });
    }
    Ok(info)
}

/// A client for `info`, with the section's CA and client certificate when TLS is on.
pub fn client_for(info: ConnectionInfo, tls: &Tls, key: &str) -> Result<Client, String> {
    let tls_on = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let root_cert = pem(&format!("{key}.tls.server_ca_pem"), &tls.server_ca_pem)?;
    let cert = pem(&format!("{key}.tls.cert_pem"), &tls.cert_pem)?;
    let private_key = pem(&format!("{key}.tls.key_pem"), &tls.key_pem)?;
    if !tls_on || (root_cert.is_none() && cert.is_none()) {
        return Client::open(info).map_err(|e| e.to_string());
    }
    let client_tls = match (cert, private_key) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig { client_cert, client_key }),
        _ => None,
    };
    Client::build_with_tls(info, TlsCertificates { client_tls, root_cert }).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_section_credentials_and_db() {
        let section = RedisEngine { user: "u".into(), password: "p".into(), db: 3, ..Default::default() };
        let info = connection_info(Login::of(&section), "127.0.0.1:6390", &Tls::default()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("u"));
        assert_eq!(info.redis_settings().password(), Some("p"));
        assert_eq!(info.redis_settings().db(), 3);
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(host, 6390) if host == "127.0.0.1"));

        // Credentials in the URL win.
        let info =
            connection_info(Login::of(&section), "redis://a:b@localhost:1/5", &Tls::default()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("a"));
        assert_eq!(info.redis_settings().db(), 5);

        let tls = Tls { enabled: true, ..Default::default() };
        let info = connection_info(Login::of(&section), "localhost:6379", &tls).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));

        assert!(connection_info(Login::of(&section), "redis://[bad", &Tls::default()).is_err());
    }
}
