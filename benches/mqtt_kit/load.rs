//! The load generator: runs one scenario against one broker, in its own process (the bench
//! binary started again with `FLUXGATE_BENCH_ROLE=load` and the `Spec` as JSON in
//! `FLUXGATE_BENCH_SPEC`), and prints `RESULT <Figures as JSON>`.

use super::{Figures, Spec, Target};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn epoch() -> &'static Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    E.get_or_init(Instant::now)
}

fn opts(t: &Target, slot: usize, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, t.addr.ip().to_string(), t.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(c) = &t.creds {
        let (u, p) = &c[slot % c.len()];
        o.set_credentials(u, p);
    }
    o
}

pub async fn try_connect(t: &Target, slot: usize, id: &str) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let (c, mut el) = AsyncClient::new(opts(t, slot, id), 10_000);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((c, el)),
            Ok(_) => continue,
            Err(e) => return Err(format!("{}: connect failed: {e}", t.name)),
        }
    }
}

pub async fn connected(t: &Target, slot: usize, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    match try_connect(t, slot, id).await {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// The load process: one scenario, its figures on stdout.
pub async fn main() {
    let spec: Spec = std::env::var("FLUXGATE_BENCH_SPEC")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .expect("FLUXGATE_BENCH_SPEC: a scenario");
    let f = scenario(&spec).await;
    println!("RESULT {}", serde_json::to_string(&f).expect("json"));
}

/// Runs `spec` in a load process of its own; its figures.
pub async fn in_own_process(spec: &Spec) -> Figures {
    let out = tokio::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .env("FLUXGATE_BENCH_ROLE", "load")
        .env("FLUXGATE_BENCH_SPEC", serde_json::to_string(spec).expect("json"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("the load process ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
        Some(r) => serde_json::from_str(r).expect("figures"),
        None => panic!(
            "the load process against {} gave no figures: {}",
            spec.target.name,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `pubs[i]` publishes to topic `pubs[i]`, `subs[j]` subscribes to topic `subs[j]`.
async fn scenario(spec: &Spec) -> Figures {
    let t = &spec.target;
    let qos = if spec.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let window = Duration::from_secs(spec.secs);
    epoch();
    let count = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 20)));
    let mut tasks = Vec::new();
    for (j, &ti) in spec.subs.iter().enumerate() {
        let (c, mut el) = connected(t, j, &format!("bench-sub-{j}")).await;
        c.subscribe(t.topics[ti].clone(), qos).await.expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
        let (count, lat) = (count.clone(), lat.clone());
        // Never cancelled mid-poll (a cancelled poll can lose what rumqttc was writing):
        // the task is aborted once the figures are taken.
        tasks.push(tokio::spawn(async move {
            let _c = c;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if p.payload.len() >= 8 {
                            let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                            let now = epoch().elapsed().as_micros() as u64;
                            if let Ok(mut l) = lat.lock() {
                                l.push(now.saturating_sub(sent));
                            }
                        }
                    }
                    Err(_) => break,
                    _ => {}
                }
            }
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let per_pub_interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.pubs.len() as f64 / r as f64));
    for (i, &ti) in spec.pubs.iter().enumerate() {
        let (c, mut el) = connected(t, spec.subs.len() + i, &format!("bench-pub-{i}")).await;
        let topic = t.topics[ti].clone();
        let acked = published.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Err(_) => break,
                    Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
        let sent = published.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = per_pub_interval.map(tokio::time::interval);
            while start.elapsed() < window {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let mut payload = vec![0u8; 64];
                payload[..8].copy_from_slice(&(epoch().elapsed().as_micros() as u64).to_be_bytes());
                if c.publish(topic.clone(), qos, false, payload).await.is_err() {
                    break;
                }
                if qos == QoS::AtMostOnce {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(window).await;
    let in_window = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    // Publishing has stopped: let what is in flight (publishers slowed by the broker still
    // have messages in their sockets, and QoS 1 acknowledgements still coming) arrive before
    // counting the loss: until everything published came and no acknowledgement came for
    // 100 ms, or nothing came for 2 s. Both counts are read at that moment, before the
    // clients go: an acknowledgement counted later, whose message the subscriber had no
    // time to take, would show as lost (it did, up to 0.3% at QoS 1, in earlier runs).
    let per_topic = |ti: usize| spec.subs.iter().filter(|&&s| s == ti).count() as u64;
    let fan = spec.pubs.first().map(|&ti| per_topic(ti)).unwrap_or(1);
    let (mut last, mut still) = ((u64::MAX, u64::MAX), 0);
    let (delivered, expected) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (count.load(Ordering::Relaxed), published.load(Ordering::Relaxed));
        if (now.0 >= now.1 * fan && now.1 == last.1) || still >= 20 {
            break now;
        }
        still = if now == last { still + 1 } else { 0 };
        last = now;
    };
    let expected = expected * fan;
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    let pct = |p: f64| l.get(((l.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    Figures {
        rate: in_window as f64 / elapsed.as_secs_f64(),
        delivered,
        expected,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}
