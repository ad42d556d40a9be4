//! Topic names, kinds and who may subscribe to them.

use crate::auth::Principal;

/// Who may subscribe to topics matching a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicPolicy {
    /// Anyone.
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// Only the principal whose id equals the topic's key: the part of the name after the
    /// pattern's prefix (`user:0xabc` under `user:*` is owned by principal `0xabc`; ASCII case
    /// is ignored, as for hex addresses).
    OwnerOnly,
    /// Nobody (reserved or server-internal topics).
    Deny,
}

/// A topic name pattern: an exact name, or a prefix followed by `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    prefix: String,
    wildcard: bool,
}

impl TopicPattern {
    /// Parses `"user:*"` (prefix) or `"prices"` (exact).
    pub fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self { prefix: prefix.to_owned(), wildcard: true },
            None => Self { prefix: pattern.to_owned(), wildcard: false },
        }
    }

    /// The key of `topic` under this pattern (the part matched by `*`), or `None` when it
    /// does not match.
    pub fn key<'t>(&self, topic: &'t str) -> Option<&'t str> {
        if self.wildcard {
            topic.strip_prefix(self.prefix.as_str())
        } else {
            (topic == self.prefix).then_some("")
        }
    }
}

/// Why a subscription was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The name is empty, too long or has characters outside `[A-Za-z0-9._:/@-]`.
    InvalidTopic(&'static str),
    /// The policy refuses this principal.
    Forbidden,
    /// The connection has too many subscriptions (in total, or of this topic's kind).
    TooMany {
        /// Which limit: "subscriptions" or the topic kind.
        limit: String,
        /// The maximum.
        max: usize,
    },
    /// The `since` or `epoch` param is not a non-negative integer.
    BadSince,
    /// The topic goes through a broker that is unavailable.
    Unavailable,
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidTopic(why) => write!(f, "invalid topic: {why}"),
            Self::Forbidden => f.write_str("not permitted to subscribe to this topic"),
            Self::TooMany { limit, max } => {
                write!(f, "subscription limit reached: {limit} (max {max})")
            }
            Self::BadSince => f.write_str("since and epoch must be non-negative integers"),
            Self::Unavailable => f.write_str("the broker is unavailable"),
        }
    }
}

impl std::error::Error for SubscribeError {}

/// Checks a topic name.
pub fn validate_topic(topic: &str, max_len: usize) -> Result<(), SubscribeError> {
    if topic.is_empty() {
        return Err(SubscribeError::InvalidTopic("empty"));
    }
    if topic.len() > max_len {
        return Err(SubscribeError::InvalidTopic("too long"));
    }
    if !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b)) {
        return Err(SubscribeError::InvalidTopic("characters outside [A-Za-z0-9._:/@-]"));
    }
    Ok(())
}

/// The kind of a topic: its name up to the first `:` (`user:0xabc` is of kind `user`).
pub fn topic_kind(topic: &str) -> &str {
    topic.split_once(':').map_or(topic, |(kind, _)| kind)
}

/// Checks `principal` against the first policy whose pattern matches `topic` (public when
/// none does).
pub fn check_policy(
    policies: &[(TopicPattern, TopicPolicy)],
    topic: &str,
    principal: &Principal,
) -> Result<(), SubscribeError> {
    let Some((key, policy)) = policies.iter().find_map(|(p, pol)| p.key(topic).map(|k| (k, pol)))
    else {
        return Ok(());
    };
    let allowed = match policy {
        TopicPolicy::Public => true,
        TopicPolicy::Authenticated => principal.authenticated,
        TopicPolicy::OwnerOnly => {
            principal.authenticated && !key.is_empty() && key.eq_ignore_ascii_case(&principal.id)
        }
        TopicPolicy::Deny => false,
    };
    if allowed { Ok(()) } else { Err(SubscribeError::Forbidden) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(id: &str, authenticated: bool) -> Principal {
        Principal { id: id.to_owned(), authenticated, ..Principal::anonymous() }
    }

    #[test]
    fn policies_first_match_wins() {
        let policies = vec![
            (TopicPattern::new("user:*"), TopicPolicy::OwnerOnly),
            (TopicPattern::new("solver:*"), TopicPolicy::Authenticated),
            (TopicPattern::new("admin"), TopicPolicy::Deny),
        ];
        let alice = principal("0xAbC", true);
        let anon = Principal::anonymous();
        assert!(check_policy(&policies, "user:0xabc", &alice).is_ok());
        assert_eq!(check_policy(&policies, "user:0xdef", &alice), Err(SubscribeError::Forbidden));
        assert_eq!(check_policy(&policies, "user:", &alice), Err(SubscribeError::Forbidden));
        assert_eq!(check_policy(&policies, "user:0xabc", &anon), Err(SubscribeError::Forbidden));
        assert!(check_policy(&policies, "solver:1", &alice).is_ok());
        assert_eq!(check_policy(&policies, "solver:1", &anon), Err(SubscribeError::Forbidden));
        assert_eq!(check_policy(&policies, "admin", &alice), Err(SubscribeError::Forbidden));
        assert!(check_policy(&policies, "admin2", &anon).is_ok());
        assert!(check_policy(&policies, "prices:btc", &anon).is_ok());
        // An anonymous principal whose id happens to match is still refused.
        assert_eq!(
            check_policy(&policies, "user:", &principal("", false)),
            Err(SubscribeError::Forbidden)
        );
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("prices:btc-usd/1m@binance.spot_x", 128).is_ok());
        for bad in ["", "with space", "quote\"", "newline\n", "ünïcode"] {
            assert!(validate_topic(bad, 128).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"a".repeat(129), 128).is_err());
        assert_eq!(topic_kind("user:0xabc"), "user");
        assert_eq!(topic_kind("prices"), "prices");
    }
}
