//! Fluxgate's topic scheme: `channels/<channel_id>/messages[/<subtopic>]`.

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
}
