//! What `eval kv` prints and writes: a markdown table, the JSON result and a PNG with KL and
//! perplexity against budget (one line per policy, the full cache's perplexity as a reference).
//!
//! Must not know: how the numbers were measured.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use kvault_engine::kv_policy::KvPolicy;
use kvault_kernels::KvDtype;
use plotters::prelude::*;
use serde_json::{json, Value};

use super::metrics::Tally;
use super::score::Scored;
use crate::kv;
use crate::font::ensure_font;

pub struct Report {
    pub model: String,
    /// (the policies' KV cache dtype, the reference's = the model's); `None` against a server.
    pub kv_cache_dtype: Option<(KvDtype, KvDtype)>,
    pub text: String,
    pub context_len: usize,
    pub chunk: usize,
    pub windows: usize,
    pub elapsed_s: f64,
    /// The full cache over every position.
    pub reference: Tally,
    pub scored: Vec<Scored>,
    /// Whether `full` was asked for as a row of its own.
    pub include_full: bool,
    /// Whole distributions were compared (in process); a server gives only logprobs.
    pub has_kl: bool,
}

impl Report {
    fn rows(&self) -> Vec<(KvPolicy, Tally)> {
        let mut rows = Vec::new();
        if self.include_full {
            rows.push((KvPolicy::Full, self.reference));
        }
        rows.extend(self.scored.iter().map(|s| (s.policy, s.tally)));
        rows
    }

    pub fn markdown(&self) -> String {
        let chunking = if self.chunk > 0 { format!("chunks of {}", self.chunk) } else { "the server's chunking".into() };
        let dtype = match self.kv_cache_dtype {
            Some((kv, reference)) if kv != reference => format!(", KV cache {kv} (reference: the full cache in {reference})"),
            Some((kv, _)) => format!(", KV cache {kv}"),
            None => String::new(),
        };
        let mut out = format!(
            "{} on {}: {} window(s) of {} tokens, {chunking}{dtype}, {:.1} s\n\
             Scored positions are those past each budget (the full cache: all).\n\n\
             | policy | budget | mean KL(full ‖ policy) | perplexity | full-cache perplexity (same positions) | top-1 agreement | positions |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            self.model, self.text, self.windows, self.context_len, self.elapsed_s
        );
        for (policy, t) in self.rows() {
            let budget = policy.budget().map_or("-".to_string(), |b| b.to_string());
            let kl = if self.has_kl { format!("{:.5}", t.mean_kl()) } else { "n/a".into() };
            out += &format!(
                "| {} | {budget} | {kl} | {:.3} | {:.3} | {:.4} | {} |\n",
                policy.kind(),
                t.ppl(),
                t.ppl_full(),
                t.top1_agreement(),
                t.positions
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        let results: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|(policy, t)| {
                json!({
                    "policy": policy.kind().as_str(),
                    "budget": policy.budget(),
                    "parameters": kv::policy_json(&policy),
                    "kl": self.has_kl.then(|| t.mean_kl()),
                    "ppl": t.ppl(),
                    "ppl_full": t.ppl_full(),
                    "nll": t.nll / t.positions.max(1) as f64,
                    "top1_agreement": t.top1_agreement(),
                    "positions": t.positions,
                })
            })
            .collect();
        json!({
            "model": self.model,
            "text": self.text,
            "context_len": self.context_len,
            "chunk": self.chunk,
            "windows": self.windows,
            "elapsed_s": self.elapsed_s,
            "kv_cache_dtype": self.kv_cache_dtype.map(|(kv, _)| kv.name()),
            "reference_kv_cache_dtype": self.kv_cache_dtype.map(|(_, reference)| reference.name()),
            "full_ppl": self.reference.ppl(),
            "results": results,
        })
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(&self.json())?).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Two panels against budget (log scale): mean KL, and perplexity with the full cache's over
    /// the same positions as a dashed line (positions past a larger budget are fewer and later).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        ensure_font()?;
        // Budgeted runs only (with another KV dtype, `full` is a scored run without a budget).
        let budgeted: Vec<&Scored> = self.scored.iter().filter(|s| s.policy.budget().is_some()).collect();
        let kinds: Vec<_> = {
            let mut k: Vec<_> = budgeted.iter().map(|s| s.policy.kind()).collect();
            k.dedup();
            k
        };
        if kinds.is_empty() {
            return Err(anyhow!("--plot needs at least one budgeted policy"));
        }
        let budgets: Vec<usize> = budgeted.iter().filter_map(|s| s.policy.budget()).collect();
        let (lo, hi) = (*budgets.iter().min().unwrap_or(&1) as f64, *budgets.iter().max().unwrap_or(&2) as f64);
        let x_range = (lo / 1.3)..(hi * 1.3);
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
        let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (header, body) = root.split_vertically(60);
        header
            .draw_text(
                &format!("{}: quality under a KV budget ({} tokens, {} window(s))", short_name(&self.model), self.context_len, self.windows),
                &("sans-serif", 22).into_font().color(&BLACK),
                (20, 18),
            )
            .map_err(|e| err(&e))?;
        let panels = body.split_evenly((1, 2));
        // The full cache's perplexity over each budget's scored positions (same for every policy).
        let mut full_line: Vec<(f64, f64)> = budgeted
            .iter()
            .filter(|s| s.tally.positions > 0)
            .map(|s| (s.policy.budget().unwrap_or(0) as f64, s.tally.ppl_full()))
            .collect();
        full_line.sort_by(|a, b| a.0.total_cmp(&b.0));
        full_line.dedup_by(|a, b| a.0 == b.0);
        let series = |metric: &dyn Fn(&Tally) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            kinds
                .iter()
                .map(|k| {
                    let pts = budgeted
                        .iter()
                        .filter(|s| s.policy.kind() == *k && s.tally.positions > 0)
                        .map(|s| (s.policy.budget().unwrap_or(0) as f64, metric(&s.tally)))
                        .collect();
                    (k.to_string(), pts)
                })
                .collect()
        };
        let kl = series(&|t| t.mean_kl());
        let ppl = series(&|t| t.ppl());
        let (first, second) = if self.has_kl { ("mean KL(full ‖ policy)", kl) } else { ("top-1 agreement with the full cache", series(&|t| t.top1_agreement())) };
        for (panel, (title, data, reference)) in panels.iter().zip([(first, second, None), ("perplexity", ppl, Some(full_line))]) {
            let values = || data.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).chain(reference.iter().flatten().map(|q| q.1));
            let top = values().fold(0.0f64, f64::max);
            // KL starts at 0; perplexity is shown around its values so differences are visible.
            let bottom = if reference.is_some() { values().fold(f64::INFINITY, f64::min) * 0.9 } else { 0.0 };
            let mut chart = ChartBuilder::on(panel)
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(70)
                .caption(title, ("sans-serif", 18))
                .build_cartesian_2d(x_range.clone().log_scale(), bottom.min(top)..(top * 1.1).max(bottom + 1e-6))
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("budget (tokens per KV head per layer)")
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(RGBColor(240, 240, 240))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (name, pts)) in data.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(3)))
                    .map_err(|e| err(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| err(&e))?;
            }
            if let Some(r) = reference {
                chart
                    .draw_series(DashedLineSeries::new(r, 8, 6, BLACK.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label("full cache, same positions")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], BLACK.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(180, 180, 180))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// A model path's file name, for titles that must fit (the JSON keeps the full path).
fn short_name(model: &str) -> &str {
    std::path::Path::new(model).file_name().and_then(|n| n.to_str()).unwrap_or(model)
}
