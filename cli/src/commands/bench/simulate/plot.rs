//! The goodput-vs-clients PNG of one simulated (hardware, workload): one line per policy.
//!
//! Owns: chart layout and colours (text in the embedded font, `crate::font`). Must not know how
//! the records were simulated or where else they are written.

use std::path::Path;

use anyhow::{anyhow, Result};
use kvault_scheduler::sim::SimRecord;
use plotters::prelude::*;

use crate::font::ensure_font;

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 600;

/// What the chart says around the lines.
pub struct PlotLabels<'a> {
    pub title: &'a str,
    pub subtitle: &'a str,
}

/// A fixed colour per known policy, so the same policy looks the same in every chart.
fn policy_color(policy: &str, index: usize) -> RGBColor {
    match policy {
        "aggressive" => RGBColor(214, 39, 40),
        "conservative" => RGBColor(31, 119, 180),
        "past-future" => RGBColor(44, 160, 44),
        _ => [RGBColor(148, 103, 189), RGBColor(255, 127, 14), RGBColor(23, 190, 207)][index % 3],
    }
}

/// Writes `path` (PNG): goodput (req/s) against clients, one line with markers per policy, in
/// first-seen order. `records` must all belong to one (hardware, workload).
pub fn goodput_png(path: &Path, labels: &PlotLabels<'_>, records: &[SimRecord]) -> Result<()> {
    if records.is_empty() {
        return Err(anyhow!("no simulation records to plot"));
    }
    ensure_font()?;
    let mut policies: Vec<&str> = Vec::new();
    for r in records {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let (min_c, max_c) = records.iter().fold((usize::MAX, 0), |(lo, hi), r| (lo.min(r.clients), hi.max(r.clients)));
    // A single client count still needs a non-empty x range.
    let pad = ((max_c - min_c) as f64 * 0.04).max(1.0);
    let x_range = (min_c as f64 - pad)..(max_c as f64 + pad);
    let top = records.iter().map(|r| r.goodput_rps).fold(0.0f64, f64::max);
    let y_range = 0.0..if top > 0.0 { top * 1.18 } else { 1.0 };

    let draw_err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let (header, body) = root.split_vertically(78);
    header
        .draw_text(labels.title, &("sans-serif", 26).into_font().color(&BLACK), (24, 12))
        .map_err(|e| draw_err(&e))?;
    header
        .draw_text(labels.subtitle, &("sans-serif", 17).into_font().color(&RGBColor(80, 80, 80)), (24, 48))
        .map_err(|e| draw_err(&e))?;

    let mut chart = ChartBuilder::on(&body)
        .margin_left(16)
        .margin_right(28)
        .margin_bottom(12)
        .x_label_area_size(56)
        .y_label_area_size(84)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients (closed loop)")
        .y_desc("goodput (requests/s meeting the SLA)")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(|e| draw_err(&e))?;

    for (i, policy) in policies.iter().enumerate() {
        let color = policy_color(policy, i);
        let mut points: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.policy == *policy)
            .map(|r| (r.clients as f64, r.goodput_rps))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(3)))
            .map_err(|e| draw_err(&e))?
            .label(*policy)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 28, y)], color.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| draw_err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(|e| draw_err(&e))?;
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(policy: &str, clients: usize, goodput: f64) -> SimRecord {
        SimRecord {
            hardware: "a100".into(), workload: "uniform-1".into(), clients, policy: policy.into(),
            goodput_rps: goodput, throughput_tok_s: 1.0, preemptions: 0, p99_ttft_ms: 1.0,
            p99_max_itl_ms: 1.0, good: 1, failed: 0, sim_time_s: 1.0, steps: 1, timed_out: false,
        }
    }

    /// Decodes the PNG's IHDR (width, height) after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        (be(16), be(20))
    }

    #[test]
    fn chart_is_a_png_of_the_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        let records = [rec("aggressive", 10, 0.1), rec("aggressive", 40, 0.3), rec("past-future", 10, 0.1), rec("past-future", 40, 0.5)];
        goodput_png(&path, &PlotLabels { title: "t", subtitle: "s" }, &records).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), (WIDTH, HEIGHT));
        // A blank white canvas compresses to ~2 kB; lines, text and markers make it larger.
        assert!(bytes.len() > 10_000, "only {} bytes: nothing drawn?", bytes.len());
    }

    #[test]
    fn a_single_client_count_and_zero_goodput_still_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        goodput_png(&path, &PlotLabels { title: "t", subtitle: "s" }, &[rec("conservative", 20, 0.0)]).unwrap();
        assert_eq!(png_size(&std::fs::read(&path).unwrap()), (WIDTH, HEIGHT));
    }

    #[test]
    fn nothing_to_plot_and_unwritable_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let labels = PlotLabels { title: "t", subtitle: "s" };
        assert!(goodput_png(&dir.path().join("e.png"), &labels, &[]).is_err());
        let missing = dir.path().join("no/such/dir/x.png");
        assert!(goodput_png(&missing, &labels, &[rec("aggressive", 10, 1.0)]).is_err());
    }
}
