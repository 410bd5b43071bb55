//! Channel name rules: namespaces, the private prefix, user-limited channels and validation.
//!
//! Anatomy (with default boundaries): `$chat:room#42,43`
//! * a leading `$` (`channel.private_prefix`) makes the channel private: subscribing needs a
//!   subscription token; the prefix is stripped before namespace parsing;
//! * text before the first `:` names the namespace (`channel.namespaces[].name`); without `:`
//!   the channel uses `channel.without_namespace`;
//! * text after the last `#` lists the users allowed to subscribe without a token (when the
//!   namespace has `allow_user_limited_channels`).

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use crate::config::{Channel as ChannelConfig, ChannelOptions};
use crate::errors::ClientError;

/// Options resolved for one channel name.
#[derive(Debug, Clone)]
pub struct ResolvedChannel {
    pub options: Arc<ChannelOptions>,
    /// Namespace name, empty for `without_namespace`.
    pub namespace: String,
    pub private: bool,
}

#[derive(Debug)]
struct NamespaceEntry {
    options: Arc<ChannelOptions>,
    regex: Option<Regex>,
}

/// Compiled channel rules from the `channel` config section.
#[derive(Debug)]
pub struct ChannelRules {
    config: ChannelConfig,
    without_namespace: NamespaceEntry,
    namespaces: HashMap<String, NamespaceEntry>,
}

fn entry(options: &ChannelOptions) -> NamespaceEntry {
    NamespaceEntry {
        options: Arc::new(options.clone()),
        // Validated by config::validate; an invalid pattern cannot reach here.
        regex: (!options.channel_regex.is_empty())
            .then(|| Regex::new(&options.channel_regex).expect("validated channel_regex")),
    }
}

impl ChannelRules {
    pub fn new(config: &ChannelConfig) -> Self {
        Self {
            config: config.clone(),
            without_namespace: entry(&config.without_namespace),
            namespaces: config.namespaces.iter().map(|ns| (ns.name.clone(), entry(&ns.options))).collect(),
        }
    }

    /// Whether the channel is private (needs a subscription token).
    pub fn is_private(&self, channel: &str) -> bool {
        !self.config.private_prefix.is_empty() && channel.starts_with(&self.config.private_prefix)
    }

    /// Finds the channel's namespace and validates the name: 102 for an unknown namespace,
    /// 107 for a name that is too long or does not match the namespace's rules.
    pub fn resolve(&self, channel: &str) -> Result<ResolvedChannel, ClientError> {
        if channel.len() > self.config.max_length {
            return Err(ClientError::BAD_REQUEST);
        }
        let private = self.is_private(channel);
        let name = if private { &channel[self.config.private_prefix.len()..] } else { channel };
        let (namespace, rest, entry) = match name.split_once(self.config.namespace_boundary.as_str()) {
            Some((namespace, rest)) => match self.namespaces.get(namespace) {
                Some(entry) => (namespace, rest, entry),
                None => return Err(ClientError::UNKNOWN_CHANNEL),
            },
            None => ("", name, &self.without_namespace),
        };
        match &entry.regex {
            Some(regex) => {
                if !regex.is_match(rest) {
                    return Err(ClientError::BAD_REQUEST);
                }
            }
            None => {
                if !channel.is_ascii() {
                    return Err(ClientError::BAD_REQUEST);
                }
            }
        }
        Ok(ResolvedChannel { options: entry.options.clone(), namespace: namespace.to_owned(), private })
    }

    /// For user-limited channels (`…#u1,u2`): whether `user` is listed. `None` when the channel
    /// is not user-limited.
    pub fn user_limited_allows(&self, channel: &str, user: &str) -> Option<bool> {
        let (_, users) = channel.rsplit_once(self.config.user_boundary.as_str())?;
        Some(!user.is_empty() && users.split(self.config.user_separator.as_str()).any(|u| u == user))
    }

    /// Channels with a `#` part are user-limited only when the namespace allows it.
    pub fn is_user_limited(&self, channel: &str, options: &ChannelOptions) -> bool {
        options.allow_user_limited_channels && channel.contains(self.config.user_boundary.as_str())
    }

    /// Personal channel of a user: `#<user>` or `<namespace>:#<user>`.
    pub fn personal_channel(&self, namespace: &str, user: &str) -> String {
        if namespace.is_empty() {
            format!("{}{user}", self.config.user_boundary)
        } else {
            format!("{namespace}{}{}{user}", self.config.namespace_boundary, self.config.user_boundary)
        }
    }

    /// Global meta TTL used when a namespace sets none.
    pub fn history_meta_ttl(&self, options: &ChannelOptions) -> std::time::Duration {
        if options.history_meta_ttl.is_zero() {
            self.config.history_meta_ttl.0
        } else {
            options.history_meta_ttl.0
        }
    }

    /// `publication_data_format` of the namespace, or the global one.
    pub fn data_format<'a>(&'a self, options: &'a ChannelOptions) -> &'a str {
        if options.publication_data_format.is_empty() {
            &self.config.publication_data_format
        } else {
            &options.publication_data_format
        }
    }
}

/// Checks publication data against a `publication_data_format` (107 on violation).
pub fn validate_data(format: &str, data: &[u8]) -> Result<(), ClientError> {
    match format {
        "binary" => Ok(()),
        "json" => serde_json::from_slice::<serde::de::IgnoredAny>(data)
            .map(|_| ())
            .map_err(|_| ClientError::BAD_REQUEST),
        "json_object" => {
            let trimmed = data.iter().position(|b| !b.is_ascii_whitespace()).map(|i| data[i]);
            if trimmed != Some(b'{') {
                return Err(ClientError::BAD_REQUEST);
            }
            serde_json::from_slice::<serde::de::IgnoredAny>(data)
                .map(|_| ())
                .map_err(|_| ClientError::BAD_REQUEST)
        }
        _ => {
            if data.is_empty() {
                Err(ClientError::BAD_REQUEST)
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    fn rules() -> ChannelRules {
        let mut config = ChannelConfig::default();
        config.namespaces.push(Namespace { name: "chat".into(), ..Default::default() });
        config.namespaces.push(Namespace {
            name: "ids".into(),
            options: ChannelOptions { channel_regex: "^[0-9]+$".into(), ..Default::default() },
        });
        ChannelRules::new(&config)
    }

    #[test]
    fn namespaces_and_private_prefix() {
        let rules = rules();
        assert_eq!(rules.resolve("chat:room").unwrap().namespace, "chat");
        assert_eq!(rules.resolve("plain").unwrap().namespace, "");
        let private = rules.resolve("$chat:secret").unwrap();
        assert!(private.private);
        assert_eq!(private.namespace, "chat");
        assert_eq!(rules.resolve("nope:x").unwrap_err(), ClientError::UNKNOWN_CHANNEL);
    }

    #[test]
    fn name_validation() {
        let rules = rules();
        assert_eq!(rules.resolve(&"a".repeat(256)).unwrap_err(), ClientError::BAD_REQUEST);
        assert_eq!(rules.resolve("chat:ünicode").unwrap_err(), ClientError::BAD_REQUEST);
        assert!(rules.resolve("ids:123").is_ok());
        assert_eq!(rules.resolve("ids:abc").unwrap_err(), ClientError::BAD_REQUEST);
    }

    #[test]
    fn user_limited_channels() {
        let rules = rules();
        assert_eq!(rules.user_limited_allows("dialog:#42,43", "43"), Some(true));
        assert_eq!(rules.user_limited_allows("dialog:#42,43", "44"), Some(false));
        assert_eq!(rules.user_limited_allows("dialog:#42", ""), Some(false));
        assert_eq!(rules.user_limited_allows("dialog:x", "42"), None);
    }

    #[test]
    fn data_formats() {
        assert!(validate_data("", b"").is_err());
        assert!(validate_data("", b"x").is_ok());
        assert!(validate_data("json", b"{").is_err());
        assert!(validate_data("json", b"42").is_ok());
        assert!(validate_data("json_object", b"42").is_err());
        assert!(validate_data("json_object", b" {\"a\":1}").is_ok());
        assert!(validate_data("binary", b"").is_ok());
    }
}
