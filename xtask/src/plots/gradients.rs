//! Fig. 1B: heat maps of one batch's gradients from a `grads` file, dense beside sparse: dW2
//! (N x N) and dS1 of the batch's first sample (T x N), on a diverging colour scale shared by the
//! two methods of a row, with exact zeros in a colour of their own (black).
//!
//! The maps are returned as rasters ([`Overlay`]), one pixel per matrix entry, row 0 of the matrix
//! at the bottom (y grows upwards, like the axis labels).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::charts::tick_label;
use super::inputs::{GradsFile, Matrix};
use super::render::{text, titled, Figure, Overlay, Raster};
use super::training::dataset_title;

/// The colour of entries that are exactly zero.
pub const ZERO_COLOR: [u8; 3] = [0, 0, 0];

/// ColorBrewer RdBu without its two darkest ends (so that none is near black), negative (blue)
/// to positive (red).
const DIVERGING: [[u8; 3]; 9] = [
    [33, 102, 172],
    [67, 147, 195],
    [146, 197, 222],
    [209, 229, 240],
    [247, 247, 247],
    [253, 219, 199],
    [244, 165, 130],
    [214, 96, 77],
    [178, 24, 43],
];

/// The colour of `value` on a scale from -`limit` (blue) to +`limit` (red), clipped; exact zeros
/// get [`ZERO_COLOR`].
pub fn diverging_color(value: f32, limit: f32) -> [u8; 3] {
    if value == 0.0 {
        return ZERO_COLOR;
    }
    let scaled = if limit > 0.0 { value / limit } else { 0.0 };
    let position = (scaled.clamp(-1.0, 1.0) + 1.0) / 2.0 * (DIVERGING.len() - 1) as f32;
    let low = (position.floor() as usize).min(DIVERGING.len() - 2);
    let t = position - low as f32;
    let (a, b) = (DIVERGING[low], DIVERGING[low + 1]);
    [0, 1, 2].map(|k| (a[k] as f32 + t * (b[k] as f32 - a[k] as f32)).round() as u8)
}

/// The 99th percentile of |value| over the non-zero entries of `matrices` (the colour scale's
/// end, so a few large entries do not wash out the rest); 1 if all are zero.
pub fn color_limit(matrices: &[&Matrix]) -> f32 {
    let mut magnitudes: Vec<f32> = matrices
        .iter()
        .flat_map(|m| m.values.iter())
        .filter(|v| **v != 0.0 && v.is_finite())
        .map(|v| v.abs())
        .collect();
    if magnitudes.is_empty() {
        return 1.0;
    }
    let index = ((magnitudes.len() - 1) as f64 * 0.99).round() as usize;
    let (_, limit, _) = magnitudes.select_nth_unstable_by(index, f32::total_cmp);
    *limit
}

/// `matrix` as a raster: one pixel per entry, matrix row 0 at the bottom.
pub fn matrix_raster(matrix: &Matrix, limit: f32) -> Raster {
    let mut pixels = Vec::with_capacity(matrix.rows * matrix.cols);
    for row in (0..matrix.rows).rev() {
        for col in 0..matrix.cols {
            pixels.push(diverging_color(
                matrix.values[row * matrix.cols + col],
                limit,
            ));
        }
    }
    Raster {
        width: matrix.cols,
        height: matrix.rows,
        pixels,
    }
}

/// One row of the figure: a gradient, dense and sparse.
struct HeatRow<'a> {
    name: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    dense: &'a Matrix,
    sparse: &'a Matrix,
}

/// Fig. 1B from a grads file.
pub struct GradientFigure<'a> {
    pub grads: &'a GradsFile,
}

impl GradientFigure<'_> {
    fn title(&self) -> String {
        let meta = &self.grads.metadata;
        let dataset = meta
            .get("dataset")
            .map(|d| dataset_title(d))
            .unwrap_or_else(|| "dataset not recorded".to_string());
        let band = meta
            .get("band")
            .map_or(String::new(), |b| format!(", h = {b}"));
        let weights = match meta.get("weights") {
            Some(w) if w.contains("checkpoint") => ", trained weights",
            Some(_) => ", initial weights",
            None => "",
        };
        format!(
            "Fig. 1B: gradients of one batch, dense vs sparse ({dataset}, B = {}{band}{weights}); exact zeros in black",
            self.grads.batch
        )
    }

    fn rows(&self) -> [HeatRow<'_>; 2] {
        let (dense, sparse) = (&self.grads.dense, &self.grads.sparse);
        [
            HeatRow {
                name: "dW2",
                x_desc: "neuron j of layer 2",
                y_desc: "neuron i of layer 1",
                dense: &dense.grad_w2,
                sparse: &sparse.grad_w2,
            },
            HeatRow {
                name: "dS1 (sample 0)",
                x_desc: "neuron of layer 1",
                y_desc: "time step",
                dense: &dense.grad_s1_first,
                sparse: &sparse.grad_s1_first,
            },
        ]
    }
}

impl Figure for GradientFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 1180)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<Vec<Overlay>>
    where
        DB::ErrorType: 'static,
    {
        let body = titled(root, &self.title())?;
        let mut overlays = Vec::new();
        for (row, area) in self.rows().iter().zip(body.split_evenly((2, 1))) {
            let width = area.dim_in_pixel().0 as i32;
            let panel_width = (width - 170) / 2;
            let parts = area.split_by_breakpoints([panel_width, 2 * panel_width], [] as [i32; 0]);
            let limit = color_limit(&[row.dense, row.sparse]);
            for (method, matrix, part) in [
                ("dense", row.dense, &parts[0]),
                ("sparse", row.sparse, &parts[1]),
            ] {
                let caption = format!(
                    "{} {method} [{} x {}]: {:.1}% zeros",
                    row.name,
                    matrix.rows,
                    matrix.cols,
                    100.0 * matrix.zero_fraction()
                );
                overlays.push(heat_map(part, row, matrix, limit, &caption)?);
            }
            overlays.push(color_bar(&parts[2], limit)?);
        }
        Ok(overlays)
    }
}

/// Axes for `matrix` on `area`; returns the raster to lay over the plotting area.
fn heat_map<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    row: &HeatRow<'_>,
    matrix: &Matrix,
    limit: f32,
    caption: &str,
) -> Result<Overlay>
where
    DB::ErrorType: 'static,
{
    let (cols, rows) = (matrix.cols as f64, matrix.rows as f64);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(19))
        .margin(10)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..cols, 0f64..rows)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(row.x_desc)
        .y_desc(row.y_desc)
        .label_style(text(14))
        .axis_desc_style(text(16))
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let (left, top) = chart.backend_coord(&(0.0, rows));
    let (right, bottom) = chart.backend_coord(&(cols, 0.0));
    Ok(Overlay {
        left,
        top,
        right,
        bottom,
        raster: matrix_raster(matrix, limit),
    })
}

/// The colour scale from -limit to +limit, and a swatch for exact zeros below it.
fn color_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, limit: f32) -> Result<Overlay>
where
    DB::ErrorType: 'static,
{
    let limit = f64::from(limit);
    let (_, height) = area.dim_in_pixel();
    let (bar_area, swatch_area) = area.split_vertically(height as i32 - 70);
    let mut chart = ChartBuilder::on(&bar_area)
        .margin_top(50)
        .margin_bottom(20)
        .margin_right(40)
        .y_label_area_size(95)
        .build_cartesian_2d(0f64..1.0, -limit..limit)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style(text(14))
        .y_labels(5)
        .y_label_formatter(&|v| {
            if v.abs() < limit * 1e-6 {
                "0".to_string()
            } else if v.abs() >= 1e-3 && v.abs() < 1e4 {
                tick_label(*v)
            } else {
                format!("{v:.1e}")
            }
        })
        .draw()?;
    let steps = 256;
    let pixels = (0..steps)
        .map(|k| {
            let value = limit * (1.0 - 2.0 * (k as f64 + 0.5) / steps as f64);
            // A tiny offset keeps the middle of the bar off the zero colour.
            let value = if value == 0.0 {
                f64::MIN_POSITIVE
            } else {
                value
            };
            diverging_color(value as f32, limit as f32)
        })
        .collect();
    let (left, top) = chart.backend_coord(&(0.0, limit));
    let (right, bottom) = chart.backend_coord(&(1.0, -limit));
    swatch_area.draw(&Rectangle::new(
        [(40, 10), (64, 34)],
        RGBColor(ZERO_COLOR[0], ZERO_COLOR[1], ZERO_COLOR[2]).filled(),
    ))?;
    swatch_area.draw(&Text::new("exact 0", (70, 13), text(16)))?;
    Ok(Overlay {
        left,
        top,
        right,
        bottom,
        raster: Raster {
            width: 1,
            height: steps,
            pixels,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_have_their_own_colour_and_the_scale_is_diverging() {
        assert_eq!(diverging_color(0.0, 1.0), ZERO_COLOR);
        assert_eq!(diverging_color(-5.0, 1.0), DIVERGING[0]);
        assert_eq!(diverging_color(5.0, 1.0), DIVERGING[8]);
        assert_eq!(diverging_color(1e-9, 1.0), DIVERGING[4]);
        assert_ne!(diverging_color(1e-9, 1.0), ZERO_COLOR);
    }

    #[test]
    fn rasters_put_matrix_row_zero_at_the_bottom() {
        let matrix = Matrix {
            rows: 2,
            cols: 1,
            values: vec![0.0, 1.0],
        };
        let raster = matrix_raster(&matrix, 1.0);
        assert_eq!(raster.pixels, [DIVERGING[8], ZERO_COLOR]);
    }
}
