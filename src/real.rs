//! The floating-point types the kernels run in (`f32`, `f64`).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Mul, Neg, Sub, SubAssign};

/// A float the CTC kernels can compute in. Implemented for `f32` and `f64`.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    const INFINITY: Self;
    const NAN: Self;
    /// Name shown to users (`"float32"`, `"float64"`).
    const NAME: &'static str;

    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn is_nan(self) -> bool;
    fn from_f64(value: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The recycled gradient buffers of this type (see `buffers`).
    fn recycled_buffers() -> &'static crate::buffers::Pool<Self>;
}

macro_rules! impl_real {
    ($t:ty, $name:literal) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const INFINITY: Self = <$t>::INFINITY;
            const NAN: Self = <$t>::NAN;
            const NAME: &'static str = $name;

            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn recycled_buffers() -> &'static crate::buffers::Pool<Self> {
                static POOL: crate::buffers::Pool<$t> = std::sync::Mutex::new(Vec::new());
                &POOL
            }
        }
    };
}

impl_real!(f32, "float32");
impl_real!(f64, "float64");
