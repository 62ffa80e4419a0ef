//! Pictures, drawn by the server as SVG: a run's stages on a time axis, and an analysis'
//! measurements against its bounds. Each has a text alternative (`<title>`, `<desc>`) and
//! carries its numbers in words too, so nothing is only a colour.

use std::fmt::Write;

use super::page::{esc, took};
use crate::store::{Evidence, Step};

const WIDTH: f64 = 720.0;
const LABEL: f64 = 110.0;
const ROW: f64 = 26.0;

/// The stages as horizontal bars: start, duration and outcome; a stage still going runs to
/// `now_ms`. `resumed_at`: where a crashed run was picked up again, marked on the axis.
pub fn timeline(steps: &[Step], now_ms: i64, resumed_at: Option<i64>) -> String {
    if steps.is_empty() {
        return "<p>No stage has started yet.</p>".into();
    }
    let start = steps.iter().map(|s| s.started_at).min().unwrap_or(now_ms);
    let end = steps
        .iter()
        .map(|s| s.finished_at.unwrap_or(now_ms))
        .max()
        .unwrap_or(now_ms)
        .max(start + 1);
    let span = (end - start) as f64;
    // Room on the right for the last bar's duration.
    let plot = WIDTH - LABEL - 80.0;
    let x = |ms: i64| LABEL + (ms - start) as f64 / span * plot;
    let height = ROW * steps.len() as f64 + 24.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-labelledby=\"tl-t tl-d\" preserveAspectRatio=\"xMinYMin meet\">\
         <title id=\"tl-t\">Stages over time</title><desc id=\"tl-d\">{} stage(s) over {}</desc>",
        steps.len(),
        took(end - start)
    );
    for (i, s) in steps.iter().enumerate() {
        let y = ROW * i as f64 + 4.0;
        let (x0, x1) = (x(s.started_at), x(s.finished_at.unwrap_or(now_ms)));
        let w = (x1 - x0).max(3.0);
        let running = s.finished_at.is_none();
        let class = match s.status.as_str() {
            "done" => "ok",
            "failed" => "bad",
            "skipped" => "idle",
            _ => "busy",
        };
        let d = took(s.finished_at.unwrap_or(now_ms) - s.started_at);
        let _ = write!(
            out,
            "<g class=\"stage {class}{}\" data-stage=\"{stage}\"><text x=\"0\" y=\"{ty}\">{stage}</text>\
             <rect x=\"{x0:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{h}\" rx=\"3\"><title>{stage}: {status}, {d}</title></rect>\
             <text class=\"d\" x=\"{tx:.1}\" y=\"{ty}\">{d}{}</text></g>",
            if running { " now" } else { "" },
            if running { " …" } else { "" },
            stage = esc(&s.stage),
            status = esc(&s.status),
            ty = y + 14.0,
            h = ROW - 8.0,
            tx = x0 + w + 4.0,
        );
    }
    if let Some(at) = resumed_at.filter(|at| *at >= start && *at <= end) {
        let mx = x(at);
        let _ = write!(
            out,
            "<g class=\"resumed\"><line x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"0\" y2=\"{}\"/><text x=\"{:.1}\" y=\"{}\">crashed / resumed here</text></g>",
            height - 12.0,
            (mx + 3.0).min(WIDTH - 150.0),
            height - 2.0
        );
    }
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"{LABEL}\" y=\"{}\">0</text><text class=\"axis end\" x=\"{}\" y=\"{}\">{}</text></svg>",
        height - 2.0,
        LABEL + plot,
        height - 2.0,
        took(end - start)
    );
    out
}

/// One analysis' measurements (in order) against its bounds, as points joined by a line.
pub fn analysis_chart(name: &str, points: &[&Evidence]) -> String {
    let values: Vec<f64> = points.iter().filter_map(|p| p.value).collect();
    let (min, max) = (
        points.iter().find_map(|p| p.min),
        points.iter().find_map(|p| p.max),
    );
    let mut lo = values
        .iter()
        .copied()
        .chain(min)
        .chain(max)
        .fold(f64::INFINITY, f64::min);
    let mut hi = values
        .iter()
        .copied()
        .chain(min)
        .chain(max)
        .fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if (hi - lo).abs() < f64::EPSILON {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.1;
    (lo, hi) = (lo - pad, hi + pad);
    let (w, h, left, top, bottom) = (360.0, 160.0, 48.0, 10.0, 24.0);
    let plot_h = h - top - bottom;
    let y = |v: f64| top + (hi - v) / (hi - lo) * plot_h;
    let n = points.len().max(2) as f64 - 1.0;
    let x = |i: usize| left + i as f64 / n * (w - left - 10.0);
    let id = format!("an-{}", esc(name));
    let bounds = match (min, max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => "unbounded".into(),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-labelledby=\"{id}-t {id}-d\" data-analysis=\"{}\">\
         <title id=\"{id}-t\">analysis {}</title><desc id=\"{id}-d\">{} measurement(s), must be {bounds}</desc>",
        esc(name),
        esc(name),
        points.len()
    );
    for (label, b) in [("max", max), ("min", min)] {
        if let Some(b) = b {
            let yb = y(b);
            let _ = write!(
                out,
                "<line class=\"bound\" x1=\"{left}\" x2=\"{}\" y1=\"{yb:.1}\" y2=\"{yb:.1}\"/><text class=\"axis\" x=\"2\" y=\"{:.1}\">{label} {b}</text>",
                w - 10.0,
                yb + 4.0,
            );
        }
    }
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.value.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect();
    if line.len() > 1 {
        let _ = write!(out, "<polyline points=\"{}\"/>", line.join(" "));
    }
    for (i, p) in points.iter().enumerate() {
        match p.value {
            Some(v) => {
                let _ = write!(
                    out,
                    "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>#{}: {v} ({})</title></circle>",
                    if p.outcome == "pass" { "ok" } else { "bad" },
                    x(i),
                    y(v),
                    i + 1,
                    esc(&p.outcome)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<text class=\"busy\" x=\"{:.1}\" y=\"{:.1}\">?<title>#{}: inconclusive</title></text>",
                    x(i) - 3.0,
                    h - bottom - 2.0,
                    i + 1
                );
            }
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(stage: &str, status: &str, from: i64, to: Option<i64>) -> Step {
        Step {
            seq: 0,
            stage: stage.into(),
            status: status.into(),
            started_at: from,
            finished_at: to,
            detail: None,
            owner: None,
        }
    }

    #[test]
    fn bars_are_placed_by_time_and_a_running_stage_runs_to_now() {
        let svg = timeline(
            &[
                step("validate", "done", 0, Some(1000)),
                step("deploy", "started", 1000, None),
            ],
            2000,
            Some(1000),
        );
        // 0..2000 ms over the plot: validate fills the first half, deploy the second.
        assert!(svg.contains("x=\"110.0\" y=\"4\" width=\"265.0\""), "{svg}");
        assert!(svg.contains("class=\"stage busy now\""), "{svg}");
        assert!(svg.contains("crashed / resumed here"), "{svg}");
    }

    #[test]
    fn a_chart_draws_its_bounds_and_marks_failures() {
        let e = |v: f64, outcome: &str| Evidence {
            seq: 1,
            stage: "watch".into(),
            kind: "analysis".into(),
            name: "errors".into(),
            outcome: outcome.into(),
            value: Some(v),
            min: None,
            max: Some(0.05),
            detail: None,
            at: 0,
        };
        let (a, b) = (e(0.01, "pass"), e(0.2, "fail"));
        let svg = analysis_chart("errors", &[&a, &b]);
        assert!(
            svg.contains("max 0.05") && svg.contains("must be at most 0.05"),
            "{svg}"
        );
        assert_eq!(svg.matches("<circle class=\"bad\"").count(), 1, "{svg}");
    }
}
