//! The two chart kinds every figure is made of: a line panel ([`LinePanel`], linear or log axes,
//! with optional horizontal reference lines) and a grouped bar panel ([`BarPanel`]), plus the tick
//! formatting and the smoothing (binned mean or median) of long per-step series.
//!
//! Ranges come from the data (non-finite points are left out); a panel with no finite point is
//! drawn with its caption and a "no data" note rather than failing.

use anyhow::Result;
use std::ops::Range;

use plotters::coord::ranged1d::{
    AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged, ValueFormatter,
};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::render::{text, titled, Figure, Overlay, GRID_COLOR};

/// One line of a [`LinePanel`].
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub color: RGBColor,
    pub dashed: bool,
    /// Draw a dot at every point (for short series such as a sweep).
    pub markers: bool,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal dashed line across the panel, labelled in the legend.
#[derive(Clone, Debug)]
pub struct Reference {
    pub label: String,
    pub color: RGBColor,
    pub y: f64,
}

/// A line chart.
#[derive(Clone, Debug)]
pub struct LinePanel {
    pub caption: String,
    pub x_desc: String,
    pub y_desc: String,
    pub lines: Vec<Line>,
    pub references: Vec<Reference>,
    pub x_log: bool,
    pub y_log: bool,
    /// Include y = 0 in a linear y range.
    pub y_from_zero: bool,
    /// Tick positions on a log x axis (else a 1-2-5 sequence).
    pub x_ticks: Option<Vec<f64>>,
    pub legend: SeriesLabelPosition,
}

impl LinePanel {
    pub fn new(caption: impl Into<String>, x_desc: &str, y_desc: &str) -> Self {
        Self {
            caption: caption.into(),
            x_desc: x_desc.to_string(),
            y_desc: y_desc.to_string(),
            lines: Vec::new(),
            references: Vec::new(),
            x_log: false,
            y_log: false,
            y_from_zero: false,
            x_ticks: None,
            legend: SeriesLabelPosition::UpperRight,
        }
    }

    fn x_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0))
    }

    fn y_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.references.iter().map(|r| r.y))
    }
}

/// The finite (and, for a log axis, positive) range of `values`, padded; None if there is none.
fn value_range(
    values: impl Iterator<Item = f64>,
    log: bool,
    from_zero: bool,
) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if log {
        let (lo, hi) = if hi / lo < 1.5 {
            (lo / 1.25, hi * 1.25)
        } else {
            (lo, hi)
        };
        let pad = (hi / lo).powf(0.05);
        return Some((lo / pad, hi * pad));
    }
    if from_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    let lo = if from_zero && lo >= 0.0 {
        lo
    } else {
        lo - 0.05 * span
    };
    Some((lo, hi + 0.05 * span))
}

/// Tick positions 1, 2, 5 x 10^k inside [lo, hi] (at least the two ends' decades).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(lo > 0.0 && hi > lo && lo.is_finite() && hi.is_finite()) {
        return ticks;
    }
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    for exponent in first..=last {
        for mantissa in [1.0, 2.0, 5.0] {
            let tick = mantissa * 10f64.powi(exponent);
            if tick >= lo && tick <= hi {
                ticks.push(tick);
            }
        }
    }
    if ticks.len() > 8 {
        ticks.retain(|t| (t.log10() - t.log10().round()).abs() < 1e-9);
    }
    if ticks.len() < 2 {
        ticks = vec![lo, hi];
    }
    ticks
}

/// A tick label: up to 3 significant digits, no trailing zeros.
pub fn tick_label(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs();
    if !(1e-3..1e5).contains(&magnitude) {
        return format!("{value:.0e}");
    }
    let decimals = (2 - magnitude.log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A legend's sample of a line at (x, y), 20 pixels long, with a gap in the middle when dashed.
macro_rules! legend_line {
    ($x:expr, $y:expr, $color:expr, $dashed:expr) => {{
        let gap = if $dashed { 4 } else { 0 };
        let style = $color.stroke_width(2);
        EmptyElement::at(($x, $y))
            + PathElement::new(vec![(0, 0), (10 - gap / 2, 0)], style)
            + PathElement::new(vec![(10 + gap / 2, 0), (20, 0)], style)
    }};
}

/// A log axis is kept only when its values span more than this ratio; a narrower range reads
/// better on a linear axis (a log axis would have one tick or none).
const MIN_LOG_SPAN: f64 = 8.0;

/// One axis of a line panel, resolved from the data.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn resolve(values: Vec<f64>, log: bool, from_zero: bool) -> Option<Self> {
        if log {
            if let Some((lo, hi)) = value_range(values.iter().copied(), true, false) {
                if hi / lo > MIN_LOG_SPAN {
                    return Some(Self { lo, hi, log: true });
                }
            }
        }
        let (lo, hi) = value_range(values.into_iter(), false, from_zero)?;
        Some(Self { lo, hi, log: false })
    }

    fn label(&self, value: f64) -> String {
        if self.log {
            tick_label(value)
        } else {
            linear_tick_label(value, self.hi - self.lo)
        }
    }
}

/// A tick label on a linear axis spanning `span`: as many decimals as the tick spacing needs
/// (about span / 8), no trailing zeros; scientific notation for very small or large values.
pub fn linear_tick_label(value: f64, span: f64) -> String {
    if !value.is_finite() || !span.is_finite() || span <= 0.0 {
        return tick_label(value);
    }
    if value.abs() < span * 1e-9 {
        return "0".to_string();
    }
    let magnitude = value.abs().max(span);
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{value:.2e}");
    }
    let decimals = (1 - (span / 8.0).log10().floor() as i32).clamp(0, 9) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Draws `panel` on `area`.
pub fn draw_line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &LinePanel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x = Axis::resolve(panel.x_values().collect(), panel.x_log, false);
    let y = Axis::resolve(panel.y_values().collect(), panel.y_log, panel.y_from_zero);
    let (Some(x), Some(y)) = (x, y) else {
        return draw_no_data(area, &panel.caption);
    };
    let x_ticks = panel
        .x_ticks
        .clone()
        .map(|t| t.into_iter().filter(|v| *v >= x.lo && *v <= x.hi).collect())
        .unwrap_or_else(|| log_ticks(x.lo, x.hi));
    let y_ticks = log_ticks(y.lo, y.hi);
    let x_log = || (x.lo..x.hi).log_scale().with_key_points(x_ticks.clone());
    let y_log = || (y.lo..y.hi).log_scale().with_key_points(y_ticks.clone());
    match (x.log, y.log) {
        (false, false) => line_chart(area, panel, (&x, &y), x.lo..x.hi, y.lo..y.hi),
        (false, true) => line_chart(area, panel, (&x, &y), x.lo..x.hi, y_log()),
        (true, false) => line_chart(area, panel, (&x, &y), x_log(), y.lo..y.hi),
        (true, true) => line_chart(area, panel, (&x, &y), x_log(), y_log()),
    }
}

fn line_chart<DB, X, Y>(
    area: &DrawingArea<DB, Shift>,
    panel: &LinePanel,
    axes: (&Axis, &Axis),
    x: X,
    y: Y,
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, text(20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;
    let x_range = chart.x_range();
    chart
        .configure_mesh()
        .x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .label_style(text(15))
        .axis_desc_style(text(17))
        .bold_line_style(GRID_COLOR)
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| axes.0.label(*v))
        .y_label_formatter(&|v| axes.1.label(*v))
        .draw()?;
    for reference in &panel.references {
        let color = reference.color;
        let points = vec![(x_range.start, reference.y), (x_range.end, reference.y)];
        chart
            .draw_series(DashedLineSeries::new(points, 8, 6, color.stroke_width(2)))?
            .label(&reference.label)
            .legend(move |(x, y)| legend_line!(x, y, color, true));
    }
    for line in &panel.lines {
        let color = line.color;
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let style = color.stroke_width(2);
        let series = if line.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 10, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?
        };
        let dashed = line.dashed;
        series
            .label(&line.label)
            .legend(move |(x, y)| legend_line!(x, y, color, dashed));
        if line.markers {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if !panel.lines.is_empty() || !panel.references.is_empty() {
        chart
            .configure_series_labels()
            .position(panel.legend.clone())
            .label_font(text(15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// Draws `caption` and a "no data" note.
pub fn draw_no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, caption: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(caption.to_string(), (12, 12), text(20)))?;
    area.draw(&Text::new(
        "no data".to_string(),
        (w as i32 / 2 - 30, h as i32 / 2),
        text(18),
    ))?;
    Ok(())
}

/// One series of a [`BarPanel`]: a value (or none) per category.
#[derive(Clone, Debug)]
pub struct Bars {
    pub label: String,
    pub color: RGBColor,
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart: one group per category, one bar per series.
#[derive(Clone, Debug)]
pub struct BarPanel {
    pub caption: String,
    pub y_desc: String,
    pub categories: Vec<String>,
    pub series: Vec<Bars>,
    /// The text written above each bar.
    pub value_label: fn(f64) -> String,
    /// Upper end of the y axis (else from the data).
    pub y_max: Option<f64>,
    /// Dashed horizontal line at this value (e.g. speedup 1).
    pub baseline: Option<f64>,
}

pub fn draw_bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &BarPanel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = panel.categories.len();
    let data_max = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let data_min = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    if n == 0 || !data_max.is_finite() {
        return draw_no_data(area, &panel.caption);
    }
    let y_max = panel
        .y_max
        .unwrap_or_else(|| data_max.max(panel.baseline.unwrap_or(0.0)) * 1.15)
        .max(data_max * 1.12);
    let y_min = if data_min < 0.0 { data_min * 1.15 } else { 0.0 };
    // All values zero: still a range plotters can map.
    let y_max = if y_max > y_min { y_max } else { y_min + 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, text(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(CategoryAxis { count: n }, y_min..y_max)?;
    let categories = panel.categories.clone();
    let category_of = move |v: &f64| -> String {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(&panel.y_desc)
        .label_style(text(15))
        .axis_desc_style(text(17))
        .bold_line_style(GRID_COLOR)
        .light_line_style(TRANSPARENT)
        .y_labels(8)
        .x_label_formatter(&category_of)
        .y_label_formatter(&|v| linear_tick_label(*v, y_max - y_min))
        .draw()?;
    let group_width = 0.8;
    let bar_width = group_width / panel.series.len().max(1) as f64;
    for (s, series) in panel.series.iter().enumerate() {
        let color = series.color;
        let mut bars = Vec::new();
        let mut labels = Vec::new();
        for (i, value) in series.values.iter().enumerate() {
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let left = i as f64 - group_width / 2.0 + s as f64 * bar_width;
            let right = left + bar_width * 0.92;
            bars.push(Rectangle::new(
                [(left, 0.0), (right, value)],
                color.filled(),
            ));
            labels.push(Text::new(
                (panel.value_label)(value),
                ((left + right) / 2.0, value.max(0.0)),
                text(14).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                )),
            ));
        }
        chart
            .draw_series(bars)?
            .label(&series.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart.draw_series(labels)?;
    }
    if let Some(baseline) = panel.baseline {
        chart.draw_series(DashedLineSeries::new(
            vec![(-0.5, baseline), (n as f64 - 0.5, baseline)],
            8,
            6,
            BLACK.mix(0.6).stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(text(15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

/// One panel of a [`PanelGrid`].
#[derive(Clone, Debug)]
pub enum Panel {
    Lines(LinePanel),
    Bars(BarPanel),
}

/// A figure made of panels of equal size in a grid (row by row), under a title.
#[derive(Clone, Debug)]
pub struct PanelGrid {
    pub title: String,
    pub columns: usize,
    pub panel_size: (u32, u32),
    pub panels: Vec<Panel>,
}

const TITLE_HEIGHT: u32 = 44;

impl PanelGrid {
    /// Panels side by side in one row.
    pub fn row(title: impl Into<String>, panel_size: (u32, u32), panels: Vec<Panel>) -> Self {
        Self {
            title: title.into(),
            columns: panels.len().max(1),
            panel_size,
            panels,
        }
    }

    fn rows(&self) -> usize {
        self.panels.len().div_ceil(self.columns.max(1)).max(1)
    }
}

impl Figure for PanelGrid {
    fn size(&self) -> (u32, u32) {
        let (w, h) = self.panel_size;
        (
            w * self.columns.max(1) as u32,
            h * self.rows() as u32 + TITLE_HEIGHT,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<Vec<Overlay>>
    where
        DB::ErrorType: 'static,
    {
        let body = titled(root, &self.title)?;
        let areas = body.split_evenly((self.rows(), self.columns.max(1)));
        for (panel, area) in self.panels.iter().zip(&areas) {
            match panel {
                Panel::Lines(lines) => draw_line_panel(area, lines)?,
                Panel::Bars(bars) => draw_bar_panel(area, bars)?,
            }
        }
        Ok(Vec::new())
    }
}

/// The x axis of a bar chart: categories at 0, 1, ..., count - 1, one tick each.
#[derive(Clone, Copy, Debug)]
struct CategoryAxis {
    count: usize,
}

impl Ranged for CategoryAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value + 0.5) / self.count.max(1) as f64;
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.count).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.count as f64 - 0.5
    }
}

/// How [`binned`] summarises a bin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    Mean,
    Median,
}

/// Smooths a long series: consecutive points in `bins` groups of equal count, each drawn at its
/// mean x with the mean or median of its finite y values.
pub fn binned(points: &[(f64, f64)], bins: usize, summary: Summary) -> Vec<(f64, f64)> {
    if points.is_empty() || bins == 0 {
        return Vec::new();
    }
    let per_bin = points.len().div_ceil(bins);
    points
        .chunks(per_bin)
        .filter_map(|chunk| {
            let mut ys: Vec<f64> = chunk
                .iter()
                .map(|p| p.1)
                .filter(|y| y.is_finite())
                .collect();
            if ys.is_empty() {
                return None;
            }
            let x = chunk.iter().map(|p| p.0).sum::<f64>() / chunk.len() as f64;
            let y = match summary {
                Summary::Mean => ys.iter().sum::<f64>() / ys.len() as f64,
                Summary::Median => median(&mut ys),
            };
            Some((x, y))
        })
        .collect()
}

/// The median of `values` (finite values assumed; NaN for none). Reorders `values`.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_labels_read_well() {
        assert_eq!(log_ticks(0.0008, 0.6), [0.001, 0.01, 0.1]);
        assert_eq!(
            log_ticks(150.0, 5000.0),
            [200.0, 500.0, 1000.0, 2000.0, 5000.0]
        );
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(12.5), "12.5");
        assert_eq!(tick_label(4096.0), "4096");
        assert_eq!(tick_label(1e-5), "1e-5");
        assert_eq!(linear_tick_label(2.3095, 0.002), "2.3095");
        assert_eq!(linear_tick_label(0.25, 1.0), "0.25");
        assert_eq!(linear_tick_label(40.0, 100.0), "40");
        assert_eq!(linear_tick_label(1e-12, 100.0), "0");
    }

    #[test]
    fn binning_summarises_consecutive_points() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(binned(&points, 2, Summary::Mean), [(2.0, 2.0), (7.0, 7.0)]);
        let spiky = [(0.0, 1.0), (1.0, 100.0), (2.0, 2.0)];
        assert_eq!(binned(&spiky, 1, Summary::Median), [(1.0, 2.0)]);
    }
}
