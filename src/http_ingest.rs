//! The HTTP adapter of the message path, beside the MQTT one (`crate::mqtt`): a message
//! `mgmt` accepted from `POST …/messages` is queued for storing (`pipeline::Pipeline::enqueue`)
//! and, once accepted there, handed to the broker for MQTT subscribers. A fan-out the broker
//! refuses (its router's queue full or gone) is counted, not retried: the message is stored.

use crate::pipeline::Pipeline;
use broker::BrokerHandle;
use mgmt::messages::{BoxFuture, Inbound, MessagePort, SubmitError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct HttpIngest {
    pipeline: Pipeline,
    broker: Arc<BrokerHandle>,
    live: Arc<crate::live::LiveHub>,
    /// HTTP messages stored but not fanned out to MQTT (broker refused).
    pub refused_fanout: Arc<AtomicU64>,
}

impl HttpIngest {
    pub fn new(pipeline: Pipeline, broker: Arc<BrokerHandle>, live: Arc<crate::live::LiveHub>) -> HttpIngest {
        HttpIngest {
            pipeline,
            broker,
            live,
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
        let payload = msg.payload.clone();
        let live = self.live.watched().then(|| mgmt::live::LiveMessage {
            domain_id: msg.domain_id.clone(),
            channel_id: msg.channel_id.clone(),
            subtopic: msg.subtopic.clone(),
            publisher: msg.publisher.clone(),
            protocol: msg.protocol,
            payload: msg.payload.clone(),
            received_at: (msg.received_at * 1e6) as i64,
        });
        match self.pipeline.enqueue(msg, durable) {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(stored) => {
                if let Some(m) = live {
                    self.live.publish(m);
                }
                let (broker, refused) = (self.broker.clone(), self.refused_fanout.clone());
                Box::pin(async move {
                    if !broker.publish(&topic, payload).await {
                        let n = refused.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            tracing::warn!(%topic, refused_total = n + 1, "HTTP message stored but not fanned out to MQTT (router busy)");
                        }
                    }
                    stored.await
                })
            }
        }
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
