//! `http_server.tls_autocert`: certificates from an ACME server (Let's Encrypt unless
//! `directory_url` says otherwise) for the hosts of `host_whitelist`.
//!
//! The external listener's TLS picks its certificate per handshake from a [`CertStore`]: the
//! issued certificate for the SNI host (or `server_name` when the client sends none), or, for
//! an ACME validator asking for `acme-tls/1`, the host's TLS-ALPN-01 challenge certificate. A
//! task ([`Autocert::run`]) obtains each host's certificate when the server starts, unless
//! `cache_dir` holds one valid for more than 30 days, and renews it 30 days before it expires;
//! the account key and the certificates are kept in `cache_dir`, so a restart needs no new
//! order. With `http: true`, `http_addr` serves HTTP-01 challenges (and redirects everything
//! else to HTTPS), and HTTP-01 is preferred; otherwise TLS-ALPN-01 is answered on the TLS port.
//!
//! Until a host has its first certificate, handshakes for it fail; the server does not wait.

use crate::sync::RwLock;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::{Tls, TlsAutocert};

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Renew a certificate this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often certificates are checked for renewal, and how soon a failed order is retried.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// The ACME account's credentials in `cache_dir`.
const ACCOUNT_FILE: &str = "acme_account.json";

/// The certificates a handshake can be given.
#[derive(Debug, Default)]
pub struct CertStore {
    /// Used when a client sends no SNI.
    default_host: String,
    issued: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 certificates of orders in progress, by host.
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations of orders in progress, by token.
    http_challenges: RwLock<HashMap<String, String>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name().unwrap_or(&self.default_host).to_ascii_lowercase();
        let validating = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let certificates = if validating { &self.alpn_challenges } else { &self.issued };
        certificates.read_locked().get(&host).cloned()
    }
}

impl CertStore {
    /// The key authorization for an HTTP-01 `token`, while its order is in progress.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.read_locked().get(token).cloned()
    }
}

/// Certificates for the whitelisted hosts, obtained and renewed by [`Autocert::run`].
#[derive(Debug)]
pub struct Autocert {
    settings: TlsAutocert,
    store: Arc<CertStore>,
}

impl Autocert {
    /// Loads what `cache_dir` holds; nothing is requested yet.
    pub fn new(settings: &TlsAutocert) -> Result<Self> {
        let hosts: Vec<String> =
            settings.host_whitelist.iter().map(|host| host.to_ascii_lowercase()).collect();
        let default_host =
            if settings.server_name.is_empty() { hosts[0].clone() } else { settings.server_name.clone() };
        let store = Arc::new(CertStore { default_host, ..Default::default() });
        let autocert = Self { settings: TlsAutocert { host_whitelist: hosts, ..settings.clone() }, store };
        for host in &autocert.settings.host_whitelist {
            if let Some((key, _)) = autocert.cached(host) {
                autocert.store.issued.write_locked().insert(host.clone(), key);
            }
        }
        Ok(autocert)
    }

    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// Obtains and renews certificates until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut account = None;
        loop {
            let mut next_check = CHECK_EVERY;
            for host in &self.settings.host_whitelist {
                if !self.needs_order(host) {
                    continue;
                }
                let ordered = async {
                    if account.is_none() {
                        account = Some(self.account().await?);
                    }
                    self.order(account.as_ref().expect("just set"), host).await
                };
                match tokio::select! { result = ordered => result, _ = stop.cancelled() => return } {
                    Ok(()) => tracing::info!(host, "tls_autocert: certificate obtained"),
                    Err(error) => {
                        tracing::warn!(host, error = format!("{error:#}"), "tls_autocert: order failed");
                        next_check = RETRY_AFTER;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next_check) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Whether `host` has no certificate valid for more than [`RENEW_BEFORE`].
    fn needs_order(&self, host: &str) -> bool {
        self.cached(host).is_none_or(|(_, expires)| expires < std::time::SystemTime::now() + RENEW_BEFORE)
    }

    fn cache_path(&self, file: &str) -> Option<PathBuf> {
        (!self.settings.cache_dir.is_empty()).then(|| Path::new(&self.settings.cache_dir).join(file))
    }

    /// The cached certificate of `host` and when it expires (also what was issued this run,
    /// when there is no cache directory).
    fn cached(&self, host: &str) -> Option<(Arc<CertifiedKey>, std::time::SystemTime)> {
        let pem = match self.cache_path(&format!("{host}.pem")) {
            Some(path) => std::fs::read(path).ok()?,
            None => return self.issued_in_memory(host),
        };
        certified_key(&pem).ok()
    }

    fn issued_in_memory(&self, host: &str) -> Option<(Arc<CertifiedKey>, std::time::SystemTime)> {
        let key = self.store.issued.read_locked().get(host).cloned()?;
        let expires = not_after(key.cert.first()?)?;
        Some((key, expires))
    }

    /// The ACME account: from `cache_dir`, or created (and saved there).
    async fn account(&self) -> Result<Account> {
        let http = AcmeHttp::new()?;
        if let Some(path) = self.cache_path(ACCOUNT_FILE)
            && let Ok(json) = std::fs::read(&path)
        {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).context("cached ACME account")?;
            return Account::builder_with_http(Box::new(http))
                .from_credentials(credentials)
                .await
                .context("ACME account");
        }
        let contact = format!("mailto:{}", self.settings.email);
        let contacts: Vec<&str> = if self.settings.email.is_empty() { Vec::new() } else { vec![&contact] };
        let new =
            NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) = Account::builder_with_http(Box::new(http))
            .create(&new, self.settings.directory_url.clone(), None)
            .await
            .context("creating the ACME account")?;
        if let Some(path) = self.cache_path(ACCOUNT_FILE) {
            write_private(&path, &serde_json::to_vec(&credentials)?)?;
        }
        Ok(account)
    }

    /// One order for `host`: its challenge answered, the certificate stored and installed.
    async fn order(&self, account: &Account, host: &str) -> Result<()> {
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await.context("new order")?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("authorization")?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => bail!("authorization is {status:?}"),
            }
            // With `http` on, the operator has opened `http_addr` for this: HTTP-01 first.
            let offered = |kind| authorization.challenges.iter().any(|c| c.r#type == kind);
            let kind = if self.settings.http && offered(ChallengeType::Http01) {
                ChallengeType::Http01
            } else if offered(ChallengeType::TlsAlpn01) {
                ChallengeType::TlsAlpn01
            } else {
                bail!("the ACME server offers no challenge this server can answer");
            };
            tracing::info!(host, challenge = ?kind, "tls_autocert: answering a challenge");
            let mut challenge = authorization.challenge(kind.clone()).context("challenge")?;
            let key_authorization = challenge.key_authorization();
            if kind == ChallengeType::TlsAlpn01 {
                let certificate = alpn_challenge_certificate(host, key_authorization.digest().as_ref())?;
                self.store.alpn_challenges.write_locked().insert(host.to_owned(), certificate);
            } else {
                let token = challenge.token.clone();
                let answer = key_authorization.as_str().to_owned();
                self.store.http_challenges.write_locked().insert(token, answer);
            }
            challenge.set_ready().await.context("challenge ready")?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await.context("waiting for validation");
        self.store.alpn_challenges.write_locked().remove(host);
        self.store.http_challenges.write_locked().clear();
        match status? {
            OrderStatus::Ready => {}
            status => bail!("order is {status:?}"),
        }
        let key_pem = order.finalize().await.context("finalize")?;
        let chain_pem = order.poll_certificate(&retries).await.context("certificate")?;
        let pem = format!("{chain_pem}\n{key_pem}");
        let (key, _) = certified_key(pem.as_bytes())?;
        if let Some(path) = self.cache_path(&format!("{host}.pem")) {
            write_private(&path, pem.as_bytes())?;
        }
        self.store.issued.write_locked().insert(host.to_owned(), key);
        Ok(())
    }
}

/// A certificate chain and its key from one PEM text, with the leaf's expiry.
fn certified_key(pem: &[u8]) -> Result<(Arc<CertifiedKey>, std::time::SystemTime)> {
    let chain =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(pem).context("private key PEM")?;
    let expires = chain.first().and_then(not_after).context("no certificate")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).context("unusable private key")?;
    Ok((Arc::new(CertifiedKey::new(chain, signing)), expires))
}

fn not_after(certificate: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    crate::tls::certificate_not_after(certificate)
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge (RFC 8737).
fn alpn_challenge_certificate(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).context("challenge key")?;
    Ok(Arc::new(CertifiedKey::new(vec![certificate.der().clone()], signing)))
}

/// Writes a file only its owner can read (keys live in it).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("tls_autocert.cache_dir: {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("tls_autocert.cache_dir: {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// The ACME client's HTTPS: the system's roots (`SSL_CERT_FILE` honoured), like every other
/// outgoing call.
struct AcmeHttp(hyper_util::client::legacy::Client<crate::proxy::Https, BodyWrapper<Bytes>>);

impl AcmeHttp {
    fn new() -> Result<Self> {
        Ok(Self(crate::proxy::http_client("http_server.tls_autocert", &Tls::default())?))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(request);
        Box::pin(async move {
            response
                .await
                .map(BytesResponse::from)
                .map_err(|error| instant_acme::Error::Other(Box::new(error)))
        })
    }
}

/// How long a connection to the HTTP-01 listener may last (its requests are tiny).
const HTTP01_CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// The HTTP-01 listener (`tls_autocert.http`): HTTP/1.1 only, every connection limited to
/// [`HTTP01_CONNECTION_LIMIT`].
pub async fn serve_http01(listener: tokio::net::TcpListener, store: Arc<CertStore>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = http_challenge_answer(&store, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(HTTP01_CONNECTION_LIMIT, connection).await;
        });
    }
}

/// An answer on the HTTP-01 listener: a challenge's key authorization, or a redirect to HTTPS.
fn http_challenge_answer(
    store: &CertStore,
    request: &http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = store.http_challenge(token)
    {
        return http::Response::new(Full::new(Bytes::from(answer)));
    }
    let host = request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = host.split(':').next().unwrap_or(host);
    let target = format!("https://{host}{}", request.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::FOUND;
    if let Ok(location) = http::HeaderValue::from_str(&target) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    response
}
