//! Spike encodings of SPEC section 2: Fashion-MNIST time-to-first-spike, N-MNIST and SHD time binning.
//!
//! # Fashion-MNIST: time to first spike
//! x = pixel / 255; if x >= 0.2, t = floor(20 * ln(x / (x - 0.2))) steps, and the pixel spikes once at t
//! if t < T. Computed in f64. Pixel 51 gives x = 0.2 exactly (51.0 / 255.0 and the literal 0.2 are the
//! same f64), so x - 0.2 = 0, x / 0 = +inf, t = +inf: no spike. Pixel 52 spikes at step 79, pixel 255
//! at step 4 (20 ln 1.25 = 4.46). Over the 204 pixel values that spike, the unrounded 20 ln(...) is never
//! closer than 0.005 to an integer, so f32 arithmetic (as the PyTorch reference used) floors to the very
//! same steps; a test checks this. The encoding is stored compactly as one u8 per pixel, the first-spike
//! step, with [`NEVER`] for no spike; [`ttfs_table`] maps all 256 pixel values once.
//!
//! # N-MNIST: microsecond events to 1 ms bins
//! bin = round_half_even(t_us / 1000), computed exactly in integers (a tie is t_us = 1000k + 500, which
//! goes to the even one of k and k + 1). Unit = x + 34 y, polarities merged. Times read back from the
//! HDF5 layout are f32 seconds; they are first turned back into whole microseconds by rounding
//! t * 1e6 (exact for every t_us < 2^23, the whole range of the 5-byte format: f32 keeps such times
//! within 0.48 us), so an HDF5 round trip bins exactly as the zip did.
//!
//! # SHD: float16 seconds to 2 ms bins
//! bin = round_half_even(t / 0.002), with t the exact value of the stored float16 widened to f64.
//! A float16 has an 11-bit significand, so t * 500 is exact in f64, and a test checks on every finite
//! float16 that dividing by the f64 constant 0.002 gives bit for bit the same quotient; a half-way
//! quotient is therefore a true tie of the stored value, decided to the even bin. Most decimal times
//! are not float16 values: 0.001 s (the edge between bins 0 and 1) is stored as 0.00100040435791015625,
//! a hair above the edge, so it lands in bin 1, exactly as the stored number says. Float16 values that
//! are exact ties, e.g. 0.125 s (62.5 bins, to bin 62) and 0.375 s (187.5, to bin 188), go to the even
//! neighbour. Half-even is what numpy's `round` and PyTorch's `round` do, so this is the rule a Python
//! reference applying round() to t / dt uses; unlike floor it centres each bin on its step.

use half::f16;

/// First-spike step meaning "this pixel never spikes".
pub const NEVER: u8 = u8::MAX;
/// Time constant of the TTFS code in steps (tau_eff / dt).
pub const TTFS_TAU_STEPS: f64 = 20.0;
/// Pixel intensity (after /255) below which a pixel never spikes.
pub const TTFS_THRESHOLD: f64 = 0.2;
/// Side of the N-MNIST sensor.
pub const NMNIST_SIDE: u32 = 34;
/// N-MNIST input units with polarities merged (34 x 34).
pub const NMNIST_INPUTS: u32 = NMNIST_SIDE * NMNIST_SIDE;
/// N-MNIST units with polarity kept, as stored in the HDF5 layout (x + 34 y + 1156 p).
pub const NMNIST_POLARIZED_UNITS: u32 = 2 * NMNIST_INPUTS;
/// SHD input channels.
pub const SHD_INPUTS: u32 = 700;
/// Microseconds per N-MNIST bin.
pub const NMNIST_BIN_US: u64 = 1000;
/// Seconds per SHD bin.
pub const SHD_BIN_SECONDS: f64 = 2e-3;

/// Unbounded time-to-first-spike step of a pixel, or None if it never spikes (x < 0.2, or x = 0.2).
pub fn ttfs_step(pixel: u8) -> Option<u32> {
    let x = f64::from(pixel) / 255.0;
    if x < TTFS_THRESHOLD {
        return None;
    }
    let t = (TTFS_TAU_STEPS * (x / (x - TTFS_THRESHOLD)).ln()).floor();
    // x = 0.2 gives +inf: no spike. Finite t is at most 79 for 8-bit pixels.
    if t.is_finite() && t >= 0.0 && t < f64::from(u32::MAX) {
        Some(t as u32)
    } else {
        None
    }
}

/// First-spike step of every pixel value for a run of `steps` steps ([`NEVER`] if t >= steps).
pub fn ttfs_table(steps: usize) -> [u8; 256] {
    let mut table = [NEVER; 256];
    for (pixel, slot) in table.iter_mut().enumerate() {
        if let Some(t) = ttfs_step(pixel as u8) {
            // Steps are stored as u8 with 255 reserved; TTFS steps never exceed 79.
            if (t as usize) < steps && t < u32::from(NEVER) {
                *slot = t as u8;
            }
        }
    }
    table
}

/// First-spike steps of `pixels` (same layout), [`NEVER`] for pixels that do not spike before `steps`.
pub fn encode_first_spike_steps(pixels: &[u8], steps: usize) -> Vec<u8> {
    let table = ttfs_table(steps);
    pixels.iter().map(|&p| table[p as usize]).collect()
}

/// N-MNIST bin of an event time: round_half_even(t_us / 1000), exact.
pub fn nmnist_bin(t_us: u64) -> u64 {
    let (whole, rest) = (t_us / NMNIST_BIN_US, t_us % NMNIST_BIN_US);
    let half = NMNIST_BIN_US / 2;
    if rest > half || (rest == half && whole % 2 == 1) {
        whole + 1
    } else {
        whole
    }
}

/// N-MNIST input unit with polarities merged: x + 34 y.
pub fn nmnist_unit(x: u8, y: u8) -> u32 {
    u32::from(x) + NMNIST_SIDE * u32::from(y)
}

/// Whole microseconds (nearest) of an N-MNIST time in seconds, or None if negative or not finite.
/// Exact for every f32 that [`f32_seconds_from_microseconds`] produces.
pub fn microseconds_from_seconds(seconds: f64) -> Option<u64> {
    let us = (seconds * 1e6).round_ties_even();
    if us.is_finite() && us >= 0.0 && us < u64::MAX as f64 {
        Some(us as u64)
    } else {
        None
    }
}

/// f32 seconds of an N-MNIST time in microseconds, as the HDF5 layout stores it.
pub fn f32_seconds_from_microseconds(t_us: u32) -> f32 {
    (f64::from(t_us) * 1e-6) as f32
}

/// SHD bin of a spike time in seconds: round_half_even(t / 0.002), or None if t is negative or not finite.
pub fn shd_bin(seconds: f64) -> Option<u64> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return None;
    }
    let bin = (seconds / SHD_BIN_SECONDS).round_ties_even();
    (bin < u64::MAX as f64).then_some(bin as u64)
}

/// SHD bin of a float16 spike time (widened exactly to f64 first).
pub fn shd_bin_f16(seconds: f16) -> Option<u64> {
    shd_bin(seconds.to_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttfs_edges_match_the_spec() {
        assert_eq!(ttfs_step(255), Some(4));
        assert_eq!(ttfs_step(52), Some(79));
        assert_eq!(
            ttfs_step(51),
            None,
            "x = 0.2 exactly gives an infinite time"
        );
        for p in 0..=51u8 {
            assert_eq!(ttfs_step(p), None, "pixel {p}");
        }
        let table = ttfs_table(100);
        assert!(table[52..].iter().all(|&t| t < 100));
        // Brighter pixels spike no later.
        assert!(table[52..].windows(2).all(|w| w[0] >= w[1]));
        // A shorter run drops late spikes.
        let short = ttfs_table(10);
        assert_eq!(short[52], NEVER);
        assert_eq!(short[255], 4);
    }

    #[test]
    fn ttfs_in_f32_gives_the_same_steps() {
        for p in 52..=255u8 {
            let x = f32::from(p) / 255.0;
            let t32 = (20.0f32 * (x / (x - 0.2f32)).ln()).floor() as u32;
            assert_eq!(Some(t32), ttfs_step(p), "pixel {p}");
            let x64 = f64::from(p) / 255.0;
            let raw = 20.0 * (x64 / (x64 - 0.2)).ln();
            assert!(
                (raw - raw.round()).abs() > 0.005,
                "pixel {p} is near a step edge"
            );
        }
    }

    #[test]
    fn nmnist_bins_round_half_even() {
        assert_eq!(nmnist_bin(0), 0);
        assert_eq!(nmnist_bin(499), 0);
        assert_eq!(nmnist_bin(500), 0, "tie to even 0");
        assert_eq!(nmnist_bin(501), 1);
        assert_eq!(nmnist_bin(1500), 2, "tie to even 2");
        assert_eq!(nmnist_bin(2500), 2, "tie to even 2");
        assert_eq!(nmnist_bin(299_499), 299);
        assert_eq!(nmnist_bin(299_500), 300, "tie to even 300, past T = 300");
        assert_eq!(nmnist_unit(33, 33), 1155);
    }

    #[test]
    fn f32_seconds_recover_every_microsecond_of_the_format() {
        // t_us has 23 bits in the 5-byte event format.
        for t_us in 0..1u32 << 23 {
            let s = f32_seconds_from_microseconds(t_us);
            assert_eq!(
                microseconds_from_seconds(f64::from(s)),
                Some(u64::from(t_us))
            );
        }
        assert_eq!(microseconds_from_seconds(-1e-3), None);
        assert_eq!(microseconds_from_seconds(f64::NAN), None);
    }

    #[test]
    fn shd_quotient_is_exact_for_every_float16() {
        for bits in 0..=u16::MAX {
            let t = f16::from_bits(bits).to_f64();
            if t.is_finite() {
                assert_eq!(t / SHD_BIN_SECONDS, t * 500.0, "float16 bits {bits:#06x}");
            }
        }
    }

    #[test]
    fn shd_bins_at_the_edges() {
        let bin = |s: f32| shd_bin_f16(f16::from_f32(s));
        assert_eq!(
            f16::from_f32(0.001).to_f64(),
            1049.0 / 1048576.0,
            "1049 / 2^20"
        );
        assert_eq!(bin(0.001), Some(1), "stored above the 0/1 edge");
        assert_eq!(
            shd_bin(0.001),
            Some(0),
            "an exact 0.001 s is a tie, to even 0"
        );
        assert_eq!(shd_bin(0.003), Some(2), "an exact tie to even 2");
        assert_eq!(bin(0.125), Some(62), "exact float16 tie 62.5 to even 62");
        assert_eq!(bin(0.375), Some(188), "exact float16 tie 187.5 to even 188");
        assert_eq!(bin(0.0), Some(0));
        assert_eq!(bin(0.998), Some(499), "the last bin kept for T = 500");
        assert_eq!(bin(0.999), Some(500), "0.999 rounds past the last bin 499");
        assert_eq!(shd_bin(-0.001), None);
        assert_eq!(shd_bin_f16(f16::NAN), None);
        assert_eq!(shd_bin_f16(f16::INFINITY), None);
    }
}
