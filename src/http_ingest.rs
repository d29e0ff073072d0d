//! The HTTP adapter of the message path, beside the MQTT one (`crate::mqtt`): a message
//! `mgmt` accepted from `POST …/messages` (authenticated, authorized, its SenML or JSON
//! validated) goes through the broker's one ingress like an MQTT PUBLISH: the message sink
//! (the pipeline, with the live views in front) takes it whole or refuses it (503), then
//! persistent sessions and MQTT subscribers get it. A fan-out the router refuses (its queue
//! full or gone) is counted, not retried: the message is stored.

use broker::{BrokerHandle, Identity, NotTaken, PayloadFormat};
use mgmt::messages::{BoxFuture, Content, Inbound, MessagePort, SubmitError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct HttpIngest {
    broker: Arc<BrokerHandle>,
    /// HTTP messages stored but not fanned out to MQTT (broker refused).
    pub refused_fanout: Arc<AtomicU64>,
}

impl HttpIngest {
    pub fn new(broker: Arc<BrokerHandle>) -> HttpIngest {
        HttpIngest {
            broker,
            refused_fanout: Arc::default(),
        }
    }
}

/// The MQTT topic of a channel and subtopic.
fn topic(channel: &str, subtopic: &str) -> String {
    if subtopic.is_empty() {
        format!("channels/{channel}/messages")
    } else {
        format!("channels/{channel}/messages/{subtopic}")
    }
}

impl MessagePort for HttpIngest {
    fn submit(&self, msg: Inbound, durable: bool) -> BoxFuture<Result<(), SubmitError>> {
        let topic = topic(&msg.channel_id, &msg.subtopic);
        let publisher = Identity {
            domain_id: msg.domain_id,
            client_id: msg.publisher,
        };
        let format = match msg.content {
            Content::Senml(_) => PayloadFormat::Senml,
            Content::Json(_) => PayloadFormat::Json,
        };
        let (broker, refused) = (self.broker.clone(), self.refused_fanout.clone());
        Box::pin(async move {
            let published = broker
                .publish(&publisher, &topic, msg.payload, format, durable)
                .await
                .map_err(|e| match e {
                    NotTaken::Full => SubmitError::Full,
                    NotTaken::Closed => SubmitError::Closed,
                    NotTaken::NotCurrent => SubmitError::NotCurrent,
                })?;
            if !published.fanned_out {
                let n = refused.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(%topic, refused_total = n + 1, "HTTP message stored but not fanned out to MQTT (router busy)");
                }
            }
            if published.stored.await {
                Ok(())
            } else {
                Err(SubmitError::Closed)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn topics_follow_channel_and_subtopic() {
        assert_eq!(super::topic("c1", ""), "channels/c1/messages");
        assert_eq!(super::topic("c1", "a/b"), "channels/c1/messages/a/b");
    }
}
