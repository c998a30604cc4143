//! Small pictures as PNG files: a gallery of corrupted images (one row per corruption, one
//! column per severity), a bar chart of accuracy per corruption, a line chart of accuracy
//! against severity for several runs, and heatmaps (a confusion matrix, predicted classes or
//! expert probabilities per corruption).
//! Text is the 8x8 bitmap font of `font8x8`; the callers write the returned bytes with
//! [`crate::atomic_file::write_atomic`].

use anyhow::{Result, ensure};
use font8x8::UnicodeFonts;

use crate::data::{CHANNELS, IMAGE_SIZE};

mod heatmap;
pub use heatmap::{Heatmap, heatmap_png};

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [215, 215, 215];
const AXIS: Rgb = [90, 90, 90];
/// Series colours (the ten of matplotlib's tab10), repeated past ten runs.
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Glyphs are 8x8 pixels.
const GLYPH: usize = 8;
const MARGIN: usize = 10;
const GAP: usize = 6;

/// An RGB picture being drawn.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas { width, height, pixels: WHITE.repeat(width * height) }
    }

    fn set(&mut self, x: usize, y: usize, colour: Rgb) {
        if x < self.width && y < self.height {
            let at = (y * self.width + x) * 3;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: Rgb) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.set(xx, yy, colour);
            }
        }
    }

    /// A line 2 pixels thick from `a` to `b`, one dot per pixel along its longer extent.
    fn segment(&mut self, a: (usize, usize), b: (usize, usize), colour: Rgb) {
        let (dx, dy) = (b.0 as f64 - a.0 as f64, b.1 as f64 - a.1 as f64);
        let steps = dx.abs().max(dy.abs()).max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = ((a.0 as f64 + t * dx).round() as usize, (a.1 as f64 + t * dy).round() as usize);
            self.fill(x, y, 2, 2, colour);
        }
    }

    /// `text` with its top-left corner at (x, y); characters outside ASCII show as '?'.
    fn text(&mut self, x: usize, y: usize, text: &str, colour: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let glyph =
                font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or_default();
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    // Bit 0 is the leftmost pixel.
                    if bits >> col & 1 == 1 {
                        self.set(x + i * GLYPH + col, y + row, colour);
                    }
                }
            }
        }
    }

    /// `text` read from bottom to top (turned 90 degrees anticlockwise), its first character's
    /// bottom-left corner at (x, y_bottom); for column labels narrower than their text.
    fn text_up(&mut self, x: usize, y_bottom: usize, text: &str, colour: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let glyph =
                font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or_default();
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    // The glyph's top faces left; its left edge is at the bottom.
                    if bits >> col & 1 == 1
                        && let Some(y) = y_bottom.checked_sub(1 + i * GLYPH + col)
                    {
                        self.set(x + row, y, colour);
                    }
                }
            }
        }
    }

    /// A 32x32 HWC RGB image enlarged `scale` times (nearest neighbour), top-left at (x, y).
    fn image(&mut self, x: usize, y: usize, image: &[u8], scale: usize) {
        for yy in 0..IMAGE_SIZE * scale {
            for xx in 0..IMAGE_SIZE * scale {
                let at = ((yy / scale) * IMAGE_SIZE + xx / scale) * CHANNELS;
                self.set(x + xx, y + yy, [image[at], image[at + 1], image[at + 2]]);
            }
        }
    }

    /// Copies `other` with its top-left corner at (x, y).
    fn paste(&mut self, x: usize, y: usize, other: &Canvas) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                let at = (yy * other.width + xx) * 3;
                self.set(x + xx, y + yy, [other.pixels[at], other.pixels[at + 1], other.pixels[at + 2]]);
            }
        }
    }

    fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(out)
    }
}

fn text_width(text: &str) -> usize {
    text.chars().count() * GLYPH
}

/// Where the gallery puts things.
struct GalleryLayout {
    label_width: usize,
    column_width: usize,
    cell: usize,
}

impl GalleryLayout {
    fn new(row_labels: &[String], column_labels: &[String], scale: usize) -> GalleryLayout {
        let cell = IMAGE_SIZE * scale;
        GalleryLayout {
            label_width: row_labels.iter().map(|l| text_width(l)).max().unwrap_or(0),
            column_width: column_labels.iter().map(|l| text_width(l)).max().unwrap_or(0).max(cell),
            cell,
        }
    }

    /// The left edge of column `j`.
    fn column_x(&self, j: usize) -> usize {
        MARGIN + self.label_width + GAP + j * (self.column_width + GAP)
    }

    /// The top-left corner of cell (row `i`, column `j`).
    fn cell_origin(&self, i: usize, j: usize) -> (usize, usize) {
        (self.column_x(j) + (self.column_width - self.cell) / 2, self.row_y(i))
    }

    fn row_y(&self, i: usize) -> usize {
        MARGIN + GLYPH + GAP + i * (self.cell + GAP)
    }

    fn size(&self, rows: usize, columns: usize) -> (usize, usize) {
        (self.column_x(columns) - GAP + MARGIN, self.row_y(rows) - GAP + MARGIN)
    }
}

/// A labelled grid of 32x32 images: `cells[i][j]` (HWC RGB bytes, 3072 of them) is drawn in
/// row `i` (labelled at the left with `row_labels[i]`) and column `j` (labelled on top with
/// `column_labels[j]`), enlarged `scale` times (nearest neighbour, 1 to 16). Returns a PNG.
pub fn gallery_png(
    row_labels: &[String],
    column_labels: &[String],
    cells: &[Vec<&[u8]>],
    scale: u32,
) -> Result<Vec<u8>> {
    ensure!((1..=16).contains(&scale), "gallery scale {scale} is out of range 1-16");
    ensure!(
        cells.len() == row_labels.len(),
        "gallery: {} rows of images for {} row labels",
        cells.len(),
        row_labels.len()
    );
    for (row, label) in cells.iter().zip(row_labels) {
        ensure!(
            row.len() == column_labels.len(),
            "gallery row {label}: {} images for {} columns",
            row.len(),
            column_labels.len()
        );
        for image in row {
            ensure!(
                image.len() == IMAGE_SIZE * IMAGE_SIZE * CHANNELS,
                "gallery row {label}: an image is not 32x32x3"
            );
        }
    }
    let layout = GalleryLayout::new(row_labels, column_labels, scale as usize);
    let (width, height) = layout.size(row_labels.len(), column_labels.len());
    let mut canvas = Canvas::new(width, height);
    for (j, label) in column_labels.iter().enumerate() {
        let x = layout.column_x(j) + (layout.column_width - text_width(label)) / 2;
        canvas.text(x, MARGIN, label, BLACK);
    }
    for (i, (row, label)) in cells.iter().zip(row_labels).enumerate() {
        canvas.text(MARGIN, layout.row_y(i) + (layout.cell - GLYPH) / 2, label, BLACK);
        for (j, image) in row.iter().enumerate() {
            let (x, y) = layout.cell_origin(i, j);
            canvas.image(x, y, image, scale as usize);
        }
    }
    canvas.png()
}

/// Pixels per percentage point of the bar chart's axis.
const PX_PER_PERCENT: usize = 5;
/// The height of one bar (with a 1-pixel gap to the next).
const BAR: usize = 12;

/// Checks that every series has one value per category.
fn check_series(what: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    ensure!(!categories.is_empty() && !series.is_empty(), "a {what} needs categories and series");
    for (name, values) in series {
        ensure!(
            values.len() == categories.len(),
            "{what} series {name}: {} values for {} categories",
            values.len(),
            categories.len()
        );
    }
    Ok(())
}

const LEGEND_Y: usize = MARGIN + GLYPH + GAP;
const LEGEND_LINE: usize = GLYPH + 4;

/// Where the plot of a chart with `n` series in its legend starts.
fn plot_top(n: usize) -> usize {
    LEGEND_Y + n * LEGEND_LINE + GAP
}

/// The width the title and the legend need.
fn heading_width(title: &str, series: &[(String, Vec<f64>)]) -> usize {
    (MARGIN + text_width(title) + MARGIN)
        .max(MARGIN + BAR + GAP + series.iter().map(|(n, _)| text_width(n)).max().unwrap_or(0) + MARGIN)
}

/// The title, and under it a legend line per series: a swatch of its colour and its name.
fn draw_heading(canvas: &mut Canvas, title: &str, series: &[(String, Vec<f64>)]) {
    canvas.text(MARGIN, MARGIN, title, BLACK);
    for (k, (name, _)) in series.iter().enumerate() {
        let y = LEGEND_Y + k * LEGEND_LINE;
        canvas.fill(MARGIN, y, BAR, GLYPH, PALETTE[k % PALETTE.len()]);
        canvas.text(MARGIN + BAR + GAP, y, name, BLACK);
    }
}

/// A horizontal bar chart: one group of bars per category (labelled at the left), one bar per
/// series in the series' colour (named in the legend under the title), on a 0-100% axis.
/// `series[k].1[c]` is series k's value for category c in percent; NaN draws no bar and
/// "n/a", and values outside 0-100 are drawn clipped. Returns a PNG.
pub fn bar_chart_png(title: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> Result<Vec<u8>> {
    check_series("bar chart", categories, series)?;
    let label_width = categories.iter().map(|c| text_width(c)).max().unwrap_or(0);
    let plot_x = MARGIN + label_width + GAP;
    let plot_width = 100 * PX_PER_PERCENT;
    let value_room = text_width(" 100.0");
    let plot_y = plot_top(series.len());
    let group = series.len() * BAR + GAP;
    let plot_height = categories.len() * group + GAP;
    let width = (plot_x + plot_width + value_room + MARGIN).max(heading_width(title, series));
    let height = plot_y + plot_height + GAP + GLYPH + MARGIN;
    let mut canvas = Canvas::new(width, height);

    draw_heading(&mut canvas, title, series);
    // Grid lines and tick labels every 20%, under the bars.
    for percent in (0..=100).step_by(20) {
        let x = plot_x + percent * PX_PER_PERCENT;
        canvas.fill(x, plot_y, 1, plot_height, if percent == 0 { AXIS } else { GRID });
        let label = format!("{percent}%");
        let label_x = (x + 1).saturating_sub(text_width(&label) / 2);
        canvas.text(label_x, plot_y + plot_height + GAP, &label, BLACK);
    }
    canvas.fill(plot_x, plot_y + plot_height, plot_width + 1, 1, AXIS);
    for (c, category) in categories.iter().enumerate() {
        let group_y = plot_y + GAP + c * group;
        canvas.text(MARGIN, group_y + (series.len() * BAR - GLYPH) / 2, category, BLACK);
        for (k, (_, values)) in series.iter().enumerate() {
            let y = group_y + k * BAR;
            let value = values[c];
            if value.is_nan() {
                canvas.text(plot_x + 2, y + (BAR - GLYPH) / 2, "n/a", AXIS);
                continue;
            }
            let length = (value.clamp(0.0, 100.0) * PX_PER_PERCENT as f64).round() as usize;
            canvas.fill(plot_x + 1, y + 1, length, BAR - 1, PALETTE[k % PALETTE.len()]);
            canvas.text(plot_x + 1 + length + 2, y + (BAR - GLYPH) / 2, &format!("{value:.1}"), BLACK);
        }
    }
    canvas.png()
}

/// Pixels per percentage point of the line chart's vertical axis.
const LINE_PX_PER_PERCENT: usize = 4;
/// Pixels between the line chart's points.
const POINT_STEP: usize = 80;
/// Half the side of a point's square marker.
const MARKER: usize = 3;

/// The vertical axis of a line chart: from 0 to `top`, tick labels with `unit`.
#[derive(Clone, Copy, Debug)]
pub struct ValueAxis {
    pub top: f64,
    pub unit: &'static str,
}

impl ValueAxis {
    pub const PERCENT: ValueAxis = ValueAxis { top: 100.0, unit: "%" };

    /// An axis from 0 that holds `max` with room, its top a round number.
    pub fn holding(max: f64, unit: &'static str) -> ValueAxis {
        let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
        let step = 10f64.powf((max / 5.0).log10().floor());
        let top =
            [1.0, 2.0, 4.0, 5.0, 10.0].iter().map(|m| m * step * 5.0).find(|&t| t >= max).unwrap_or(max);
        ValueAxis { top, unit }
    }

    fn tick_label(&self, fraction: f64) -> String {
        let v = self.top * fraction;
        if self.top >= 10.0 { format!("{v:.0}{}", self.unit) } else { format!("{v:.2}{}", self.unit) }
    }
}

/// One line chart: one line per series through its values at the evenly spaced `points`
/// (labelled under the axis, `x_title` under them), each value marked with a square in the
/// series' colour; NaN leaves a gap.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_title: &'a str,
    pub points: &'a [String],
    pub series: &'a [(String, Vec<f64>)],
    pub axis: ValueAxis,
}

/// A line chart of percentages (0-100% axis). Returns a PNG.
pub fn line_chart_png(
    title: &str,
    x_title: &str,
    points: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<Vec<u8>> {
    line_charts_png(&[LineChart { title, x_title, points, series, axis: ValueAxis::PERCENT }])
}

/// Line charts one under the other in one picture. Returns a PNG.
pub fn line_charts_png(charts: &[LineChart]) -> Result<Vec<u8>> {
    ensure!(!charts.is_empty(), "no chart to draw");
    let drawn = charts.iter().map(draw_line_chart).collect::<Result<Vec<_>>>()?;
    let mut canvas =
        Canvas::new(drawn.iter().map(|c| c.width).max().unwrap_or(0), drawn.iter().map(|c| c.height).sum());
    let mut y = 0;
    for chart in &drawn {
        canvas.paste(0, y, chart);
        y += chart.height;
    }
    canvas.png()
}

fn draw_line_chart(chart: &LineChart) -> Result<Canvas> {
    let LineChart { title, x_title, points, series, axis } = *chart;
    check_series("line chart", points, series)?;
    ensure!(axis.top > 0.0 && axis.top.is_finite(), "a line chart's axis needs a positive top");
    let tick_width = (0..=5).map(|k| text_width(&axis.tick_label(k as f64 / 5.0))).max().unwrap_or(0);
    let plot_x = MARGIN + tick_width + GAP;
    let plot_y = plot_top(series.len());
    // Long series (a run of 200 epochs) share a plot about 1,000 pixels wide, and label every
    // k-th point so that labels do not overlap.
    let step = if points.len() * POINT_STEP <= 1000 { POINT_STEP } else { (1000 / points.len()).max(3) };
    let label_room = points.iter().map(|p| text_width(p)).max().unwrap_or(0) + GAP;
    let label_every = label_room.div_ceil(step).max(1);
    let plot_width = points.len() * step;
    let plot_height = 100 * LINE_PX_PER_PERCENT;
    let width = (plot_x + plot_width + MARGIN).max(heading_width(title, series));
    let height = plot_y + plot_height + GAP + GLYPH + GAP + GLYPH + MARGIN;
    let mut canvas = Canvas::new(width, height);
    draw_heading(&mut canvas, title, series);

    let point_x = |i: usize| plot_x + step / 2 + i * step;
    let value_y = |v: f64| {
        plot_y + plot_height - ((v / axis.top).clamp(0.0, 1.0) * plot_height as f64).round() as usize
    };
    // Grid lines and tick labels every fifth of the axis, under the lines.
    for k in 0..=5 {
        let y = value_y(axis.top * k as f64 / 5.0);
        canvas.fill(plot_x, y, plot_width, 1, if k == 0 { AXIS } else { GRID });
        let label = axis.tick_label(k as f64 / 5.0);
        canvas.text(plot_x - GAP - text_width(&label), y.saturating_sub(GLYPH / 2), &label, BLACK);
    }
    canvas.fill(plot_x, plot_y, 1, plot_height + 1, AXIS);
    let labels_y = plot_y + plot_height + GAP;
    for (i, label) in
        points.iter().enumerate().filter(|(i, _)| (i + 1) % label_every == 0 || label_every == 1)
    {
        canvas.text(point_x(i).saturating_sub(text_width(label) / 2), labels_y, label, BLACK);
    }
    let x_title_x = plot_x + plot_width.saturating_sub(text_width(x_title)) / 2;
    canvas.text(x_title_x, labels_y + GLYPH + GAP, x_title, BLACK);
    for (k, (_, values)) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let at: Vec<Option<(usize, usize)>> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (!v.is_nan()).then(|| (point_x(i), value_y(v))))
            .collect();
        for pair in at.windows(2) {
            if let [Some(a), Some(b)] = pair {
                canvas.segment(*a, *b, colour);
            }
        }
        for &(x, y) in at.iter().flatten() {
            let marker = MARKER.min(step / 3);
            canvas.fill(x - marker, y.saturating_sub(marker), 2 * marker + 1, 2 * marker + 1, colour);
        }
    }
    Ok(canvas)
}

/// What the picture tests share: decoding our PNGs back, labels from string literals.
#[cfg(test)]
pub(crate) mod test_support {
    /// (width, height, RGB bytes) of a PNG written by this module (8-bit RGB, checked).
    pub fn decode(png_bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        (info.width as usize, info.height as usize, buf)
    }

    pub fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{decode, labels};
    use super::*;

    #[test]
    fn gallery_cells_hold_the_enlarged_images() {
        let rows = labels(&["gaussian_noise", "elastic_transform"]);
        let columns = labels(&["clean", "severity 1", "severity 2"]);
        let images: Vec<Vec<u8>> =
            (0..6).map(|k| (0..3072).map(|i| ((i * 13 + k * 41) % 256) as u8).collect()).collect();
        let cells: Vec<Vec<&[u8]>> =
            images.chunks(3).map(|r| r.iter().map(Vec::as_slice).collect()).collect();
        let scale = 3;
        let (w, h, pixels) = decode(&gallery_png(&rows, &columns, &cells, scale).unwrap());
        let layout = GalleryLayout::new(&rows, &columns, scale as usize);
        assert_eq!((w, h), layout.size(2, 3));
        for i in 0..2 {
            for j in 0..3 {
                let (x0, y0) = layout.cell_origin(i, j);
                for y in 0..96 {
                    for x in 0..96 {
                        let at = ((y0 + y) * w + x0 + x) * 3;
                        let src = ((y / 3) * 32 + x / 3) * 3;
                        assert_eq!(
                            &pixels[at..at + 3],
                            &images[i * 3 + j][src..src + 3],
                            "cell {i},{j} at {x},{y}"
                        );
                    }
                }
            }
        }
        // The labels put dark pixels left of the first column and above the first row.
        let dark = |x0: usize, x1: usize, y0: usize, y1: usize| {
            (y0..y1).any(|y| (x0..x1).any(|x| pixels[(y * w + x) * 3] < 128))
        };
        assert!(dark(0, layout.column_x(0), layout.row_y(1), layout.row_y(1) + 96), "row label");
        assert!(dark(layout.column_x(1), layout.column_x(2), 0, layout.row_y(0)), "column label");
    }

    #[test]
    fn gallery_refuses_mismatched_input() {
        let img = [0u8; 3072];
        let short = [0u8; 100];
        let one = labels(&["a"]);
        assert!(gallery_png(&one, &one, &[vec![&img[..], &img[..]]], 2).is_err());
        assert!(gallery_png(&one, &one, &[vec![&short[..]]], 2).is_err());
        assert!(gallery_png(&one, &one, &[vec![&img[..]]], 0).is_err());
        assert!(gallery_png(&one, &one, &[vec![&img[..]]], 1).is_ok());
    }

    #[test]
    fn bar_lengths_follow_the_values() {
        let categories = labels(&["clean", "fog", "frost"]);
        let series = vec![
            ("run a".to_string(), vec![100.0, 50.0, f64::NAN]),
            ("run b".to_string(), vec![20.0, 0.0, 75.5]),
        ];
        let (w, h, pixels) = decode(&bar_chart_png("Accuracy (%)", &categories, &series).unwrap());
        let colour_run =
            |y: usize, colour: Rgb| (0..w).filter(|&x| pixels[(y * w + x) * 3..][..3] == colour).count();
        // Count each series' coloured pixels along the middle line of each of its bars.
        let label_width = text_width("clean");
        let plot_y = MARGIN + GLYPH + GAP + 2 * (GLYPH + 4) + GAP;
        let group = 2 * BAR + GAP;
        for (c, expected) in [(0, [500, 100]), (1, [250, 0]), (2, [0, 378])] {
            for k in 0..2 {
                let y = plot_y + GAP + c * group + k * BAR + BAR / 2;
                assert_eq!(colour_run(y, PALETTE[k]), expected[k], "category {c} series {k}");
            }
        }
        assert!(w >= MARGIN + label_width + GAP + 500 && h > plot_y + 3 * group);
        // The legend shows both colours.
        assert!(
            pixels.chunks_exact(3).any(|p| p == PALETTE[0])
                && pixels.chunks_exact(3).any(|p| p == PALETTE[1])
        );
        assert!(bar_chart_png("t", &categories, &[("x".to_string(), vec![1.0])]).is_err());
    }

    #[test]
    fn line_points_and_segments_follow_the_values() {
        let points = labels(&["clean", "1", "2", "3"]);
        let series = vec![
            ("run a".to_string(), vec![90.0, 70.0, 50.0, 30.0]),
            ("run b".to_string(), vec![80.0, f64::NAN, 40.0, 0.0]),
        ];
        let (w, h, pixels) = decode(&line_chart_png("Accuracy (%)", "severity", &points, &series).unwrap());
        let at = |x: usize, y: usize| -> Rgb {
            let i = (y * w + x) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        let plot_x = MARGIN + text_width("100%") + GAP;
        let plot_y = MARGIN + GLYPH + GAP + 2 * (GLYPH + 4) + GAP;
        let bottom = plot_y + 100 * LINE_PX_PER_PERCENT;
        let x = |i: usize| plot_x + POINT_STEP / 2 + i * POINT_STEP;
        let y = |v: usize| bottom - v * LINE_PX_PER_PERCENT;
        assert!(w >= plot_x + 4 * POINT_STEP && h > bottom);
        // Markers at the values, lines between neighbours, nothing where a value is missing.
        for (i, v) in [(0, 90), (1, 70), (2, 50), (3, 30)] {
            assert_eq!(at(x(i), y(v)), PALETTE[0], "run a point {i}");
        }
        for (i, v) in [(0, 80), (2, 40), (3, 0)] {
            assert_eq!(at(x(i), y(v)), PALETTE[1], "run b point {i}");
        }
        assert_eq!(at((x(0) + x(1)) / 2, y(80)), PALETTE[0], "run a's segment 0-1 passes 80%");
        assert_eq!(at((x(2) + x(3)) / 2, y(20)), PALETTE[1], "run b's segment 2-3 passes 20%");
        let column_has = |px: usize, colour: Rgb| (plot_y..=bottom).any(|yy| at(px, yy) == colour);
        assert!(!column_has(x(1), PALETTE[1]), "run b has no value at point 1");
        assert!(!column_has((x(0) + x(1)) / 2, PALETTE[1]), "so no segment to it");
        assert!(line_chart_png("t", "x", &points, &[("x".to_string(), vec![1.0])]).is_err());
    }
}
