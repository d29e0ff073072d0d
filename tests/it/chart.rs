//! `GET /{domainID}/channels/{id}/messages/chart.svg` (#16): one measurement of a channel as
//! an SVG time series.

use crate::engine::env;

#[tokio::test]
async fn a_chart_draws_the_buckets_of_a_range() {
    let e = env().await;
    // Six readings a minute apart, from t0; two per 2-minute bucket.
    let t0 = 1_700_000_000.0;
    let records: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"n":"temp","v":{},"t":{}}}"#, 20 + i, t0 + 60.0 * i as f64))
        .collect();
    let (st, _) = e
        .app
        .send(
            &format!("/http/channels/{}/messages", e.h),
            &format!("Client {}", e.s),
            "application/senml+json",
            &format!("[{}]", records.join(",")),
        )
        .await;
    assert_eq!(st, 202);
    e.app.stored_at_least(6).await;
    let url = |q: &str| format!("{}/{}/channels/{}/messages/chart.svg?{q}", e.app.url, e.d, e.h);
    let get = |q: String| {
        let c = e.app.client.clone();
        let t = e.t.clone();
        async move {
            let r = c.get(q).bearer_auth(t).send().await.expect("chart");
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (status, ct, r.text().await.unwrap_or_default())
        }
    };
    let range = format!("name=temp&from={t0}&to={}&interval=2m", t0 + 360.0);
    let (s, ct, svg) = get(url(&range)).await;
    assert_eq!((s, ct.as_str()), (200, "image/svg+xml"), "{svg}");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle").count(), 3, "one point per bucket with data");
    assert!(svg.contains("<polyline"));
    // A range without data is a chart that says so.
    let (s, _, svg) = get(url(&format!("name=temp&from={}&to={}", t0 - 7200.0, t0 - 3600.0))).await;
    assert_eq!(s, 200);
    assert!(
        svg.contains("no data in this range") && !svg.contains("<circle"),
        "{svg}"
    );
    // Bad parameters.
    for q in [
        String::new(),
        format!("name=temp&from={}&to={t0}", t0 + 10.0),
        format!("name=temp&from={t0}&to={}&interval=1s", t0 + 100_000.0),
        "name=temp&interval=soon".to_string(),
        "name=temp&aggregation=median".to_string(),
    ] {
        let (s, _, body) = get(url(&q)).await;
        assert_eq!(s, 400, "{q}: {body}");
    }
    // Readers of the domain only.
    let r = e.app.client.get(url(&range)).send().await.expect("anonymous");
    assert_eq!(r.status().as_u16(), 401);
}
