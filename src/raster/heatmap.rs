//! Heatmaps: a coloured cell per value of a table (a confusion matrix, the classes predicted
//! under each corruption, the experts' probabilities), with the value printed in its cell when
//! it fits, and the colour scale as a legend.

use anyhow::{Result, ensure};

use super::{AXIS, BLACK, Canvas, GAP, GLYPH, MARGIN, Rgb, WHITE, text_width};

/// The colour scale (matplotlib's Blues): light for low values, dark for high ones.
const BLUES: [Rgb; 5] = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
/// A cell without a value.
const NO_VALUE: Rgb = [225, 225, 225];

/// The colour of `t` in [0, 1] on the scale, linear between its stops.
fn scale_colour(t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let i = (t.floor() as usize).min(BLUES.len() - 2);
    let f = t - i as f64;
    let mut out = [0; 3];
    for (c, v) in out.iter_mut().enumerate() {
        *v = (f64::from(BLUES[i][c]) * (1.0 - f) + f64::from(BLUES[i + 1][c]) * f).round() as u8;
    }
    out
}

/// What a heatmap shows.
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub row_labels: &'a [String],
    /// Written upwards above the columns, so long class names fit narrow cells.
    pub column_labels: &'a [String],
    /// `values[i][j]` for row i and column j; NaN: no value (a grey cell).
    pub values: &'a [Vec<f64>],
    /// The values at the light and at the dark end of the colour scale (values beyond are
    /// drawn as the ends).
    pub range: (f64, f64),
    /// Decimals of the numbers in the cells and on the legend.
    pub decimals: usize,
    /// What the colours mean, under the legend's scale.
    pub legend: &'a str,
}

const CELL_HEIGHT: usize = GLYPH + 8;
/// Cells are as wide as their widest number needs, within these bounds; a number wider than
/// the largest cell is left out and its colour alone shows it.
const MIN_CELL: usize = 3 * GLYPH;
const MAX_CELL: usize = 6 * GLYPH;
const LEGEND_BAR: usize = 160;
/// Larger pictures are refused (the input is malformed, not a table to look at).
const MAX_PIXELS: usize = 64 << 20;

/// Where a heatmap puts things.
struct Layout {
    grid_x: usize,
    grid_y: usize,
    cell_width: usize,
    legend_y: usize,
    width: usize,
    height: usize,
}

impl Layout {
    fn new(h: &Heatmap) -> Layout {
        let widest = |labels: &[String]| labels.iter().map(|l| text_width(l)).max().unwrap_or(0);
        let numbers = h.values.iter().flatten().filter(|v| !v.is_nan()).map(|&v| text_width(&h.number(v)));
        let cell_width = (numbers.max().unwrap_or(0) + 6).clamp(MIN_CELL, MAX_CELL);
        let grid_x = MARGIN + widest(h.row_labels) + GAP;
        let grid_y = MARGIN + GLYPH + GAP + widest(h.column_labels) + GAP;
        let legend_y = grid_y + h.row_labels.len() * CELL_HEIGHT + 2 * GAP;
        let high_tick = text_width(&h.number(h.range.1));
        let width = [
            MARGIN + text_width(h.title),
            grid_x + h.column_labels.len() * cell_width,
            grid_x + LEGEND_BAR + high_tick / 2,
            grid_x + text_width(h.legend),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + MARGIN;
        // The scale, its tick labels, then the caption.
        let height = legend_y + GLYPH + 2 + GLYPH + GAP + GLYPH + MARGIN;
        Layout { grid_x, grid_y, cell_width, legend_y, width, height }
    }

    /// The top-left corner of cell (row `i`, column `j`).
    fn cell_origin(&self, i: usize, j: usize) -> (usize, usize) {
        (self.grid_x + j * self.cell_width, self.grid_y + i * CELL_HEIGHT)
    }
}

impl Heatmap<'_> {
    fn number(&self, v: f64) -> String {
        format!("{v:.*}", self.decimals)
    }

    /// Where `v` lies on the colour scale, 0 to 1.
    fn position(&self, v: f64) -> f64 {
        ((v - self.range.0) / (self.range.1 - self.range.0)).clamp(0.0, 1.0)
    }

    fn check(&self) -> Result<()> {
        let (rows, columns) = (self.row_labels.len(), self.column_labels.len());
        ensure!(rows > 0 && columns > 0, "heatmap \"{}\": no rows or no columns", self.title);
        ensure!(
            self.values.len() == rows && self.values.iter().all(|r| r.len() == columns),
            "heatmap \"{}\": the values are not {rows} rows of {columns}",
            self.title
        );
        let (lo, hi) = self.range;
        ensure!(
            lo.is_finite() && hi.is_finite() && lo < hi,
            "heatmap \"{}\": the colour scale from {lo} to {hi} is empty",
            self.title
        );
        ensure!(
            self.values.iter().flatten().all(|v| v.is_nan() || v.is_finite()),
            "heatmap \"{}\": an infinite value",
            self.title
        );
        ensure!(self.decimals <= 6, "heatmap \"{}\": {} decimals are too many", self.title, self.decimals);
        Ok(())
    }
}

/// A heatmap: a coloured cell per value, rows labelled at the left and columns labelled
/// (upwards) on top, each value printed in its cell when it fits, and under the grid the colour
/// scale from `range.0` to `range.1` with its ends and middle labelled and its caption.
/// Returns a PNG.
pub fn heatmap_png(h: &Heatmap) -> Result<Vec<u8>> {
    h.check()?;
    let layout = Layout::new(h);
    ensure!(
        layout.width.saturating_mul(layout.height) <= MAX_PIXELS,
        "heatmap \"{}\": {} x {} pixels is too large a picture",
        h.title,
        layout.width,
        layout.height
    );
    let mut canvas = Canvas::new(layout.width, layout.height);
    canvas.text(MARGIN, MARGIN, h.title, BLACK);
    let cw = layout.cell_width;
    for (j, label) in h.column_labels.iter().enumerate() {
        let (x, _) = layout.cell_origin(0, j);
        canvas.text_up(x + (cw - 1 - GLYPH) / 2, layout.grid_y - GAP, label, BLACK);
    }
    for (i, (label, row)) in h.row_labels.iter().zip(h.values).enumerate() {
        let (_, y) = layout.cell_origin(i, 0);
        canvas.text(MARGIN, y + (CELL_HEIGHT - GLYPH) / 2, label, BLACK);
        for (j, &v) in row.iter().enumerate() {
            // One white pixel right of and under every cell separates it from the next.
            let (x, y) = layout.cell_origin(i, j);
            if v.is_nan() {
                canvas.fill(x, y, cw - 1, CELL_HEIGHT - 1, NO_VALUE);
                continue;
            }
            let t = h.position(v);
            canvas.fill(x, y, cw - 1, CELL_HEIGHT - 1, scale_colour(t));
            let number = h.number(v);
            if text_width(&number) + 2 < cw {
                let ink = if t > 0.55 { WHITE } else { BLACK };
                let tx = x + (cw - 1 - text_width(&number)) / 2;
                canvas.text(tx, y + (CELL_HEIGHT - 1 - GLYPH) / 2, &number, ink);
            }
        }
    }
    let bar_y = layout.legend_y;
    for k in 0..LEGEND_BAR {
        canvas.fill(layout.grid_x + k, bar_y, 1, GLYPH, scale_colour(k as f64 / (LEGEND_BAR - 1) as f64));
    }
    let (lo, hi) = h.range;
    for (k, v) in [(0, lo), (LEGEND_BAR / 2, (lo + hi) / 2.0), (LEGEND_BAR - 1, hi)] {
        let label = h.number(v);
        canvas.fill(layout.grid_x + k, bar_y + GLYPH, 1, 2, AXIS);
        let x = (layout.grid_x + k).saturating_sub(text_width(&label) / 2);
        canvas.text(x, bar_y + GLYPH + 2, &label, BLACK);
    }
    canvas.text(layout.grid_x, bar_y + GLYPH + 2 + GLYPH + GAP, h.legend, BLACK);
    canvas.png()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::test_support::{decode, labels};

    #[test]
    fn cells_take_the_colour_of_their_value_and_print_it() {
        let rows = labels(&["clean", "gaussian_noise"]);
        let columns = labels(&["airplane", "automobile", "bird"]);
        let values = vec![vec![0.0, 50.0, 100.0], vec![f64::NAN, 150.0, -3.0]];
        let h = Heatmap {
            title: "t",
            row_labels: &rows,
            column_labels: &columns,
            values: &values,
            range: (0.0, 100.0),
            decimals: 1,
            legend: "% of images",
        };
        let (w, height, pixels) = decode(&heatmap_png(&h).unwrap());
        let layout = Layout::new(&h);
        assert_eq!((w, height), (layout.width, layout.height));
        assert_eq!(layout.cell_width, text_width("100.0") + 6, "as wide as the widest number");
        let at = |x: usize, y: usize| -> Rgb {
            let i = (y * w + x) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        // A cell's corner shows its colour (its number is printed in the middle).
        let corner = |i, j| {
            let (x, y) = layout.cell_origin(i, j);
            at(x + 1, y + 1)
        };
        assert_eq!(corner(0, 0), BLUES[0]);
        assert_eq!(corner(0, 1), BLUES[2], "50 is the middle of the scale");
        assert_eq!(corner(0, 2), BLUES[4]);
        assert_eq!(corner(1, 0), NO_VALUE);
        assert_eq!(corner(1, 1), BLUES[4], "beyond the scale: its end");
        assert_eq!(corner(1, 2), BLUES[0]);
        // The white separator right of each cell.
        let (x, y) = layout.cell_origin(0, 1);
        assert_eq!(at(x - 1, y + 1), WHITE);
        // Numbers: white ink on the dark cell, black on the light one, none on the grey one.
        let ink = |i, j, colour: Rgb| {
            let (x, y) = layout.cell_origin(i, j);
            (y..y + CELL_HEIGHT - 1).any(|yy| (x..x + layout.cell_width - 1).any(|xx| at(xx, yy) == colour))
        };
        assert!(ink(0, 2, WHITE) && ink(0, 0, BLACK) && !ink(1, 0, BLACK));
        // Column labels above the grid, row labels left of it.
        let dark = |x0: usize, x1: usize, y0: usize, y1: usize| {
            (y0..y1).any(|y| (x0..x1).any(|x| at(x, y) == BLACK))
        };
        let (gx, gy) = layout.cell_origin(0, 0);
        assert!(dark(gx, gx + layout.cell_width, MARGIN + GLYPH + GAP, gy), "column label");
        assert!(dark(MARGIN, gx, gy + CELL_HEIGHT, gy + 2 * CELL_HEIGHT), "row label");
        // The legend runs from the light to the dark end.
        assert_eq!(at(layout.grid_x, layout.legend_y + 1), BLUES[0]);
        assert_eq!(at(layout.grid_x + LEGEND_BAR - 1, layout.legend_y + 1), BLUES[4]);
    }

    #[test]
    fn numbers_that_do_not_fit_are_left_out_and_bad_input_is_refused() {
        let one = labels(&["a"]);
        let values = vec![vec![123456.123456]];
        let h = Heatmap {
            title: "t",
            row_labels: &one,
            column_labels: &one,
            values: &values,
            range: (0.0, 1.0),
            decimals: 6,
            legend: "",
        };
        let (w, _, pixels) = decode(&heatmap_png(&h).unwrap());
        let layout = Layout::new(&h);
        assert_eq!(layout.cell_width, MAX_CELL);
        let (x, y) = layout.cell_origin(0, 0);
        let cell: Vec<Rgb> = (y..y + CELL_HEIGHT - 1)
            .flat_map(|yy| (x..x + MAX_CELL - 1).map(move |xx| (yy * w + xx) * 3))
            .map(|i| [pixels[i], pixels[i + 1], pixels[i + 2]])
            .collect();
        assert!(cell.iter().all(|&c| c == BLUES[4]), "a plain cell");
        let refuse = |values: Vec<Vec<f64>>, range: (f64, f64)| {
            heatmap_png(&Heatmap { values: &values, range, ..Heatmap { ..h } }).unwrap_err().to_string()
        };
        assert!(refuse(vec![vec![1.0, 2.0]], (0.0, 1.0)).contains("not 1 rows of 1"));
        assert!(refuse(vec![vec![1.0]], (1.0, 1.0)).contains("colour scale"));
        assert!(refuse(vec![vec![f64::INFINITY]], (0.0, 1.0)).contains("infinite"));
    }
}
