//! `Real`: the float precision a CPU computation runs in (f32 for training, f64 for the checks).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// A float type the CPU backend is generic over.
pub trait Real:
    num_traits::Float
    + Send
    + Sync
    + Debug
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// "f32" or "f64", for reports.
    const NAME: &'static str;
    fn of(x: f64) -> Self;
    fn as_f64(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    fn of(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    fn of(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
}
