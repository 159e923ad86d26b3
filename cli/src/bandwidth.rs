//! `ember bench --bandwidth`: the machine's streaming-read bandwidth, measured as decode reads
//! its weights (every thread streams its own contiguous share of a buffer far larger than the
//! caches), and the batch-1 decode speed it allows.

use std::time::Instant;

/// Bytes read per pass.
const BYTES: usize = 256 << 20;
/// Timed passes (after one untimed pass that maps the pages).
const PASSES: usize = 4;

/// Sum of the 64-bit words of `w`, four independent chains (vectorizable, nothing optimized
/// away: the result is used).
fn sum_words(w: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    for c in w.chunks_exact(4) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(x);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

/// Streaming-read bandwidth of `threads` threads in bytes per second.
pub fn measure(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = BYTES / 8 / threads / 4 * 4;
    // Distinct non-zero contents, so no page is the shared zero page.
    let bufs: Vec<Vec<u64>> = (0..threads)
        .map(|t| (0..words as u64).map(|i| i ^ t as u64).collect())
        .collect();
    let run = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = bufs.iter().map(|b| s.spawn(|| sum_words(b))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        })
    };
    let mut check = run();
    let t0 = Instant::now();
    for _ in 0..PASSES {
        check = check.wrapping_add(std::hint::black_box(run()));
    }
    std::hint::black_box(check);
    (PASSES * threads * words * 8) as f64 / t0.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_summed() {
        let w: Vec<u64> = (1..=8).collect();
        assert_eq!(sum_words(&w), 36);
    }
}
