//! Memory figures of a `fluxgate serve` process: active channel topics with a subscriber,
//! and idle authenticated connections (with the connect rate).

use super::load::{connected, try_connect};
use super::servers::{many_channels, provision, ServerProcess};
use super::Target;
use rumqttc::{Event, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `n_topics` active channel topics: one client subscribed to all of them (100 filters per
/// SUBSCRIBE) while another publishes 20 messages of 1,600 bytes to each (32 KB, enough to
/// fill the per-topic log bound).
pub async fn topics(server: &ServerProcess, n_topics: usize) {
    let s3 = server.store.clone();
    let (topic_dev, many_topics) = tokio::task::spawn_blocking(move || many_channels(&s3, n_topics))
        .await
        .expect("topics");
    let before = server.rss_kib();
    let t = Target {
        name: "fluxgate".into(),
        addr: server.addr,
        creds: Some(vec![topic_dev]),
        topics: many_topics.clone(),
        metrics: None,
    };
    let (sub, mut sub_el) = connected(&t, 0, "topic-reader").await;
    let chunks: Vec<Vec<String>> = many_topics.chunks(100).map(|c| c.to_vec()).collect();
    for chunk in &chunks {
        let filters = chunk
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
        sub.subscribe_many(filters).await.expect("subscribe");
    }
    let mut acked = 0;
    while acked < chunks.len() {
        match sub_el.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    let reader = tokio::spawn(async move {
        let _sub = sub;
        while let Ok(e) = sub_el.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = e {
                r2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (c, mut el) = connected(&t, 0, "topic-filler").await;
    let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for round in 0..20u8 {
        for topic in &many_topics {
            let _ = c
                .publish(topic.clone(), QoS::AtMostOnce, false, vec![round; 1600])
                .await;
        }
    }
    // Until deliveries stop arriving.
    let mut last = u64::MAX;
    while received.load(Ordering::Relaxed) != last {
        last = received.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = server.rss_kib();
    let cfg = broker::BrokerConfig::default();
    println!(
        "topics: {n_topics} channel topics with a subscriber, 20 messages of 1,600 bytes each ({} of {} delivered): server resident memory {} MiB -> {} MiB (+{} MiB; router log bound {} KiB per topic)",
        received.load(Ordering::Relaxed),
        20 * n_topics,
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        cfg.max_segment_size * cfg.max_segment_count / 1024
    );
    let _ = c.disconnect().await;
    driver.abort();
    reader.abort();
}

/// `n_conns` authenticated clients connect (64 at a time) and stay idle: the connect rate and
/// the resident memory per idle connection.
pub async fn connections(server: &ServerProcess, n_conns: usize) {
    let s4 = server.store.clone();
    let (_, _, all_clients) = tokio::task::spawn_blocking(move || provision(&s4, "idle", n_conns))
        .await
        .expect("provision");
    let before = server.rss_kib();
    let start = Instant::now();
    let mut held = Vec::with_capacity(all_clients.len());
    let mut set = tokio::task::JoinSet::new();
    let all = Arc::new(all_clients);
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..64 {
        let (addr, all, next) = (server.addr, all.clone(), next.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= all.len() {
                    return mine;
                }
                let t = Target {
                    name: "fluxgate".into(),
                    addr,
                    creds: Some(vec![all[i].clone()]),
                    topics: Vec::new(),
                    metrics: None,
                };
                match try_connect(&t, 0, &format!("idle-{i}")).await {
                    Ok((c, mut el)) => mine.push((c, tokio::spawn(async move { while el.poll().await.is_ok() {} }))),
                    Err(e) => {
                        eprintln!("{e}");
                        return mine;
                    }
                }
            }
        });
    }
    while let Some(Ok(v)) = set.join_next().await {
        held.extend(v);
    }
    let elapsed = start.elapsed();
    let after = server.rss_kib();
    println!(
        "connections: {} authenticated clients in {:.2?} = {:.0}/s; server resident memory {} MiB -> {} MiB = {:.1} KiB per idle connection",
        held.len(),
        elapsed,
        held.len() as f64 / elapsed.as_secs_f64(),
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / held.len().max(1) as f64
    );
}
