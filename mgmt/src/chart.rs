//! `GET /{domainID}/channels/{channelID}/messages/chart.svg`: a time series of one
//! measurement (`name`) of a channel over `from`..`to`, aggregated per `interval`, drawn as
//! an SVG line chart by `plotters`. For the console and anyone else who wants a picture.

use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::messages::{now_secs, parse_interval, q_f64};
use crate::Ctx;
use bytes::Bytes;
use plotters::prelude::*;
use storage::{Aggregate, MessageQuery};
use warp::http::StatusCode;

/// Points drawn at most (buckets of the range).
pub const MAX_POINTS: u64 = 1000;

/// The chart's parameters: name, range (Unix seconds), bucket length, aggregate.
struct Params {
    name: String,
    from: f64,
    to: f64,
    interval: f64,
    aggregate: Aggregate,
}

fn params(req: &Req) -> Result<Params, ApiError> {
    let name = req
        .q("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("query parameter `name` is required"))?
        .to_string();
    let to = q_f64(req, "to")?.map(senml::to_seconds).unwrap_or_else(now_secs);
    let from = q_f64(req, "from")?.map(senml::to_seconds).unwrap_or(to - 3600.0);
    if from >= to {
        return Err(ApiError::bad("`from` must be before `to`"));
    }
    let interval = match req.q("interval").filter(|s| !s.is_empty()) {
        None => (to - from) / 100.0,
        Some(i) => parse_interval(i).ok_or_else(|| ApiError::bad("invalid value of query parameter `interval`"))?,
    };
    if (to - from) / interval > MAX_POINTS as f64 {
        return Err(ApiError::bad(format!(
            "the range holds more than {MAX_POINTS} intervals: choose a longer `interval`"
        )));
    }
    let aggregate = match req.q("aggregation").filter(|s| !s.is_empty()) {
        None => Aggregate::Avg,
        Some(a) => {
            Aggregate::parse(a).ok_or_else(|| ApiError::bad("invalid value of query parameter `aggregation`"))?
        }
    };
    Ok(Params {
        name,
        from,
        to,
        interval,
        aggregate,
    })
}

/// The chart of channel `channel` (already authorized by the caller).
pub async fn chart(ctx: &Ctx, req: &Req, channel: &str) -> Result<Reply, ApiError> {
    let p = params(req)?;
    let q = MessageQuery {
        limit: MAX_POINTS,
        name: Some(p.name.clone()),
        from: Some(p.from),
        to: Some(p.to),
        aggregate: Some((p.aggregate, p.interval)),
        ascending: true,
        ..Default::default()
    };
    let h = channel.to_string();
    let (_, rows) = ctx.db(move |s| s.read_messages(&h, &q)).await?;
    let points: Vec<(f64, f64)> = rows.iter().filter_map(|r| r.value.map(|v| (r.time, v))).collect();
    let svg = draw(&p, &points).map_err(|e| ApiError::Internal(format!("chart: {e}")))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(Bytes::from(svg)),
        content_type: "image/svg+xml",
        headers: vec![("cache-control", "no-store".into())],
        raw: None,
    })
}

/// Hours and minutes of a Unix time (UTC), for the axis.
fn clock(t: f64) -> String {
    let s = t.rem_euclid(86_400.0) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn draw(p: &Params, points: &[(f64, f64)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
                (lo.min(*v), hi.max(*v))
            });
        let (lo, hi) = if points.is_empty() {
            (0.0, 1.0)
        } else if lo == hi {
            (lo - 1.0, hi + 1.0)
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        };
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .caption(
                format!(
                    "{} ({} per {}s)",
                    p.name,
                    format!("{:?}", p.aggregate).to_lowercase(),
                    p.interval
                ),
                ("sans-serif", 16),
            )
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(p.from..p.to, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|t| clock(*t))
            .draw()
            .map_err(|e| e.to_string())?;
        if points.is_empty() {
            root.draw_text(
                "no data in this range",
                &("sans-serif", 14).into_text_style(&root),
                (340, 160),
            )
            .map_err(|e| e.to_string())?;
        } else {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), &BLUE))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(points.iter().map(|pt| Circle::new(*pt, 3, BLUE.filled())))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_holds_one_mark_per_point_and_an_empty_one_says_so() {
        let p = Params {
            name: "temp".into(),
            from: 0.0,
            to: 100.0,
            interval: 10.0,
            aggregate: Aggregate::Avg,
        };
        let svg = draw(&p, &[(5.0, 1.0), (15.0, 3.0), (25.0, 2.0)]).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<polyline"));
        let empty = draw(&p, &[]).expect("svg");
        assert!(empty.contains("no data in this range"));
        assert_eq!(empty.matches("<circle").count(), 0);
        assert_eq!(clock(3_723.0), "01:02:03");
    }
}
