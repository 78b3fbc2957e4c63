//! Sixteen bytes compared at once. In the filter (wasm32 built with `simd128`, see
//! `.cargo/config.toml`) a `V` is one wasm SIMD register and each method one instruction;
//! elsewhere (tests, the CLI, fuzzing) it is a plain array with the same meaning, so the
//! scanners built on it are tested natively against their byte-by-byte definitions.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use core::arch::wasm32::{
        u8x16_bitmask, u8x16_eq, u8x16_gt, u8x16_lt, u8x16_splat, v128, v128_and, v128_andnot,
        v128_load, v128_or,
    };

    #[derive(Clone, Copy)]
    pub struct V(v128);

    impl V {
        #[inline(always)]
        pub fn load(b: &[u8; 16]) -> V {
            // SAFETY: `b` is 16 readable bytes; wasm loads need no alignment.
            V(unsafe { v128_load(b.as_ptr().cast::<v128>()) })
        }
        #[inline(always)]
        pub fn splat(x: u8) -> V {
            V(u8x16_splat(x))
        }
        #[inline(always)]
        pub fn eq(self, o: V) -> V {
            V(u8x16_eq(self.0, o.0))
        }
        /// Unsigned `self < o` per byte.
        #[inline(always)]
        pub fn lt(self, o: V) -> V {
            V(u8x16_lt(self.0, o.0))
        }
        /// Unsigned `self > o` per byte.
        #[inline(always)]
        pub fn gt(self, o: V) -> V {
            V(u8x16_gt(self.0, o.0))
        }
        #[inline(always)]
        pub fn and(self, o: V) -> V {
            V(v128_and(self.0, o.0))
        }
        #[inline(always)]
        pub fn or(self, o: V) -> V {
            V(v128_or(self.0, o.0))
        }
        /// `self & !o`.
        #[inline(always)]
        pub fn and_not(self, o: V) -> V {
            V(v128_andnot(self.0, o.0))
        }
        /// The high bit of byte j as bit j.
        #[inline(always)]
        pub fn bitmask(self) -> u16 {
            u8x16_bitmask(self.0)
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    #[derive(Clone, Copy)]
    pub struct V([u8; 16]);

    #[inline(always)]
    fn map2(a: [u8; 16], b: [u8; 16], f: impl Fn(u8, u8) -> u8) -> V {
        let mut out = [0u8; 16];
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
        V(out)
    }

    fn all(on: bool) -> u8 {
        if on {
            0xff
        } else {
            0
        }
    }

    impl V {
        #[inline(always)]
        pub fn load(b: &[u8; 16]) -> V {
            V(*b)
        }
        #[inline(always)]
        pub fn splat(x: u8) -> V {
            V([x; 16])
        }
        #[inline(always)]
        pub fn eq(self, o: V) -> V {
            map2(self.0, o.0, |a, b| all(a == b))
        }
        #[inline(always)]
        pub fn lt(self, o: V) -> V {
            map2(self.0, o.0, |a, b| all(a < b))
        }
        #[inline(always)]
        pub fn gt(self, o: V) -> V {
            map2(self.0, o.0, |a, b| all(a > b))
        }
        #[inline(always)]
        pub fn and(self, o: V) -> V {
            map2(self.0, o.0, |a, b| a & b)
        }
        #[inline(always)]
        pub fn or(self, o: V) -> V {
            map2(self.0, o.0, |a, b| a | b)
        }
        #[inline(always)]
        pub fn and_not(self, o: V) -> V {
            map2(self.0, o.0, |a, b| a & !b)
        }
        #[inline(always)]
        pub fn bitmask(self) -> u16 {
            self.0
                .iter()
                .enumerate()
                .fold(0u16, |m, (j, &b)| m | (u16::from(b >> 7) << j))
        }
    }
}

pub use imp::V;

/// Bytes in `lo..=hi`, as a lane mask.
#[inline(always)]
pub fn within(v: V, lo: u8, hi: u8) -> V {
    let below = v.lt(V::splat(lo));
    let above = v.gt(V::splat(hi));
    V::splat(0xff).and_not(below.or(above))
}

/// The 16 bytes of `w` from `at`, if there are that many.
#[inline(always)]
pub fn chunk(w: &[u8], at: usize) -> Option<&[u8; 16]> {
    w.get(at..at.checked_add(16)?)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
}

#[cfg(test)]
mod tests;
