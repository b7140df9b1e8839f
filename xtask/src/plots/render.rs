//! Drawing plumbing for `cargo xtask plots`: the embedded font, the colours, and [`render`], which
//! draws one [`Figure`] twice (PNG and SVG) and writes both files atomically.
//!
//! Text needs no system font: DejaVu Sans (assets/, Bitstream Vera licence) is compiled in and
//! registered with plotters' `ab_glyph` backend, which lays out and rasterises text for the PNG;
//! the SVG carries the text as `<text font-family="sans-serif">`, set by the viewer.
//! Heat maps are not drawn cell by cell: a figure returns them as [`Overlay`] rasters, copied into
//! the PNG and embedded in the SVG as one base64 PNG `<image>` each (so the SVG stays small).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The family name the embedded font is registered under (and the SVG asks for).
pub const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Colours of the two methods, and of the layers/series (Tableau 10).
pub const DENSE_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const SPARSE_COLOR: RGBColor = RGBColor(255, 127, 14);
pub const SERIES_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
pub const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);

pub fn series_color(index: usize) -> RGBColor {
    SERIES_COLORS[index % SERIES_COLORS.len()]
}

pub fn method_color(method: &str) -> RGBColor {
    if method == super::inputs::DENSE {
        DENSE_COLOR
    } else {
        SPARSE_COLOR
    }
}

/// Registers the embedded font with plotters (once per process).
pub fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded font (DejaVu Sans) could not be read".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Text in the embedded font at `size` pixels.
pub fn text(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// An RGB image, row 0 at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct Raster {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 3]>,
}

/// A raster stretched (nearest neighbour) over a pixel rectangle of the figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    pub left: i32,
    pub top: i32,
    pub right: i32,
    pub bottom: i32,
    pub raster: Raster,
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the figure on `root` (already filled white); returns the rasters to lay on top.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<Vec<Overlay>>
    where
        DB::ErrorType: 'static;
}

/// The two files written for one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Draws `figure` as `<out>/<stem>.png` and `<out>/<stem>.svg`.
pub fn render(figure: &impl Figure, out: &Path, stem: &str) -> Result<Rendered> {
    register_font()?;
    let (width, height) = figure.size();
    let png = out.join(format!("{stem}.png"));
    let svg = out.join(format!("{stem}.svg"));

    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let overlays = {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let overlays = figure
            .draw(&root)
            .with_context(|| format!("drawing {}", png.display()))?;
        root.present()?;
        overlays
    };
    for overlay in &overlays {
        blit(&mut pixels, width as usize, height as usize, overlay);
    }
    write_atomic(&png, &encode_png(width as usize, height as usize, &pixels)?)?;

    let mut text = String::new();
    let overlays = {
        let root = SVGBackend::with_string(&mut text, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let overlays = figure
            .draw(&root)
            .with_context(|| format!("drawing {}", svg.display()))?;
        root.present()?;
        overlays
    };
    let images: String = overlays
        .iter()
        .map(svg_image)
        .collect::<Result<Vec<_>>>()?
        .concat();
    let text = match text.rfind("</svg>") {
        Some(end) => format!("{}{images}{}", &text[..end], &text[end..]),
        None => text,
    };
    write_atomic(&svg, text.as_bytes())?;
    Ok(Rendered { png, svg })
}

/// Copies `overlay` into an RGB buffer of `width` x `height`, clipped to the buffer.
fn blit(buffer: &mut [u8], width: usize, height: usize, overlay: &Overlay) {
    let raster = &overlay.raster;
    let (w, h) = (
        (overlay.right - overlay.left).max(1),
        (overlay.bottom - overlay.top).max(1),
    );
    if raster.width == 0 || raster.height == 0 {
        return;
    }
    for py in overlay.top.max(0)..overlay.bottom.min(height as i32) {
        let ry = ((py - overlay.top) as usize * raster.height / h as usize).min(raster.height - 1);
        for px in overlay.left.max(0)..overlay.right.min(width as i32) {
            let rx =
                ((px - overlay.left) as usize * raster.width / w as usize).min(raster.width - 1);
            let at = (py as usize * width + px as usize) * 3;
            buffer[at..at + 3].copy_from_slice(&raster.pixels[ry * raster.width + rx]);
        }
    }
}

/// An `<image>` element showing `overlay` (pixelated, stretched to its rectangle).
fn svg_image(overlay: &Overlay) -> Result<String> {
    let raster = &overlay.raster;
    let flat: Vec<u8> = raster.pixels.iter().flatten().copied().collect();
    let png = encode_png(raster.width, raster.height, &flat)?;
    Ok(format!(
        "<image xmlns:xlink=\"http://www.w3.org/1999/xlink\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" \
         preserveAspectRatio=\"none\" style=\"image-rendering:pixelated;image-rendering:crisp-edges\" \
         xlink:href=\"data:image/png;base64,{}\"/>\n",
        overlay.left,
        overlay.top,
        overlay.right - overlay.left,
        overlay.bottom - overlay.top,
        base64(&png)
    ))
}

/// Encodes 8-bit RGB pixels (row-major, 3 bytes each) as a PNG file's bytes.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let mut writer = encoder.write_header().context("encoding a PNG")?;
        writer.write_image_data(rgb).context("encoding a PNG")?;
    }
    Ok(bytes)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so that
/// `path` holds either its old content or all of the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Splits `area` into `count` panels side by side.
pub fn columns<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    count: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    area.split_evenly((1, count.max(1)))
}

/// Draws a figure title at the top of `root` and returns the area below it.
pub fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    Ok(root.titled(title, text(24))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn blit_stretches_and_clips() {
        let mut buffer = vec![0u8; 4 * 2 * 3];
        let overlay = Overlay {
            left: 0,
            top: 0,
            right: 4,
            bottom: 3,
            raster: Raster {
                width: 2,
                height: 1,
                pixels: vec![[1, 1, 1], [2, 2, 2]],
            },
        };
        blit(&mut buffer, 4, 2, &overlay);
        let firsts: Vec<u8> = buffer.chunks(3).map(|p| p[0]).collect();
        assert_eq!(firsts, [1, 1, 2, 2, 1, 1, 2, 2]);
    }
}
