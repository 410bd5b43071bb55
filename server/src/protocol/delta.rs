//! Publications as a subscriber that negotiated delta compression (`delta: "fossil"`) gets
//! them: whole, or as a fossil patch against the previous payload it holds.
//!
//! On the JSON protocol every payload of such a subscription travels as a JSON *string*
//! holding the payload's text (the SDK parses it, or applies it as a patch to the previous
//! text); on Protobuf the bytes go as they are. A patch is sent only when it is shorter than the
//! payload, and on JSON only when it is valid UTF-8: a patch can cut a multi-byte character in
//! two, which no JSON string can carry (Centrifugo sends it anyway and the SDK fails to apply
//! it; here the subscriber gets the whole payload instead).

use bytes::Bytes;

use super::{EncodeError, ProtocolType, fossil};
use crate::proto::client::Publication;

/// The payload as a JSON string literal (no payload stays none: a map removal has no data).
fn json_string(payload: &[u8]) -> Result<Bytes, EncodeError> {
    if payload.is_empty() {
        return Ok(Bytes::new());
    }
    let text = std::str::from_utf8(payload).map_err(|_| EncodeError::NotJson)?;
    Ok(Bytes::from(serde_json::to_string(text).expect("a str always serializes")))
}

/// `publication` whole, as a delta subscriber gets it.
pub fn full(mut publication: Publication, protocol: ProtocolType) -> Result<Publication, EncodeError> {
    if protocol == ProtocolType::Json {
        publication.data = json_string(&publication.data)?;
    }
    publication.delta = false;
    Ok(publication)
}

/// The patch that turns `base` into `publication.data`, when it pays: shorter than the data
/// and, for JSON, valid UTF-8.
pub fn patch_bytes(base: &[u8], data: &[u8]) -> Option<Bytes> {
    let patch = fossil::encode(base, data);
    (patch.len() < data.len()).then(|| Bytes::from(patch))
}

/// `publication` as a patch (`patch` from [`patch_bytes`] against the subscriber's previous
/// payload), or `None` when the patch cannot travel on `protocol`. A patch carries no version or
/// epoch, as Centrifugo's.
pub fn patched(publication: &Publication, patch: &Bytes, protocol: ProtocolType) -> Option<Publication> {
    let data = match protocol {
        ProtocolType::Json => json_string(patch).ok()?,
        ProtocolType::Protobuf => patch.clone(),
    };
    Some(Publication { data, delta: true, version: 0, epoch: String::new(), ..publication.clone() })
}

/// Recovered publications for a delta subscriber: the first whole, each later one as a patch
/// against the one before it where that pays.
pub fn chain(
    publications: Vec<Publication>,
    protocol: ProtocolType,
) -> Result<Vec<Publication>, EncodeError> {
    let mut out = Vec::with_capacity(publications.len());
    let mut previous: Option<Bytes> = None;
    for publication in publications {
        let data = publication.data.clone();
        let as_patch = previous
            .as_deref()
            .and_then(|base| patch_bytes(base, &data))
            .and_then(|patch| patched(&publication, &patch, protocol));
        out.push(match as_patch {
            Some(patch) => patch,
            None => full(publication, protocol)?,
        });
        previous = Some(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(data: &str, offset: u64) -> Publication {
        Publication { data: Bytes::from(data.to_owned()), offset, version: 3, ..Default::default() }
    }

    #[test]
    fn json_payloads_travel_as_strings() {
        let whole = full(publication(r#"{"a":"é\n"}"#, 1), ProtocolType::Json).unwrap();
        assert_eq!(whole.data[0], b'"', "a JSON string literal");
        let text: String = serde_json::from_slice(&whole.data).unwrap();
        assert_eq!(text, r#"{"a":"é\n"}"#);
        let binary = full(publication("\u{1}", 1), ProtocolType::Protobuf).unwrap();
        assert_eq!(&binary.data[..], b"\x01");
    }

    #[test]
    fn a_chain_decodes_back_to_every_payload() {
        let texts: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"items":[{}],"rev":{i}}}"#, "\"same-padding-text\",".repeat(20)))
            .collect();
        let publications = texts.iter().enumerate().map(|(i, t)| publication(t, i as u64 + 1)).collect();
        let chained = chain(publications, ProtocolType::Json).unwrap();
        assert!(!chained[0].delta);
        assert!(chained[1..].iter().all(|p| p.delta && p.version == 0), "later ones are patches");
        let mut held: Vec<u8> = serde_json::from_slice::<String>(&chained[0].data).unwrap().into_bytes();
        for (publication, text) in chained.iter().zip(&texts).skip(1) {
            let patch: String = serde_json::from_slice(&publication.data).unwrap();
            held = fossil::apply(&held, patch.as_bytes()).unwrap();
            assert_eq!(held, text.as_bytes());
        }
    }

    #[test]
    fn a_patch_that_does_not_pay_is_not_sent() {
        assert_eq!(patch_bytes(b"abc", b"xyz"), None);
        let short =
            chain(vec![publication("\"a\"", 1), publication("\"b\"", 2)], ProtocolType::Protobuf).unwrap();
        assert!(!short[1].delta);
    }

    #[test]
    fn a_patch_that_splits_a_character_goes_whole_on_json() {
        let patch = Bytes::from_static(b"5\n\xc3:x0;");
        assert!(patched(&publication("{}", 1), &patch, ProtocolType::Json).is_none());
        assert!(patched(&publication("{}", 1), &patch, ProtocolType::Protobuf).is_some());
    }
}
