//! The font every PNG chart draws with: DejaVu Sans compiled into the binary (cli/assets/fonts,
//! license beside it), so a machine without system fonts (a fresh CI image) still gets
//! labelled axes. Must not know any chart.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::style::{register_font, FontStyle};

const FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans.ttf"));

/// Registers the font as "sans-serif" (plotters keeps fonts in a process-wide registry, so once
/// is enough for every chart).
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVuSans.ttf is not a readable TrueType font"))
    }
}
