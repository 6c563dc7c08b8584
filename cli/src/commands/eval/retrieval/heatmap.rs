//! The accuracy heat map PNG: one panel per KV policy, depth down × context length across, each
//! cell coloured from red (0%) through yellow to green (100%) and labelled with its percentage,
//! the layout of the needle-in-a-haystack plots in the papers.
//!
//! Owns: layout and colours (text in the embedded font, `crate::font`). Must not know where the
//! accuracies came from.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::font::ensure_font;

/// One policy's accuracies: `accuracy[d][c]` for depth `depths[d]` and context `contexts[c]`.
pub struct Panel {
    pub title: String,
    pub contexts: Vec<usize>,
    pub depths: Vec<f64>,
    pub accuracy: Vec<Vec<f64>>,
}

const PANEL_W: u32 = 380;
const PANEL_H: u32 = 330;
const HEADER_H: u32 = 70;
const MAX_COLUMNS: usize = 4;
/// Narrowest image, in panels: room for the title over a single panel.
const MIN_COLUMNS: u32 = 2;

/// Red → yellow → green for 0 → 0.5 → 1.
pub fn color(accuracy: f64) -> RGBColor {
    let a = accuracy.clamp(0.0, 1.0);
    let (lo, hi, t) = if a < 0.5 { ((215, 48, 39), (254, 224, 139), a * 2.0) } else { ((254, 224, 139), (26, 152, 80), a * 2.0 - 1.0) };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

/// Writes `path`: a title and subtitle over the panels, at most four per row.
pub fn heatmap_png(path: &Path, title: &str, subtitle: &str, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        bail!("no accuracies to plot");
    }
    ensure_font()?;
    let columns = panels.len().min(MAX_COLUMNS);
    let rows = panels.len().div_ceil(MAX_COLUMNS);
    let size = (PANEL_W * (columns as u32).max(MIN_COLUMNS), HEADER_H + PANEL_H * rows as u32);
    let draw_err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());

    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let (header, body) = root.split_vertically(HEADER_H);
    header.draw_text(title, &("sans-serif", 20).into_font().color(&BLACK), (16, 10)).map_err(|e| draw_err(&e))?;
    header
        .draw_text(subtitle, &("sans-serif", 14).into_font().color(&RGBColor(80, 80, 80)), (16, 42))
        .map_err(|e| draw_err(&e))?;
    let (grid, _) = body.split_horizontally(PANEL_W * columns as u32);
    let areas = grid.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(area, panel).map_err(|e| draw_err(&e))?;
    }
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &Panel) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, h) = area.dim_in_pixel();
    let (left, top, right, bottom) = (62i32, 34i32, 14i32, 52i32);
    let (nc, nd) = (panel.contexts.len().max(1) as i32, panel.depths.len().max(1) as i32);
    let cell_w = (w as i32 - left - right) / nc;
    let cell_h = (h as i32 - top - bottom) / nd;
    let centered = |size: u32| ("sans-serif", size).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));

    area.draw(&Text::new(panel.title.clone(), (w as i32 / 2, 16), centered(16)))?;
    for (d, depth) in panel.depths.iter().enumerate() {
        let y = top + d as i32 * cell_h;
        area.draw(&Text::new(format!("{depth}"), (left - 24, y + cell_h / 2), centered(13)))?;
        for (c, _) in panel.contexts.iter().enumerate() {
            let x = left + c as i32 * cell_w;
            let a = panel.accuracy[d][c];
            area.draw(&Rectangle::new([(x, y), (x + cell_w - 1, y + cell_h - 1)], color(a).filled()))?;
            area.draw(&Text::new(format!("{:.0}", a * 100.0), (x + cell_w / 2, y + cell_h / 2), centered(14)))?;
        }
    }
    let grid_bottom = top + nd * cell_h;
    for (c, context) in panel.contexts.iter().enumerate() {
        area.draw(&Text::new(format!("{context}"), (left + c as i32 * cell_w + cell_w / 2, grid_bottom + 12), centered(13)))?;
    }
    area.draw(&Text::new("context length (tokens)", (left + nc * cell_w / 2, grid_bottom + 34), centered(13)))?;
    let side = ("sans-serif", 13).into_font().color(&BLACK).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new("needle depth", (12, top + nd * cell_h / 2), side))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(title: &str) -> Panel {
        Panel { title: title.into(), contexts: vec![1024, 2048], depths: vec![0.1, 0.5, 0.9], accuracy: vec![vec![1.0, 0.8], vec![0.5, 0.0], vec![1.0, 1.0]] }
    }

    /// Decodes the PNG's IHDR (width, height) after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        (be(16), be(20))
    }

    #[test]
    fn colours_run_from_red_through_yellow_to_green() {
        assert_eq!(color(0.0), RGBColor(215, 48, 39));
        assert_eq!(color(0.5), RGBColor(254, 224, 139));
        assert_eq!(color(1.0), RGBColor(26, 152, 80));
        assert_eq!(color(7.0), color(1.0));
    }

    #[test]
    fn panels_wrap_after_four_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        let panels: Vec<Panel> = ["full", "h2o 128", "h2o 256", "snapkv 128", "snapkv 256"].iter().map(|t| panel(t)).collect();
        heatmap_png(&path, "passkey", "SmolLM2", &panels).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), (4 * PANEL_W, HEADER_H + 2 * PANEL_H));
        // Cells and text make it far larger than a blank canvas (~2 kB).
        assert!(bytes.len() > 15_000, "only {} bytes", bytes.len());
        heatmap_png(&path, "passkey", "one", &panels[..1]).unwrap();
        assert_eq!(png_size(&std::fs::read(&path).unwrap()), (MIN_COLUMNS * PANEL_W, HEADER_H + PANEL_H));
    }

    #[test]
    fn nothing_to_plot_and_unwritable_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(heatmap_png(&dir.path().join("e.png"), "t", "s", &[]).is_err());
        let err = heatmap_png(&dir.path().join("no/such/dir/x.png"), "t", "s", &[panel("full")]).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x.png"), "{err}");
    }
}
