//! `GET /api/v1/stats`: what the dashboard's charts draw, aggregated here so that a browser
//! never downloads the fleet or a Prometheus text to draw a line, and no Prometheus server is
//! needed.
//!
//! Derived from `/metrics`: once a second [`super::events::Live`] reads meshd's own registry
//! (the same text `/metrics` serves) into a [`Sample`] of the counters and the push-latency
//! histogram, and keeps the last [`HISTORY`]. Rates are differences of counters between
//! samples; latency quantiles come from the histogram's bucket differences over a window, the
//! way Prometheus' `histogram_quantile(rate(...))` computes them (linear within a bucket).
//!
//! ```json
//! { "at": 1700000000.0, "interval_seconds": 1,
//!   "sidecars": { "total": 3, "counts": { "SYNCED": 2, "STALE": 0, "NACKED": 1, "CONNECTING": 0 } },
//!   "rates": { "window_seconds": 10, "pushes_per_second": 0.4, "nacks_per_second": 0.0, "certificates_per_second": 0.1 },
//!   "push_latency": { "window_seconds": 60, "count": 12, "p50_seconds": 0.003, "p90_seconds": 0.007,
//!                     "p99_seconds": 0.012, "since_start": { "count": 40, "mean_seconds": 0.004 } },
//!   "series": [ { "t": 1700000000.0, "pushes_per_second": 0.0, "nacks_per_second": 0.0,
//!                 "certificates_per_second": 0.0, "p50_seconds": null, "p99_seconds": null } ] }
//! ```
//! Quantiles are null when nothing was observed in their window.

use super::AdminState;
use super::events::Live;
use super::sidecars::counts;
use axum::Json;
use axum::extract::State;
use mesh_admin_api::events::{
    ChartPoint, CurrentStats, FleetCounts, PushLatency, Rates, SinceStart, Stats,
};
use serde_json::Value;
use std::collections::VecDeque;

/// How many one-second samples are kept (five minutes of chart).
pub const HISTORY: usize = 300;
/// The window of the current rates.
const RATE_WINDOW: f64 = 10.0;
/// The window of the current latency quantiles.
const LATENCY_WINDOW: f64 = 60.0;
/// The window of each chart point's latency quantiles (pushes are rare: one second would
/// mostly be empty).
const SERIES_LATENCY_WINDOW: f64 = 30.0;

const PUSHES: &str = "meshd_pushes_total";
const NACKS: &str = "meshd_nacks_total";
const CERTIFICATES: &str = "meshd_certificates_issued_total";
const LATENCY_BUCKET: &str = "meshd_push_latency_seconds_bucket";
const LATENCY_COUNT: &str = "meshd_push_latency_seconds_count";
const LATENCY_SUM: &str = "meshd_push_latency_seconds_sum";

/// meshd's counters at one instant (summed over their labels).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Unix time, seconds.
    pub at: f64,
    pub pushes: f64,
    pub nacks: f64,
    pub certificates: f64,
    /// The push-latency histogram: (upper bound, cumulative count), ascending, `+Inf` last.
    pub latency_buckets: Vec<(f64, f64)>,
    pub latency_count: f64,
    pub latency_sum: f64,
}

impl Sample {
    /// Reads the series the dashboard needs from the Prometheus text exposition format;
    /// other lines are skipped.
    pub fn parse(text: &str, at: f64) -> Self {
        let mut s = Sample {
            at,
            ..Default::default()
        };
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            match name {
                PUSHES => s.pushes += value,
                NACKS => s.nacks += value,
                CERTIFICATES => s.certificates += value,
                LATENCY_COUNT => s.latency_count += value,
                LATENCY_SUM => s.latency_sum += value,
                LATENCY_BUCKET => {
                    if let Some(le) = label(labels, "le").and_then(parse_bound) {
                        s.latency_buckets.push((le, value));
                    }
                }
                _ => {}
            }
        }
        s.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }
}

/// The value of `name="..."` in a label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

fn parse_bound(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

/// Per-second rate of a counter between two samples (0 when the counter went back, as after
/// a restart of the registry, or no time passed).
fn rate(older: &Sample, newer: &Sample, counter: impl Fn(&Sample) -> f64) -> f64 {
    let dt = newer.at - older.at;
    let dv = counter(newer) - counter(older);
    if dt <= 0.0 || dv < 0.0 { 0.0 } else { dv / dt }
}

/// The `q` quantile of the observations made between `older` and `newer`, interpolated
/// linearly within the bucket it falls in; `None` when there were none. An answer in the
/// `+Inf` bucket is the highest finite bound (as Prometheus does).
pub fn quantile(older: Option<&Sample>, newer: &Sample, q: f64) -> Option<f64> {
    let cumulative: Vec<(f64, f64)> = newer
        .latency_buckets
        .iter()
        .map(|&(le, count)| {
            let before = older
                .and_then(|o| o.latency_buckets.iter().find(|(l, _)| *l == le))
                .map_or(0.0, |(_, c)| *c);
            (le, (count - before).max(0.0))
        })
        .collect();
    let total = cumulative.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &cumulative {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// The newest sample at least `window` seconds older than `newer`, else the oldest one.
fn window_start<'a>(samples: &'a VecDeque<Sample>, newer: &'a Sample, window: f64) -> &'a Sample {
    samples
        .iter()
        .rev()
        .find(|s| newer.at - s.at >= window)
        .or_else(|| samples.front())
        .unwrap_or(newer)
}

/// Rates and latency now, from the samples (oldest first); `Value::Null` parts when there is
/// no sample yet.
pub fn current(samples: &VecDeque<Sample>) -> Value {
    serde_json::to_value(current_stats(samples)).unwrap_or_default()
}

/// [`current`], typed.
fn current_stats(samples: &VecDeque<Sample>) -> CurrentStats {
    let Some(newest) = samples.back() else {
        return CurrentStats {
            rates: None,
            push_latency: None,
            point: None,
        };
    };
    let rates_from = window_start(samples, newest, RATE_WINDOW);
    let latency_from = window_start(samples, newest, LATENCY_WINDOW);
    // Within the window only when an older sample exists; the first sample alone covers
    // everything since start.
    let latency_older = (latency_from.at < newest.at).then_some(latency_from);
    let windowed = latency_older.map_or(newest.latency_count, |o| {
        newest.latency_count - o.latency_count
    });
    CurrentStats {
        rates: Some(Rates {
            window_seconds: RATE_WINDOW,
            pushes_per_second: rate(rates_from, newest, |s| s.pushes),
            nacks_per_second: rate(rates_from, newest, |s| s.nacks),
            certificates_per_second: rate(rates_from, newest, |s| s.certificates),
        }),
        push_latency: Some(PushLatency {
            window_seconds: LATENCY_WINDOW,
            count: windowed.max(0.0),
            p50_seconds: quantile(latency_older, newest, 0.5),
            p90_seconds: quantile(latency_older, newest, 0.9),
            p99_seconds: quantile(latency_older, newest, 0.99),
            since_start: SinceStart {
                count: newest.latency_count,
                mean_seconds: (newest.latency_count > 0.0)
                    .then(|| newest.latency_sum / newest.latency_count),
            },
        }),
        point: point(samples, samples.len() - 1),
    }
}

/// The chart point of sample `i` (rates since sample `i - 1`), or null for the first.
fn point(samples: &VecDeque<Sample>, i: usize) -> Option<ChartPoint> {
    let (Some(newer), Some(older)) = (
        samples.get(i),
        i.checked_sub(1).and_then(|j| samples.get(j)),
    ) else {
        return None;
    };
    let from = window_start(samples, newer, SERIES_LATENCY_WINDOW);
    let from = (from.at < newer.at).then_some(from);
    Some(ChartPoint {
        t: newer.at,
        pushes_per_second: rate(older, newer, |s| s.pushes),
        nacks_per_second: rate(older, newer, |s| s.nacks),
        certificates_per_second: rate(older, newer, |s| s.certificates),
        p50_seconds: quantile(from, newer, 0.5),
        p99_seconds: quantile(from, newer, 0.99),
    })
}

/// Every chart point of the history, oldest first, as JSON.
#[cfg(test)]
fn series(samples: &VecDeque<Sample>) -> Vec<Value> {
    chart(samples)
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect()
}

/// Every chart point of the history, oldest first.
fn chart(samples: &VecDeque<Sample>) -> Vec<ChartPoint> {
    (1..samples.len())
        .filter_map(|i| point(samples, i))
        .collect()
}

/// `GET /api/v1/stats`.
pub(super) async fn get(
    State(state): State<AdminState>,
    axum::Extension(live): axum::Extension<Live>,
) -> Json<Stats> {
    let sidecars = state.xds.sidecars();
    let samples = live.samples();
    let now = current_stats(&samples);
    Json(Stats {
        rates: now.rates,
        push_latency: now.push_latency,
        series: chart(&samples),
        sidecars: FleetCounts {
            total: sidecars.len(),
            counts: counts(&sidecars),
        },
        interval_seconds: super::events::TICK.as_secs_f64(),
        at: super::events::unix_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP meshd_pushes Discovery responses sent, by type.
# TYPE meshd_pushes counter
meshd_pushes_total{type_url=\"type.mesh.v1/Cluster\"} 3
meshd_pushes_total{type_url=\"type.mesh.v1/Listener\"} 2
meshd_certificates_issued_total 7
meshd_push_latency_seconds_sum 0.5
meshd_push_latency_seconds_count 10
meshd_push_latency_seconds_bucket{le=\"0.001\"} 0
meshd_push_latency_seconds_bucket{le=\"0.002\"} 5
meshd_push_latency_seconds_bucket{le=\"0.004\"} 9
meshd_push_latency_seconds_bucket{le=\"+Inf\"} 10
# EOF
";

    #[test]
    fn a_sample_sums_labels_and_reads_the_histogram() {
        let s = Sample::parse(TEXT, 100.0);
        assert_eq!(s.pushes, 5.0);
        assert_eq!(s.nacks, 0.0);
        assert_eq!(s.certificates, 7.0);
        assert_eq!(s.latency_count, 10.0);
        assert_eq!(s.latency_buckets.len(), 4);
        assert!(s.latency_buckets[3].0.is_infinite());
    }

    #[test]
    fn the_names_are_those_meshd_renders() {
        let metrics = crate::metrics::Metrics::new();
        metrics.pushed("type.mesh.v1/Cluster");
        metrics.pushed("type.mesh.v1/Listener");
        metrics.nacked("type.mesh.v1/Cluster");
        metrics.certificate_issued();
        metrics.push_latency(0.003);
        let s = Sample::parse(&metrics.render(), 1.0);
        assert_eq!(
            (s.pushes, s.nacks, s.certificates, s.latency_count),
            (2.0, 1.0, 1.0, 1.0),
            "{}",
            metrics.render()
        );
        assert!(s.latency_buckets.len() > 10);
        assert_eq!(
            quantile(None, &s, 0.5).map(|q| q > 0.002 && q <= 0.004),
            Some(true)
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let s = Sample::parse(TEXT, 100.0);
        // rank 5 of 10 is the top of the (0.001, 0.002] bucket
        assert_eq!(quantile(None, &s, 0.5), Some(0.002));
        // rank 7 of 10: half-way through (0.002, 0.004]
        let p70 = quantile(None, &s, 0.7).unwrap();
        assert!((p70 - 0.003).abs() < 1e-9, "{p70}");
        // in +Inf: the highest finite bound
        assert_eq!(quantile(None, &s, 0.99), Some(0.004));
        // nothing new between two equal samples
        assert_eq!(quantile(Some(&s), &s, 0.5), None);
    }

    #[test]
    fn rates_and_series_come_from_differences() {
        let a = Sample::parse(TEXT, 100.0);
        let b = Sample::parse(&TEXT.replace("} 3\n", "} 13\n"), 102.0);
        assert_eq!(rate(&a, &b, |s| s.pushes), 5.0);
        assert_eq!(rate(&b, &a, |s| s.pushes), 0.0, "a counter going back is 0");
        let samples: VecDeque<Sample> = [a, b].into_iter().collect();
        let series = series(&samples);
        assert_eq!(series.len(), 1);
        assert_eq!(series[0]["pushes_per_second"], 5.0);
        assert_eq!(series[0]["p50_seconds"], Value::Null, "no new observation");
        let now = current(&samples);
        assert_eq!(now["rates"]["pushes_per_second"], 5.0);
        assert_eq!(now["push_latency"]["since_start"]["count"], 10.0);
    }
}
