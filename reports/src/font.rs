//! The bundled font.
//!
//! plotters is built without its `ttf` feature (font-kit, which asks
//! fontconfig for system fonts), so every glyph comes from DejaVu Sans,
//! compiled into the binary (license: `assets/DejaVuSans-LICENSE.txt`).
//! A machine without a single font installed renders the same PNGs.

use std::sync::OnceLock;

use plotters::style::FontStyle;

/// DejaVu Sans 2.37, as shipped by Debian's fonts-dejavu-core.
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The family name figures ask for; the SVG files name it too, so a viewer
/// with its own DejaVu Sans (or any sans-serif) shows the same text.
pub const FAMILY: &str = "sans-serif";

/// Registers the bundled font with plotters under every family name the
/// figures (or plotters' defaults) may ask for. Idempotent; returns false
/// only if the bundled bytes are not a font, which the tests rule out.
pub fn ensure_registered() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        ["sans-serif", "serif", "monospace"].iter().all(|family| {
            [FontStyle::Normal, FontStyle::Bold]
                .into_iter()
                .all(|style| plotters::style::register_font(family, style, DEJAVU_SANS).is_ok())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::style::IntoFont;

    #[test]
    fn bundled_font_registers_and_measures_text() {
        assert!(ensure_registered());
        let font = (FAMILY, 20).into_font();
        let (w, h) = font.box_size("round-trip time (ms)").unwrap();
        assert!(w > 100 && h > 10, "{w}x{h}");
    }
}
