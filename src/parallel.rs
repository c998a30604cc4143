//! Deterministic parallel reductions: work is split into a fixed number of contiguous parts
//! and the partial results are combined in order, so results do not depend on thread timing
//! or on the number of threads. A resumed training run then matches an uninterrupted one.

use std::ops::Range;

use rayon::prelude::*;

/// The fixed number of parts a reduction is split into.
pub const REDUCTION_PARTS: usize = 8;

/// Splits `0..n` into at most `parts` contiguous, non-empty ranges of nearly equal size.
pub fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|p| (p * n / parts)..((p + 1) * n / parts)).filter(|r| !r.is_empty()).collect()
}

/// Runs `work` on each part of `0..n` in parallel and returns the partial results in order.
pub fn map_parts<T: Send>(n: usize, work: impl Fn(Range<usize>) -> T + Sync + Send) -> Vec<T> {
    split(n, REDUCTION_PARTS).into_par_iter().map(work).collect()
}

/// Sums equally long partial vectors in a fixed order: every element is the parts' values
/// added first to last, whatever the threads (blocks of elements run in parallel).
pub fn sum_in_order(mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    const BLOCK: usize = 1 << 14;
    let mut total = parts.remove(0);
    total.par_chunks_mut(BLOCK).enumerate().for_each(|(k, block)| {
        for p in &parts {
            for (t, v) in block.iter_mut().zip(&p[k * BLOCK..]) {
                *t += v;
            }
        }
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_range_exactly() {
        for n in [0, 1, 3, 8, 9, 100] {
            let parts = split(n, 8);
            let covered: usize = parts.iter().map(|r| r.len()).sum();
            assert_eq!(covered, n);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
        }
    }
}
