//! The one rights decision, used for PUBLISH, SUBSCRIBE, wills, retained deliveries and every
//! live delivery. Channel rights come from the [`Authorizer`] and are cached per session
//! (invalidated by revocations), so a decision costs no store query in the usual case.

use crate::{topic, Authorizer, Identity, PortError, Rights};
use std::collections::HashMap;

const MAX_CACHED_CHANNELS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Publish,
    Subscribe,
    Deliver,
}

/// What a decision needs beyond the topic itself.
#[derive(Debug, PartialEq, Eq)]
enum Need<'a> {
    Allow,
    Deny,
    Channel(&'a str),
}

/// The filter a shared subscription applies (`$share/<group>/<filter>` → `<filter>`).
pub(crate) fn shared_filter(f: &str) -> Option<(&str, &str)> {
    let rest = f.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    (!group.is_empty() && !group.contains(['+', '#']) && !filter.is_empty()).then_some((group, filter))
}

fn need<'a>(who: Option<&Identity>, action: Action, t: &'a str) -> Need<'a> {
    let t = match action {
        Action::Subscribe => shared_filter(t).map(|(_, f)| f).unwrap_or(t),
        _ => t,
    };
    // `$SYS` and `$share` are the server's (`$share` subscriptions are unwrapped above);
    // other `$` topics are open to anonymous sessions only, as any topic outside channels.
    if t.starts_with('$') {
        let reserved = t == "$SYS" || t.starts_with("$SYS/") || t.starts_with("$share");
        return if who.is_none() && !reserved {
            Need::Allow
        } else {
            Need::Deny
        };
    }
    let channel_space = t == "channels" || t.starts_with("channels/");
    match who {
        // Anonymous sessions live outside `channels/`; `#` and `+/…` are granted, and the
        // channel topics they would match are filtered on delivery.
        None => {
            if channel_space {
                Need::Deny
            } else {
                Need::Allow
            }
        }
        Some(_) => match topic::parse(t, action == Action::Subscribe) {
            Some(ct) => Need::Channel(ct.channel),
            None => Need::Deny,
        },
    }
}

/// A session's cached channel rights.
#[derive(Default)]
pub(crate) struct RightsCache {
    by_channel: HashMap<String, Rights>,
}

impl RightsCache {
    pub fn invalidate(&mut self, channel: Option<&str>) {
        match channel {
            Some(c) => {
                self.by_channel.remove(c);
            }
            None => self.by_channel.clear(),
        }
    }

    /// May `who` do `action` on `t` (a topic, or a filter for subscribe)? A registry that
    /// cannot answer means no (nothing is cached then, so the next use asks again).
    pub async fn allowed(&mut self, auth: &dyn Authorizer, who: Option<&Identity>, action: Action, t: &str) -> bool {
        match self.check(auth, who, action, t).await {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, topic = t, "MQTT rights: the registry could not answer; refused");
                false
            }
        }
    }

    /// `allowed`, telling a registry that cannot answer apart from "no".
    pub async fn check(
        &mut self,
        auth: &dyn Authorizer,
        who: Option<&Identity>,
        action: Action,
        t: &str,
    ) -> Result<bool, PortError> {
        let channel = match (need(who, action, t), who) {
            (Need::Allow, _) => return Ok(true),
            (Need::Deny, _) | (Need::Channel(_), None) => return Ok(false),
            (Need::Channel(c), Some(id)) => (c, id),
        };
        let r = match self.by_channel.get(channel.0) {
            Some(r) => *r,
            None => {
                let r = auth.rights(channel.1, channel.0).await?;
                if self.by_channel.len() >= MAX_CACHED_CHANNELS {
                    self.by_channel.clear();
                }
                self.by_channel.insert(channel.0.to_string(), r);
                r
            }
        };
        Ok(match action {
            Action::Publish => r.publish,
            Action::Subscribe | Action::Deliver => r.subscribe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_and_registry_rules() {
        let id = Identity {
            domain_id: "d".into(),
            client_id: "c".into(),
        };
        let me = Some(&id);
        assert_eq!(need(None, Action::Subscribe, "#"), Need::Allow);
        assert_eq!(need(None, Action::Subscribe, "+/x"), Need::Allow);
        assert_eq!(need(None, Action::Subscribe, "channels/x/messages"), Need::Deny);
        assert_eq!(need(None, Action::Deliver, "channels/x/messages"), Need::Deny);
        assert_eq!(need(None, Action::Publish, "sensors/a"), Need::Allow);
        assert_eq!(need(None, Action::Publish, "$SYS/a"), Need::Deny);
        assert_eq!(need(None, Action::Publish, "$share/g/a"), Need::Deny);
        assert_eq!(need(None, Action::Publish, "$TopicA/B"), Need::Allow);
        assert_eq!(need(None, Action::Subscribe, "$TopicA/#"), Need::Allow);
        assert_eq!(need(None, Action::Deliver, "$TopicA/B"), Need::Allow);
        assert_eq!(need(me, Action::Publish, "$TopicA/B"), Need::Deny);
        assert_eq!(need(me, Action::Subscribe, "#"), Need::Deny);
        assert_eq!(need(me, Action::Subscribe, "channels/x/messages/#"), Need::Channel("x"));
        assert_eq!(
            need(me, Action::Subscribe, "$share/g/channels/x/messages"),
            Need::Channel("x")
        );
        assert_eq!(need(me, Action::Publish, "channels/x/messages/+"), Need::Deny);
        assert_eq!(need(me, Action::Deliver, "channels/x/messages/a"), Need::Channel("x"));
        assert_eq!(need(me, Action::Subscribe, "$SYS/#"), Need::Deny);
        assert_eq!(shared_filter("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(shared_filter("$share//a"), None);
    }
}
