//! The plots of the report: plotters drawing helpers (lines, violins, bars), the embedded
//! font, and rendering one plot to SVG and PNG.

use super::*;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Okabe–Ito colour-blind-safe palette.
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];
pub(crate) const FONT: &str = "sans-serif";
pub(crate) const W: u32 = 760;
pub(crate) const H: u32 = 440;

pub(crate) static FONT_BYTES: &[u8] =
    include_bytes!("../../assets/fonts/LiberationSans-Regular.ttf");

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

pub(crate) fn perr<E: std::fmt::Debug>(e: E) -> Error {
    Error::Other(format!("plotting: {e:?}"))
}

/// A plot drawn twice: into SVG text and into an RGB buffer saved as PNG.
pub(crate) struct Plot {
    pub(crate) name: String,
    pub(crate) title: String,
    pub(crate) how: String,
    pub(crate) svg: String,
}

pub(crate) fn render(
    dir: &Path,
    name: &str,
    draw: &dyn Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: &dyn Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<String> {
    render_sized(dir, name, (W, H), draw, draw_png)
}

pub(crate) fn render_sized(
    dir: &Path,
    name: &str,
    (w, h): (u32, u32),
    draw: &dyn Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: &dyn Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        draw(root.clone())?;
        root.present().map_err(perr)?;
    }
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        draw_png(root.clone())?;
        root.present().map_err(perr)?;
    }
    let plots = dir.join("plots");
    write_atomic(&plots.join(format!("{name}.svg")), svg.as_bytes())?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Other(format!("png: {e}")))?;
    write_atomic(&plots.join(format!("{name}.png")), &png)?;
    Ok(svg)
}
use image::ImageEncoder;

macro_rules! both {
    ($dir:expr, $name:expr, |$root:ident| $body:block) => {{
        let svg = render(
            $dir,
            $name,
            &|$root: DrawingArea<SVGBackend, Shift>| -> Result<()> { $body },
            &|$root: DrawingArea<BitMapBackend, Shift>| -> Result<()> { $body },
        )?;
        svg
    }};
}

pub(crate) fn style(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// A named line (points), dashed or solid.
pub(crate) type Series = (String, Vec<(f64, f64)>, bool);

/// Line chart of several named series.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    xl: &str,
    yl: &str,
    x: (f64, f64),
    y: (f64, f64),
    series: &[Series],
    legend_pos: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, style(20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(58)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .label_style(style(13))
        .axis_desc_style(style(15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(perr)?;
    for (i, (name, pts, dashed)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let st = c.stroke_width(if *dashed { 1 } else { 2 });
        if *dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.iter().cloned(), 6, 4, st))
                .map_err(perr)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(1))
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts.iter().cloned(), st))
                .map_err(perr)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(legend_pos)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(style(13))
        .draw()
        .map_err(perr)?;
    Ok(())
}

/// Violin panels (title, y label, groups) laid out `ncol` to a row.
pub(crate) type ViolinPanel = (String, String, Vec<(String, Vec<f64>)>);

/// Several violin plots in one figure, `ncol` to a row.
pub(crate) fn violin_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[ViolinPanel],
    ncol: usize,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let ncol = ncol.max(1);
    let nrow = panels.len().div_ceil(ncol);
    // one colour key for all panels (group names would not fit under each violin)
    let (key, body) = root.split_vertically(34);
    let mut x = 70i32;
    if let Some((_, groups)) = panels.first().map(|p| (&p.0, &p.2)) {
        for (gi, (name, _)) in groups.iter().enumerate() {
            let c = PALETTE[gi % PALETTE.len()];
            key.draw(&Rectangle::new(
                [(x, 10), (x + 16, 24)],
                c.mix(0.6).filled(),
            ))
            .map_err(perr)?;
            key.draw(&Text::new(name.clone(), (x + 21, 10), style(14)))
                .map_err(perr)?;
            x += 21 + 8 * name.chars().count() as i32 + 22;
        }
    }
    let areas = body.split_evenly((nrow.max(1), ncol));
    for (area, (title, yl, groups)) in areas.iter().zip(panels) {
        violin(area, title, yl, groups, 15, false)?;
    }
    Ok(())
}

/// Violin plot: one KDE outline per group, with the quartiles marked.
pub(crate) fn violin<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    yl: &str,
    groups: &[(String, Vec<f64>)],
    caption: u32,
    xlabels: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.1.iter().cloned())
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, v| {
        (a.0.min(*v), a.1.max(*v))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    // the axis is the data's range (msp never above 1), and each violin is cut at its own
    // group's smallest and largest value (seaborn's cut = 0)
    let pad = 0.0;
    let k = groups.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, style(caption))
        .margin(8)
        .x_label_area_size(if xlabels { 40 } else { 8 })
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(k as f64 - 0.5), (lo - pad)..(hi + pad))
        .map_err(perr)?;
    let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k)
        .x_label_formatter(&|x| {
            let i = x.round();
            if xlabels && (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(yl)
        .label_style(style(11))
        .axis_desc_style(style(15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(perr)?;
    for (gi, (_, vals)) in groups.iter().enumerate() {
        let v: Vec<f64> = vals.iter().cloned().filter(|x| x.is_finite()).collect();
        if v.len() < 2 {
            continue;
        }
        let (glo, ghi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, x| {
            (a.0.min(*x), a.1.max(*x))
        });
        let grid: Vec<f64> = (0..=120)
            .map(|i| glo + (ghi - glo) * i as f64 / 120.0)
            .collect();
        let (dens, _) = kde(&v, &grid);
        let m = dens.iter().cloned().fold(0.0, f64::max).max(1e-300);
        let c = PALETTE[gi % PALETTE.len()];
        let x0 = gi as f64;
        let mut outline: Vec<(f64, f64)> = grid
            .iter()
            .zip(&dens)
            .map(|(y, d)| (x0 + 0.42 * d / m, *y))
            .collect();
        outline.extend(
            grid.iter()
                .zip(&dens)
                .rev()
                .map(|(y, d)| (x0 - 0.42 * d / m, *y)),
        );
        chart
            .draw_series(std::iter::once(Polygon::new(outline.clone(), c.mix(0.35))))
            .map_err(perr)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                outline,
                c.stroke_width(1),
            )))
            .map_err(perr)?;
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        for (q, w) in [(0.25, 0.12), (0.5, 0.22), (0.75, 0.12)] {
            let y = quantile(&s, q);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x0 - w, y), (x0 + w, y)],
                    BLACK.stroke_width(if q == 0.5 { 3 } else { 1 }),
                )))
                .map_err(perr)?;
        }
    }
    Ok(())
}

/// Horizontal-less bar chart: values per label, several series side by side.
pub(crate) fn bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    yl: &str,
    labels: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().cloned())
        .filter(|v| v.is_finite())
        .collect();
    // bars start at a baseline below the smallest value, so close values (AUROCs near 1) differ
    let vmin = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().cloned().fold(0.0, f64::max);
    let lo = if vmin.is_finite() && vmin > 0.0 {
        (vmin - (hi - vmin).max(0.01) * 0.5).max(0.0)
    } else {
        vmin.min(0.0)
    };
    let pad = ((hi - lo) * 0.25).max(1e-6);
    let k = labels.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, style(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(k as f64 - 0.5), lo..(hi + pad))
        .map_err(perr)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k.min(60))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(yl)
        .label_style(style(11))
        .axis_desc_style(style(15))
        .draw()
        .map_err(perr)?;
    let ns = series.len().max(1) as f64;
    for (si, (name, v)) in series.iter().enumerate() {
        let c = PALETTE[si % PALETTE.len()];
        let w = 0.8 / ns;
        chart
            .draw_series(
                v.iter()
                    .enumerate()
                    .filter(|(_, y)| y.is_finite())
                    .map(|(i, y)| {
                        let x0 = i as f64 - 0.4 + si as f64 * w;
                        Rectangle::new([(x0, lo), (x0 + w * 0.9, *y)], c.filled())
                    }),
            )
            .map_err(perr)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .label_font(style(13))
        .draw()
        .map_err(perr)?;
    Ok(())
}

/// Horizontal bars: one row per label (names on the y axis), several series side by side.
pub(crate) fn hbars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    xl: &str,
    labels: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().cloned())
        .filter(|v| v.is_finite())
        .collect();
    let lo = vals.iter().cloned().fold(0.0, f64::min);
    let hi = vals.iter().cloned().fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.08).max(1e-6);
    let k = labels.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, style(20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(150)
        .build_cartesian_2d((lo - pad)..(hi + pad), -0.5f64..(k as f64 - 0.5))
        .map_err(perr)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(k)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[k - 1 - i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc(xl)
        .label_style(style(11))
        .axis_desc_style(style(15))
        .draw()
        .map_err(perr)?;
    let ns = series.len().max(1) as f64;
    for (si, (name, v)) in series.iter().enumerate() {
        let c = PALETTE[si % PALETTE.len()];
        let h = 0.8 / ns;
        chart
            .draw_series(
                v.iter()
                    .enumerate()
                    .filter(|(_, x)| x.is_finite())
                    .map(|(i, x)| {
                        let y0 = (k - 1 - i) as f64 + 0.4 - (si as f64 + 1.0) * h;
                        Rectangle::new([(0.0, y0), (*x, y0 + h * 0.9)], c.filled())
                    }),
            )
            .map_err(perr)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .label_font(style(13))
        .draw()
        .map_err(perr)?;
    Ok(())
}
