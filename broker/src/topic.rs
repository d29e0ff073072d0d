//! Fluxgate's topic scheme: `channels/<channel_id>/messages[/<subtopic>]`, and Magistrala's
//! newer form `m/<domain_id>/c/<channel_id>[/<subtopic>]` for the same channel: a device may
//! use either; the broker works on the first (canonical) form and shows a subscriber the
//! form it subscribed with.

/// A topic or filter split into channel id and subtopic.
#[derive(Debug, PartialEq, Eq)]
pub struct ChannelTopic<'a> {
    pub channel: &'a str,
    /// Levels after `messages`, joined by `/`; empty when none.
    pub subtopic: &'a str,
}

/// Parses a topic name (no wildcards allowed anywhere) or, with `filter`, a filter whose
/// channel id is concrete and whose subtopic may use `+` and `#` as whole levels.
pub fn parse(t: &str, filter: bool) -> Option<ChannelTopic<'_>> {
    let rest = t.strip_prefix("channels/")?;
    let (channel, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => return None,
    };
    if channel.is_empty() || channel.contains(['+', '#']) {
        return None;
    }
    let subtopic = if rest == "messages" {
        ""
    } else {
        let s = rest.strip_prefix("messages/")?;
        if s.is_empty() || s.split('/').any(str::is_empty) {
            return None;
        }
        s
    };
    if !filter && subtopic.contains(['+', '#']) {
        return None;
    }
    Some(ChannelTopic { channel, subtopic })
}

/// The index bucket of a topic or filter: its channel id, or "" outside `channels/`; `None`
/// for a filter whose channel level is a wildcard. Retained messages and persistent
/// subscriptions are indexed by it, so a lookup scans one channel.
pub(crate) fn bucket(t: &str) -> Option<&str> {
    match t.strip_prefix("channels/") {
        Some(rest) => {
            let c = rest.split('/').next().unwrap_or("");
            (!c.is_empty() && c != "+" && c != "#").then_some(c)
        }
        None => Some(""),
    }
}

/// The canonical form of a topic or filter given in the `m/<domain_id>/c/<channel_id>[/…]`
/// form by a client of `domain`; `None` when `t` is not in that form for that domain (it is
/// then used as it is).
pub fn canonical(t: &str, domain: &str) -> Option<String> {
    let rest = t.strip_prefix("m/")?.strip_prefix(domain)?.strip_prefix("/c/")?;
    let (channel, sub) = match rest.split_once('/') {
        Some((c, s)) => (c, Some(s)),
        None => (rest, None),
    };
    if channel.is_empty() || channel.contains(['+', '#']) {
        return None;
    }
    Some(match sub {
        None => format!("channels/{channel}/messages"),
        Some(s) => format!("channels/{channel}/messages/{s}"),
    })
}

/// A canonical topic or filter in the `m/<domain>/c/<channel_id>[/…]` form.
pub fn m_form(t: &str, domain: &str) -> Option<String> {
    let ct = parse(t, true)?;
    Some(match ct.subtopic {
        "" => format!("m/{domain}/c/{}", ct.channel),
        s => format!("m/{domain}/c/{}/{s}", ct.channel),
    })
}

/// Does the topic belong to Fluxgate's channel namespace at all?
pub fn in_channel_space(t: &str) -> bool {
    t == "channels" || t.starts_with("channels/") || t.starts_with("+/") || t == "+" || t == "#"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_topics() {
        assert_eq!(
            parse("channels/abc/messages", false),
            Some(ChannelTopic {
                channel: "abc",
                subtopic: ""
            })
        );
        assert_eq!(
            parse("channels/abc/messages/a/b", false),
            Some(ChannelTopic {
                channel: "abc",
                subtopic: "a/b"
            })
        );
        assert_eq!(parse("channels/abc/messages/a/+", false), None);
        assert_eq!(
            parse("channels/abc/messages/a/+", true).map(|t| t.subtopic),
            Some("a/+")
        );
        assert_eq!(parse("channels/abc/messages/#", true).map(|t| t.subtopic), Some("#"));
        assert_eq!(parse("channels/+/messages", true), None);
        assert_eq!(parse("channels/#", true), None);
        assert_eq!(parse("channels/abc/other", false), None);
        assert_eq!(parse("channels/abc/messages/", false), None);
        assert_eq!(parse("channels/abc/messages//x", false), None);
        assert!(in_channel_space("#"));
        assert!(in_channel_space("+/x"));
        assert!(!in_channel_space("sensors/a"));
    }

    #[test]
    fn the_m_form_is_the_same_channel() {
        assert_eq!(canonical("m/d1/c/abc", "d1").as_deref(), Some("channels/abc/messages"));
        assert_eq!(
            canonical("m/d1/c/abc/t/x", "d1").as_deref(),
            Some("channels/abc/messages/t/x")
        );
        assert_eq!(
            canonical("m/d1/c/abc/#", "d1").as_deref(),
            Some("channels/abc/messages/#")
        );
        assert_eq!(canonical("m/d2/c/abc", "d1"), None, "another domain's");
        assert_eq!(canonical("m/d1/c/+/x", "d1"), None);
        assert_eq!(canonical("m/d1/c/", "d1"), None);
        assert_eq!(canonical("m/d1x/c/abc", "d1"), None);
        assert_eq!(m_form("channels/abc/messages/t", "d1").as_deref(), Some("m/d1/c/abc/t"));
        assert_eq!(m_form("channels/abc/messages", "d1").as_deref(), Some("m/d1/c/abc"));
        assert_eq!(m_form("other/topic", "d1"), None);
    }
}
