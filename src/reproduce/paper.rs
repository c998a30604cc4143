//! The paper's published Table 1 (Kotyan & Vargas, PreAct ResNet-18, accuracy in %), as the
//! reference columns of `mocse reproduce`. Only what the paper prints is here; group means and
//! the mean of the 15 benchmark corruptions are derived from its per-corruption numbers.

use crate::corrupt::Corruption;

/// The paper's columns, in the order of [`super::Cell::ALL`]: CIFAR-10 standard training
/// (standard network, MoCSE), adversarial training, standard training on the augmented set.
pub const NATURAL: [f64; 6] = [95.18, 94.08, 83.35, 85.09, 96.13, 96.54];

/// The paper's average over the 19 corruptions, as printed (the mean of its rows agrees to 0.01).
pub const AVERAGE_OF_19: [f64; 6] = [44.35, 46.28, 50.63, 52.46, 45.10, 48.34];

/// The paper's accuracy under a corruption (mean over the 5 severities), per column.
pub fn corruption(c: Corruption) -> [f64; 6] {
    use Corruption::*;
    match c {
        GaussianNoise => [17.63, 26.37, 52.96, 59.83, 16.69, 25.04],
        ShotNoise => [17.66, 25.66, 50.51, 56.81, 18.03, 24.67],
        ImpulseNoise => [25.53, 33.17, 52.06, 57.79, 28.97, 37.48],
        SpeckleNoise => [25.43, 35.77, 60.12, 64.73, 27.98, 34.75],
        DefocusBlur => [16.68, 17.87, 30.33, 29.85, 14.20, 15.05],
        GlassBlur => [20.18, 23.71, 39.64, 38.56, 17.57, 22.81],
        MotionBlur => [30.69, 31.87, 38.40, 38.29, 30.73, 32.94],
        ZoomBlur => [71.48, 77.18, 75.75, 76.61, 76.13, 80.55],
        GaussianBlur => [19.74, 24.12, 36.33, 35.99, 17.74, 21.14],
        Snow => [70.35, 67.22, 51.37, 53.07, 73.43, 75.03],
        Frost => [74.40, 67.60, 40.73, 42.21, 77.22, 79.15],
        Fog => [43.51, 43.10, 17.41, 17.67, 40.32, 44.43],
        Brightness => [88.94, 85.54, 64.11, 66.13, 91.36, 92.03],
        Spatter => [82.67, 82.90, 72.28, 75.55, 85.29, 87.45],
        Contrast => [52.08, 41.88, 22.14, 21.90, 52.43, 49.78],
        ElasticTransform => [19.59, 19.70, 40.98, 40.95, 21.80, 24.03],
        Pixelate => [28.10, 36.73, 66.55, 67.33, 30.96, 30.63],
        JpegCompression => [52.00, 55.87, 76.08, 77.70, 46.77, 51.02],
        Saturate => [86.08, 83.00, 74.29, 75.78, 89.22, 90.52],
    }
}

/// The mean of the paper's numbers over `corruptions`, for column `column`.
pub fn mean_over(corruptions: impl IntoIterator<Item = Corruption>, column: usize) -> f64 {
    let (sum, n) = corruptions.into_iter().fold((0.0, 0), |(s, n), c| (s + corruption(c)[column], n + 1));
    sum / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typing error in the 114 numbers would show here: the printed average is the mean of
    /// the printed rows, to the paper's two decimals.
    #[test]
    fn printed_average_is_the_mean_of_the_rows() {
        for (column, printed) in AVERAGE_OF_19.iter().enumerate() {
            let mean = mean_over(Corruption::ALL, column);
            assert!((mean - printed).abs() < 0.006, "column {column}: {mean}");
        }
    }
}
