//! A subscriber that reads as fast as it can loses nothing under saturation (#30, and #29's
//! item 6): the publishers are slowed (their sockets not read) before the router's log runs
//! past it or its queue overflows; only subscribers that stop reading lose messages.

use crate::engine::Env;
use crate::raw::{framed, put_str, Raw};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUBLISHERS: u8 = 4;
const PER_PUBLISHER: u32 = 5000;
const PAYLOAD: usize = 512;

/// One PUBLISH (3.1.1): the payload starts with the publisher's index and its sequence number.
fn publish_frame(topic: &str, qos: u8, publisher: u8, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(PAYLOAD + topic.len() + 4);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&((seq % 65_535) as u16 + 1).to_be_bytes());
    }
    let mut payload = vec![b'x'; PAYLOAD];
    payload[0] = publisher;
    payload[1..5].copy_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&payload);
    framed(0x30 | (qos << 1), &body)
}

/// `PUBLISHERS` devices send `PER_PUBLISHER` messages each to one topic as fast as their
/// sockets take them (pipelined, acknowledgements read on the side) while one subscriber
/// reads; returns what it got, per publisher in order of arrival.
async fn flood(e: &Env, qos: u8) -> Vec<Vec<u32>> {
    let topic = e.topic(&format!("flood-qos{qos}"));
    let mut reader = e.raw(false, &format!("reader-qos{qos}")).await;
    assert_eq!(reader.subscribe(1, &[(&topic, qos)], &[]).await, vec![qos]);
    let total = PUBLISHERS as usize * PER_PUBLISHER as usize;
    let reading = tokio::spawn(async move {
        let mut got = vec![Vec::new(); PUBLISHERS as usize];
        for _ in 0..total {
            // Ends early (and the caller's comparison fails) when nothing more comes.
            let Ok(Some((first, body))) = reader.packet_within(Duration::from_secs(10)).await else {
                break;
            };
            let m = reader.decode_publish(first, &body);
            if m.qos == 1 {
                reader.send(&framed(0x40, &m.pkid.to_be_bytes())).await;
            }
            let seq = u32::from_be_bytes([m.payload[1], m.payload[2], m.payload[3], m.payload[4]]);
            got[m.payload[0] as usize].push(seq);
        }
        got
    });
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let raw: Raw = e.raw(false, &format!("flooder-{qos}-{p}")).await;
        let (mut rd, mut wr) = raw.s.into_split();
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            let acks = tokio::spawn(async move {
                // Every PUBACK is 4 bytes: count them all.
                let mut want = if qos == 1 { 4 * PER_PUBLISHER as usize } else { 0 };
                let mut buf = vec![0u8; 65_536];
                while want > 0 {
                    let n = rd.read(&mut buf).await.expect("read acks");
                    assert!(n > 0, "the server closed a publisher");
                    want = want.saturating_sub(n);
                }
                rd
            });
            for chunk in (0..PER_PUBLISHER).collect::<Vec<_>>().chunks(64) {
                let mut out = Vec::new();
                for &seq in chunk {
                    out.extend_from_slice(&publish_frame(&topic, qos, p, seq));
                }
                wr.write_all(&out).await.expect("publish");
            }
            let rd = acks.await.expect("acks");
            (rd, wr)
        }));
    }
    let mut keep = Vec::new();
    for p in publishers {
        keep.push(p.await.expect("publisher"));
    }
    let got = reading.await.expect("reader");
    drop(keep);
    got
}

async fn a_reader_loses_nothing(qos: u8) {
    // The default router log (4 segments of 64 KiB): a flood of 10 MB runs through it many
    // times over.
    let e = crate::engine::env().await;
    let m = e.app.broker_metrics.clone();
    let got = flood(&e, qos).await;
    let why = format!(
        "skipped by the router {}, dropped by a full queue {}, publisher reads slowed {}",
        m.router_skipped.load(Ordering::Relaxed),
        m.dropped_qos0_full.load(Ordering::Relaxed),
        m.publishers_slowed.load(Ordering::Relaxed)
    );
    for (p, seqs) in got.iter().enumerate() {
        assert!(
            *seqs == (0..PER_PUBLISHER).collect::<Vec<u32>>(),
            "publisher {p}: everything, in order (QoS {qos}): got {} ({why})",
            seqs.len()
        );
    }
    assert_eq!(
        m.router_skipped.load(Ordering::Relaxed),
        0,
        "nothing skipped by the router"
    );
    assert_eq!(
        m.dropped_qos0_full.load(Ordering::Relaxed),
        0,
        "nothing dropped by a full queue"
    );
    crate::engine::exchange(&e, "after-flood").await;
}

/// [MQTT-4.6.0-6] (ordered per publisher) with nothing lost: QoS 0.
#[tokio::test]
async fn a_subscriber_that_reads_loses_no_qos0_message_under_a_flood_from_four_publishers() {
    a_reader_loses_nothing(0).await;
}

/// The same at QoS 1: every acknowledged message arrives, in order.
#[tokio::test]
async fn a_subscriber_that_reads_loses_no_qos1_message_under_a_flood_from_four_publishers() {
    a_reader_loses_nothing(1).await;
}

/// A subscriber that stops reading is not waited for: the flood goes through (its messages
/// pile up in its socket and its queue, then are dropped and counted, until the stall ends
/// it), and a reader beside it still gets everything.
#[tokio::test]
async fn a_subscriber_that_stops_reading_does_not_hold_the_publishers() {
    let e = crate::engine::env_with(|c| c.mqtt.stall_timeout_ms = 1000).await;
    let topic = e.topic("flood-qos0");
    let mut idle = e.raw(false, "never-reads").await;
    assert_eq!(idle.subscribe(1, &[(&topic, 0)], &[]).await, vec![0]);
    let got = flood(&e, 0).await;
    for (p, seqs) in got.iter().enumerate() {
        assert_eq!(
            seqs.len(),
            PER_PUBLISHER as usize,
            "publisher {p}: the reader got everything"
        );
    }
    drop(idle);
}
