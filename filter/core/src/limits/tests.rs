#![cfg(test)]
use super::*;

#[test]
fn a_limit_is_named_with_its_exact_amount() {
    let cost = |amount, per| Limit::Rate {
        kind: LimitKind::CostUsd,
        amount,
        per,
        window: WindowKind::Fixed,
    };
    let cases = [
        (cost(15_000, Per::Day), "0.015 USD per day"),
        (cost(25_000_000, Per::Month), "25.00 USD per month"),
        (cost(1, Per::Hour), "0.000001 USD per hour"),
        (cost(1_230_000, Per::Minute), "1.23 USD per minute"),
        (cost(100_500_000, Per::Second), "100.50 USD per second"),
        (cost(0, Per::Day), "0.00 USD per day"),
        (
            cost(u64::MAX, Per::Day),
            "18446744073709.551615 USD per day",
        ),
        (
            Limit::Rate {
                kind: LimitKind::InputTokens,
                amount: 1000,
                per: Per::Day,
                window: WindowKind::Sliding,
            },
            "1000 input_tokens per day",
        ),
        (Limit::Concurrent(4), "4 concurrent requests"),
    ];
    for (limit, want) in cases {
        assert_eq!(limit.to_string(), want, "{limit:?}");
    }
}

#[test]
fn prices_each_token_class_in_micro_dollars() {
    let p = Price {
        input: 3.0,
        output: 15.0,
        cache_write: 3.75,
        cache_read: 0.3,
    };
    let u = Usage {
        input: 1000,
        cache_read: 2000,
        cache_write: 100,
        output: 500,
    };
    // 3000 + 7500 + 375 + 600
    assert_eq!(p.cost_micros(&u), 11_475);
    assert_eq!(u.total(), 3600);
    assert_eq!(u.input_side(), 3100);
}

#[test]
fn costs_are_exact_for_decimal_prices() {
    // 100 × 0.07 is 7.000000000000001 in floating point: rounded up, 8.
    let cases = [
        (0.07, 100, 7),
        (0.1, 3, 1),
        (0.3, 2000, 600),
        (1.1, 3, 4),
        (0.000001, 1, 1),
        (2.5, 0, 0),
    ];
    for (price, tokens, want) in cases {
        let p = Price {
            input: price,
            ..Price::default()
        };
        let u = Usage {
            input: tokens,
            ..Usage::default()
        };
        assert_eq!(p.cost_micros(&u), want, "{tokens} × {price}");
    }
}

#[test]
fn totals_and_costs_are_exact_at_the_largest_sane_usage() {
    // Each reported count is at most 10^8; Gemini's output adds thoughts to candidates.
    let u = Usage {
        input: 100_000_000,
        cache_read: 100_000_000,
        cache_write: 100_000_000,
        output: 200_000_000,
    };
    assert_eq!(u.input_side(), 300_000_000);
    assert_eq!(u.total(), 500_000_000);
    let opus = Price {
        input: 15.0,
        output: 75.0,
        cache_write: 18.75,
        cache_read: 1.5,
    };
    // 1.5e9 + 1.5e10 + 1.875e9 + 1.5e8 micro-dollars.
    assert_eq!(opus.cost_micros(&u), 18_525_000_000);
    let odd = Price {
        input: 0.15,
        output: 0.6,
        cache_write: 0.1875,
        cache_read: 0.075,
    };
    assert_eq!(
        odd.cost_micros(&u),
        15_000_000 + 120_000_000 + 18_750_000 + 7_500_000
    );
    // A price no one charges still does not wrap.
    let absurd = Price {
        input: 1e300,
        ..Price::default()
    };
    assert_eq!(absurd.cost_micros(&u), u64::MAX);
}
