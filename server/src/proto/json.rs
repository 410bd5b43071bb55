//! Serde helpers that the generated messages point at, giving them Centrifugo's JSON shapes.
//!
//! * [`is_default`] implements `omitempty`: a field equal to its default is not written.
//! * [`raw`] embeds `bytes` fields as raw JSON text (`"data":{"a":1}`), the way Centrifugo's
//!   `Raw` type does, instead of serde's array-of-numbers or protobuf-JSON's base64.
//! * [`nullable`] reads `null` as the field's default, as Go's decoders do.

use serde::{Deserialize, Deserializer};

/// True when `value` equals its type's default (the `omitempty` rule).
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Deserializes `null` (or an absent value) as `T::default()`.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Raw-JSON embedding of `bytes` fields.
pub mod raw {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};
    use serde_json::value::RawValue;

    /// Writes the bytes verbatim as a JSON value. Bytes that are not a valid JSON document
    /// (binary payloads published over Protobuf or gRPC) fail serialization; callers turn that
    /// into Centrifugo's "inappropriate protocol" outcome.
    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(bytes).map_err(|_| S::Error::custom(NOT_JSON))?;
        // Newlines can only be whitespace between tokens in valid JSON; dropping them keeps the
        // newline-delimited framing intact.
        let text = if text.contains('\n') { text.replace('\n', "") } else { text.to_owned() };
        let raw = RawValue::from_string(text).map_err(|_| S::Error::custom(NOT_JSON))?;
        serializer.serialize_some(&raw)
    }

    /// Reads whatever JSON value is present and keeps its exact text; `null` becomes empty.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
        match raw {
            None => Ok(Bytes::new()),
            Some(raw) if raw.get() == "null" => Ok(Bytes::new()),
            Some(raw) => {
                let text: Box<str> = raw.into();
                if text.is_empty() {
                    return Err(D::Error::custom("empty raw value"));
                }
                Ok(Bytes::from(text.into_boxed_bytes().into_vec()))
            }
        }
    }

    /// Error text used when a payload cannot be embedded as JSON.
    pub const NOT_JSON: &str = "payload is not valid JSON";
}
