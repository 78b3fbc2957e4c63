#![cfg(test)]
use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn lanes_mean_what_they_say(a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), lo in any::<u8>(), hi in any::<u8>()) {
        let (va, vb) = (V::load(&a), V::load(&b));
        let bits = |f: &dyn Fn(u8, u8) -> bool| {
            (0..16).fold(0u16, |m, j| m | (u16::from(f(a[j], b[j])) << j))
        };
        prop_assert_eq!(va.eq(vb).bitmask(), bits(&|x, y| x == y));
        prop_assert_eq!(va.lt(vb).bitmask(), bits(&|x, y| x < y));
        prop_assert_eq!(va.gt(vb).bitmask(), bits(&|x, y| x > y));
        prop_assert_eq!(va.bitmask(), bits(&|x, _| x >= 0x80));
        prop_assert_eq!(va.and(vb).bitmask(), bits(&|x, y| x & y >= 0x80));
        prop_assert_eq!(va.or(vb).bitmask(), bits(&|x, y| x | y >= 0x80));
        prop_assert_eq!(va.and_not(vb).bitmask(), bits(&|x, y| x & !y >= 0x80));
        prop_assert_eq!(within(va, lo, hi).bitmask(), bits(&|x, _| lo <= x && x <= hi));
    }
}
