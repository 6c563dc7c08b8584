//! The font every PNG the CLI draws uses: DejaVu Sans compiled into the binary
//! (cli/assets/fonts, license beside it), so a machine without system fonts (a fresh CI image)
//! still gets labelled axes. Charts ask for the "sans-serif" family after [`ensure_font`].
//!
//! Must not know: what is drawn.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::style::{register_font, FontStyle};

const FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans.ttf"));

/// plotters keeps fonts in a process-wide registry; registering once is enough for every chart.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVuSans.ttf is not a readable TrueType font"))
    }
}
