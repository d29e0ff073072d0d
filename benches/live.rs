//! Live views (#16): one channel watched by `BENCH_LIVE_VIEWERS` (100) Server-Sent Events
//! viewers while a device publishes at `BENCH_LIVE_RATE` (1,000) messages/s over MQTT, against
//! the same number of MQTT subscribers of that channel on the same server (the reference:
//! the broker's own fan-out). Prints delivered events per second and the publish-to-event
//! latency (p50, p99), per run and as medians of `BENCH_RUNS` (3) alternating runs.
//! `fluxgate serve` runs as a child process; the viewers and the publisher run here.
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn now_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as f64)
        .unwrap_or(0.0)
}

/// Publishes `rate` messages/s for `secs` seconds; each carries its send time (µs) as `v`.
async fn publish(mqtt: std::net::SocketAddr, channel: &str, rate: u64, secs: u64) -> u64 {
    let mut o = rumqttc::MqttOptions::new("live-pub", mqtt.ip().to_string(), mqtt.port());
    o.set_credentials("live-dev", "live-secret");
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = rumqttc::AsyncClient::new(o, 10_000);
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let topic = format!("channels/{channel}/messages");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let body = format!(r#"[{{"n":"t","v":{}}}]"#, now_us());
        if c.publish(topic.clone(), rumqttc::QoS::AtMostOnce, false, body)
            .await
            .is_ok()
        {
            sent += 1;
        }
    }
    // Let the last messages arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = c.disconnect().await;
    poll.abort();
    sent
}

/// The send time in a payload or event: the number after `"v":`.
fn sent_at(text: &str) -> Option<f64> {
    let i = text.find("\"v\":")? + 4;
    let rest = &text[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '+'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

/// What every run needs.
struct Setup {
    url: String,
    domain: String,
    channel: String,
    token: String,
    mqtt: std::net::SocketAddr,
    viewers: usize,
    rate: u64,
    secs: u64,
}

/// One run with SSE viewers: (sent, delivered events, latencies in µs).
async fn sse_run(s: &Setup) -> (u64, u64, Vec<f64>) {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let client = reqwest::Client::new();
    for _ in 0..s.viewers {
        let mut resp = client
            .get(format!("{}/{}/channels/{}/messages/live", s.url, s.domain, s.channel))
            .bearer_auth(&s.token)
            .send()
            .await
            .expect("live view");
        assert_eq!(resp.status().as_u16(), 200, "live view opened");
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                let got = now_us();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    if let (Some(t), Ok(mut l)) = (sent_at(&event), lat.lock()) {
                        l.push(got - t);
                    }
                }
            }
        }));
    }
    let sent = publish(s.mqtt, &s.channel, s.rate, s.secs).await;
    for t in tasks {
        t.abort();
    }
    let l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    (sent, l.len() as u64, l)
}

/// One run with MQTT subscribers (the reference).
async fn mqtt_run(s: &Setup) -> (u64, u64, Vec<f64>) {
    let mqtt = s.mqtt;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let topic = format!("channels/{}/messages", s.channel);
    for i in 0..s.viewers {
        let mut o = rumqttc::MqttOptions::new(format!("live-sub-{i}"), mqtt.ip().to_string(), mqtt.port());
        o.set_credentials("live-dev", "live-secret");
        o.set_keep_alive(Duration::from_secs(30));
        let (c, mut el) = rumqttc::AsyncClient::new(o, 10_000);
        c.subscribe(topic.clone(), rumqttc::QoS::AtMostOnce)
            .await
            .expect("subscribe");
        // Until SUBACK.
        loop {
            match el.poll().await.expect("subscriber") {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            while let Ok(ev) = el.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                    let got = now_us();
                    if let Some(t) = sent_at(&String::from_utf8_lossy(&p.payload)) {
                        if let Ok(mut l) = lat.lock() {
                            l.push(got - t);
                        }
                    }
                }
            }
        }));
    }
    let sent = publish(mqtt, &s.channel, s.rate, s.secs).await;
    for t in tasks {
        t.abort();
    }
    let l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    (sent, l.len() as u64, l)
}

#[tokio::main]
async fn main() {
    let viewers: usize = common::env("BENCH_LIVE_VIEWERS", 100);
    let rate: u64 = common::env("BENCH_LIVE_RATE", 1000);
    let secs: u64 = common::env("BENCH_SECS", 5);
    let runs: usize = common::env("BENCH_RUNS", 3);
    let dir = tempfile::tempdir().expect("tmp");
    let (mqtt, http) = (common::free_addr(), common::free_addr());
    let env = [
        ("RUST_LOG", "warn".to_string()),
        ("FLUXGATE_HTTP_MAX_LIVE_VIEWERS", (viewers + 10).to_string()),
        ("FLUXGATE_MESSAGES_STORE_MQTT", "false".to_string()),
    ];
    let mut child = common::serve_child_on(dir.path(), mqtt, Some(http), &env).await;
    let url = format!("http://{http}");
    let store = common::server_store(dir.path()).await;
    let d = common::domain(&store, "live", None).id;
    let channel = uuid::Uuid::new_v4().to_string();
    common::channels(&store, &d, std::slice::from_ref(&channel));
    common::clients(&store, &d, &[("live-dev".to_string(), "live-secret".to_string())]);
    store
        .connect(
            &d,
            &["live-dev".to_string()],
            std::slice::from_ref(&channel),
            &storage::ConnType::BOTH,
        )
        .expect("connect");
    let token = common::admin_token(&url).await;
    let setup = Setup {
        url: url.clone(),
        domain: d.clone(),
        channel: channel.clone(),
        token,
        mqtt,
        viewers,
        rate,
        secs,
    };

    println!(
        "live views: {viewers} viewers of one channel, {rate} msg/s over MQTT for {secs} s, {runs} alternating runs"
    );
    println!(
        "{:<24} {:>14} {:>12} {:>12} {:>12}",
        "run", "delivered/s", "expected/s", "p50", "p99"
    );
    let (mut sse_rate, mut sse_p99, mut ref_rate, mut ref_p99) = (vec![], vec![], vec![], vec![]);
    for r in 0..runs {
        for sse in [true, false] {
            let (sent, got, mut lat) = if sse {
                sse_run(&setup).await
            } else {
                mqtt_run(&setup).await
            };
            let per_s = got as f64 / secs as f64;
            let expected = (sent * viewers as u64) as f64 / secs as f64;
            let (p50, p99) = (percentile(&mut lat, 0.5) / 1000.0, percentile(&mut lat, 0.99) / 1000.0);
            let name = if sse { "SSE viewers" } else { "MQTT subscribers (ref)" };
            println!(
                "{:<24} {per_s:>14.0} {expected:>12.0} {p50:>10.2}ms {p99:>10.2}ms   run {}",
                name,
                r + 1
            );
            if sse {
                sse_rate.push(per_s);
                sse_p99.push(p99);
            } else {
                ref_rate.push(per_s);
                ref_p99.push(p99);
            }
        }
    }
    let med = |mut v: Vec<f64>| percentile(&mut v, 0.5);
    let (a, b, c, e) = (med(sse_rate), med(sse_p99), med(ref_rate), med(ref_p99));
    println!("median: SSE {a:.0} events/s, p99 {b:.2} ms; MQTT {c:.0} deliveries/s, p99 {e:.2} ms; ratio delivered SSE/MQTT {:.2}, p99 SSE/MQTT {:.2}", a / c, b / e);
    let _ = child.kill();
    let _ = child.wait();
}
