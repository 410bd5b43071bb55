//! Track signatures: the application backend's permission for one connection to track a set of
//! keys in a shared-poll channel, as Centrifugo checks it.
//!
//! A signature reads `<iat>:<exp>:<hex HMAC-SHA256>`. The MAC covers, joined by NUL bytes, the
//! `iat` and `exp` texts as sent, the user id, the channel and the lowercase hex SHA-256 of the
//! batch's keys (joined by NUL, in the order sent). `exp` 0 means no expiry; an expired
//! signature is accepted for 5 seconds more. Pure: the caller supplies the clock.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Seconds an expired signature is still accepted.
const GRACE_SECONDS: i64 = 5;

/// The secrets signatures are checked against (`shared_poll.hmac_*`).
#[derive(Debug, Clone, Default)]
pub struct TrackSecrets {
    pub current: String,
    /// Accepted too during a rotation, for signatures issued until `previous_valid_until` (unix
    /// seconds; 0: no limit).
    pub previous: String,
    pub previous_valid_until: i64,
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// Malformed, or signed with another key or for other keys, user or channel (103).
    #[error("invalid track signature")]
    Invalid,
    /// Valid but expired (109): the client asks its backend for a new one.
    #[error("track signature expired")]
    Expired,
}

/// Checks `signature` for `keys` of `channel` tracked by `user`; returns its expiry (unix
/// seconds, 0 for none).
pub fn verify(
    secrets: &TrackSecrets,
    signature: &str,
    user: &str,
    channel: &str,
    keys: &[&str],
    now: i64,
) -> Result<i64, TrackError> {
    let mut parts = signature.splitn(3, ':');
    let (Some(iat), Some(exp), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TrackError::Invalid);
    };
    let payload = signed_payload(iat, exp, user, channel, keys);
    let mut verified = matches(&secrets.current, &payload, mac);
    if !verified && !secrets.previous.is_empty() {
        let issued: i64 = iat.parse().unwrap_or(i64::MAX);
        let in_window = secrets.previous_valid_until <= 0 || issued <= secrets.previous_valid_until;
        verified = in_window && matches(&secrets.previous, &payload, mac);
    }
    if !verified {
        return Err(TrackError::Invalid);
    }
    let expires: i64 = exp.parse().unwrap_or(0);
    if expires > 0 && expires.saturating_add(GRACE_SECONDS) < now {
        return Err(TrackError::Expired);
    }
    Ok(expires)
}

/// A signature as a backend makes one (used by tests and by tools that sign for clients).
pub fn sign(secret: &str, iat: i64, exp: i64, user: &str, channel: &str, keys: &[&str]) -> String {
    let (iat, exp) = (iat.to_string(), exp.to_string());
    let payload = signed_payload(&iat, &exp, user, channel, keys);
    format!("{iat}:{exp}:{}", hex(&mac_of(secret, &payload)))
}

fn signed_payload(iat: &str, exp: &str, user: &str, channel: &str, keys: &[&str]) -> Vec<u8> {
    let keys_hash = hex(&Sha256::digest(keys.join("\0").as_bytes()));
    [iat, exp, user, channel, &keys_hash].join("\0").into_bytes()
}

fn mac_of(secret: &str, payload: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `given` (lowercase hex) is the MAC of `payload`, compared in constant time.
fn matches(secret: &str, payload: &[u8], given: &str) -> bool {
    let expected = hex(&mac_of(secret, payload));
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> TrackSecrets {
        TrackSecrets { current: "test-poll-secret".into(), ..Default::default() }
    }

    /// The worked example computed independently with Python's and Node's crypto.
    #[test]
    fn matches_the_reference_signature() {
        let signature =
            sign("test-poll-secret", 1_700_000_000, 1_700_003_600, "", "poll:test", &["k1", "k2"]);
        assert_eq!(
            signature,
            "1700000000:1700003600:bf4805f598000b694bf7a61c68bf7462e5b4cbaec870e4d35b4efdbc11a7eb64"
        );
        assert_eq!(
            verify(&secrets(), &signature, "", "poll:test", &["k1", "k2"], 1_700_000_100),
            Ok(1_700_003_600)
        );
    }

    #[test]
    fn anything_else_signed_is_refused() {
        let signature = sign("test-poll-secret", 100, 0, "u", "poll:a", &["k1", "k2"]);
        let check = |user, channel, keys: &[&str]| verify(&secrets(), &signature, user, channel, keys, 200);
        assert_eq!(check("u", "poll:a", &["k1", "k2"]), Ok(0), "no expiry");
        assert_eq!(check("v", "poll:a", &["k1", "k2"]), Err(TrackError::Invalid));
        assert_eq!(check("u", "poll:b", &["k1", "k2"]), Err(TrackError::Invalid));
        assert_eq!(check("u", "poll:a", &["k2", "k1"]), Err(TrackError::Invalid), "order matters");
        assert_eq!(check("u", "poll:a", &["k1"]), Err(TrackError::Invalid));
        for bad in ["", "1:2", "x", &signature.to_uppercase()] {
            assert_eq!(verify(&secrets(), bad, "u", "poll:a", &["k1", "k2"], 200), Err(TrackError::Invalid));
        }
    }

    #[test]
    fn expiry_has_five_seconds_of_grace() {
        let signature = sign("test-poll-secret", 100, 1000, "", "c", &["k"]);
        assert_eq!(verify(&secrets(), &signature, "", "c", &["k"], 1005), Ok(1000));
        assert_eq!(verify(&secrets(), &signature, "", "c", &["k"], 1006), Err(TrackError::Expired));
        let forged = sign("other", 100, 1000, "", "c", &["k"]);
        assert_eq!(verify(&secrets(), &forged, "", "c", &["k"], 2000), Err(TrackError::Invalid), "MAC first");
    }

    #[test]
    fn the_previous_key_works_until_its_cut_off() {
        let rotated =
            TrackSecrets { current: "new".into(), previous: "old".into(), previous_valid_until: 500 };
        let early = sign("old", 400, 0, "", "c", &["k"]);
        let late = sign("old", 600, 0, "", "c", &["k"]);
        assert_eq!(verify(&rotated, &early, "", "c", &["k"], 700), Ok(0));
        assert_eq!(verify(&rotated, &late, "", "c", &["k"], 700), Err(TrackError::Invalid));
    }
}
