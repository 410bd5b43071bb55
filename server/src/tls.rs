//! Certificates for the TLS listeners (HTTPS/WSS over TCP, HTTP/3 over QUIC) and for outgoing
//! HTTPS (proxies, JWKS): reading them the way Centrifugo's TLS object allows, building rustls
//! configs, and minting the short-lived certificate a browser accepts for local WebTransport
//! (`spinwire gencert`).
//!
//! One crypto provider (ring) is passed explicitly everywhere, so nothing depends on a
//! process-wide default being installed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::{Tls, read_pem_source};

/// ALPN for the TCP listener: HTTP/2 first (gRPC-web, multiplexed SSE), then HTTP/1.1
/// (WebSocket upgrades).
pub const TCP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for the QUIC endpoint.
pub const H3_ALPN: &[&[u8]] = &[b"h3"];

fn certificates(key: &str, source: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem_source(key, source)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{key}: invalid PEM"))?;
    if chain.is_empty() {
        bail!("{key}: no CERTIFICATE block found");
    }
    Ok(chain)
}

/// A rustls server config for `tls` (named `section` in errors) offering `alpn`. HTTP/3 passes
/// `tls13_only`, since QUIC has no TLS 1.2.
pub fn server_config(
    section: &str,
    tls: &Tls,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<Arc<ServerConfig>> {
    let chain = certificates(&format!("{section}.cert_pem"), &tls.cert_pem)?;
    let key_pem = read_pem_source(&format!("{section}.key_pem"), &tls.key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{section}.key_pem: no private key found (PKCS#8, PKCS#1 or SEC1 PEM)"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?;
    let builder = if tls.client_ca_pem.trim().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in certificates(&format!("{section}.client_ca_pem"), &tls.client_ca_pem)? {
            roots.add(ca).with_context(|| format!("{section}.client_ca_pem: unusable CA certificate"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .with_context(|| format!("{section}.client_ca_pem"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .with_context(|| format!("{section}: the key does not match the certificate"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A rustls server config whose certificate `resolver` picks per handshake (`tls_autocert`).
pub fn resolver_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the ring provider supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A rustls client config for outgoing HTTPS under `tls` (named `section` in errors): the
/// system's roots, or only `server_ca_pem`'s when set (a private CA, as Go's `RootCAs`); the
/// client certificate `cert_pem`/`key_pem` when set; SNI `server_name` is left to the caller.
pub fn client_config(section: &str, tls: &Tls) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .context("TLS protocol versions")?;
    let builder = if tls.server_ca_pem.trim().is_empty() {
        use hyper_rustls::ConfigBuilderExt as _;
        builder.with_native_roots().context("reading the system's root certificates")?
    } else {
        let mut roots = RootCertStore::empty();
        for ca in certificates(&format!("{section}.server_ca_pem"), &tls.server_ca_pem)? {
            roots.add(ca).with_context(|| format!("{section}.server_ca_pem: unusable CA certificate"))?;
        }
        builder.with_root_certificates(roots)
    };
    if tls.cert_pem.trim().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let chain = certificates(&format!("{section}.cert_pem"), &tls.cert_pem)?;
    let key_pem = read_pem_source(&format!("{section}.key_pem"), &tls.key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{section}.key_pem: no private key found (PKCS#8, PKCS#1 or SEC1 PEM)"))?;
    builder
        .with_client_auth_cert(chain, key)
        .with_context(|| format!("{section}: the key does not match the certificate"))
}

/// When a DER certificate stops being valid (its `notAfter`), read with a minimal DER walk:
/// Certificate → tbsCertificate → (version) serial, signature, issuer, validity.
pub fn certificate_not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, certificate, _) = der_element(der)?;
    let (_, tbs, _) = der_element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit [0] version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, time, _) = der_element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |range: std::ops::Range<usize>| rest.get(range)?.parse::<i64>().ok();
    let (month, day) = (field(0..2)?, field(2..4)?);
    let seconds =
        days_from_civil(year, month, day) * 86_400 + field(4..6)? * 3600 + field(6..8)? * 60 + field(8..10)?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// One DER element at the start of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A freshly generated self-signed certificate.
#[derive(Debug)]
pub struct DevCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the DER certificate: what WebTransport's `serverCertificateHashes` takes.
    pub sha256: [u8; 32],
}

/// How far `not_before` is set in the past, for clock skew.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Longest `valid_for` a pinned certificate may ask for: browsers refuse certificates pinned by
/// `serverCertificateHashes` whose whole validity (backdating included) exceeds 14 days.
pub const MAX_PINNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600 - BACKDATE.as_secs());

/// Generates an ECDSA P-256 self-signed certificate for `hosts` (DNS names or IP addresses),
/// valid from an hour ago (clock skew) until `valid_for` from now: the shape Chromium requires of a
/// certificate pinned by hash.
pub fn generate_dev_certificate(hosts: &[String], valid_for: Duration) -> Result<DevCertificate> {
    if hosts.is_empty() {
        bail!("a certificate needs at least one host name");
    }
    if valid_for.is_zero() || valid_for > MAX_PINNED_VALIDITY {
        bail!(
            "validity must be between 1 s and {} s (browsers refuse pinned certificates valid for over 14 days)",
            MAX_PINNED_VALIDITY.as_secs()
        );
    }
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).context("invalid host name")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::try_from(valid_for).context("validity out of range")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, hosts[0].clone());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("key generation")?;
    let certificate = params.self_signed(&key).context("signing")?;
    Ok(DevCertificate {
        cert_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
        sha256: Sha256::digest(certificate.der()).into(),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn tls_for(cert: &DevCertificate) -> Tls {
        Tls {
            enabled: true,
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn pem_sources_are_text_base64_or_a_path() {
        let cert = generate_dev_certificate(&["localhost".into()], Duration::from_secs(3600)).unwrap();
        let text = read_pem_source("k", &cert.cert_pem).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&cert.cert_pem);
        assert_eq!(read_pem_source("k", &b64).unwrap().trim_ascii(), text.trim_ascii());
        let dir = std::env::temp_dir().join(format!("spinwire-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cert.pem");
        std::fs::write(&path, &cert.cert_pem).unwrap();
        assert_eq!(read_pem_source("k", path.to_str().unwrap()).unwrap().trim_ascii(), text.trim_ascii());
        let error = read_pem_source("http_server.tls.cert_pem", "/no/such/file.pem").unwrap_err();
        assert!(error.to_string().starts_with("http_server.tls.cert_pem:"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn configs_build_from_a_generated_certificate_and_reject_a_mismatched_key() {
        let cert =
            generate_dev_certificate(&["localhost".into(), "127.0.0.1".into()], MAX_PINNED_VALIDITY).unwrap();
        let config = server_config("http_server.tls", &tls_for(&cert), TCP_ALPN, false).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        server_config("http_server.tls", &tls_for(&cert), H3_ALPN, true).unwrap();

        let other = generate_dev_certificate(&["localhost".into()], Duration::from_secs(60)).unwrap();
        let mismatched = Tls { key_pem: other.key_pem, ..tls_for(&cert) };
        assert!(server_config("http_server.tls", &mismatched, TCP_ALPN, false).is_err());
        let no_cert = Tls { cert_pem: cert.key_pem.clone(), ..tls_for(&cert) };
        let error = server_config("http_server.tls", &no_cert, TCP_ALPN, false).unwrap_err();
        assert!(error.to_string().contains("no CERTIFICATE"), "{error}");
        // Mutual TLS with the certificate as its own CA.
        let mutual = Tls { client_ca_pem: cert.cert_pem.clone(), ..tls_for(&cert) };
        server_config("http_server.tls", &mutual, TCP_ALPN, false).unwrap();
    }

    #[test]
    fn a_certificate_says_when_it_expires_in_utc_and_generalized_time() {
        // 2049-12-31 23:59:58, 2050-01-01 00:00:01 (GeneralizedTime from 2050 on), 2024-02-29 12:30.
        for unix in [2_524_607_998, 2_524_608_001, 1_709_209_800] {
            let not_after = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
            params.not_after = not_after;
            let key = rcgen::KeyPair::generate().unwrap();
            let certificate = params.self_signed(&key).unwrap();
            let expected = std::time::UNIX_EPOCH + Duration::from_secs(not_after.unix_timestamp() as u64);
            assert_eq!(certificate_not_after(certificate.der()), Some(expected), "{not_after}");
        }
        assert_eq!(certificate_not_after(&[0x30, 0x05, 0x30]), None);
    }

    #[test]
    fn pinned_certificates_stay_within_what_browsers_accept() {
        assert!(generate_dev_certificate(&["localhost".into()], MAX_PINNED_VALIDITY * 2).is_err());
        assert!(generate_dev_certificate(&[], Duration::from_secs(60)).is_err());
        let a = generate_dev_certificate(&["localhost".into()], Duration::from_secs(60)).unwrap();
        let b = generate_dev_certificate(&["localhost".into()], Duration::from_secs(60)).unwrap();
        assert_ne!(a.sha256, b.sha256, "each certificate has its own key");
        assert!(a.key_pem.contains("PRIVATE KEY"));
    }
}
