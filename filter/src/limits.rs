//! The limit vocabulary shared by the configuration, the quota engine and the global
//! rate-limit client. Parsing lives in `config`; enforcement in `quota`.

/// What a rate limit counts. See SPEC "Counting" for which token classes each one sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// input + cache_read + cache_write + output
    Tokens,
    /// input + cache_read + cache_write
    InputTokens,
    /// output
    OutputTokens,
    /// one per request
    Requests,
    /// priced usage, counted in micro-dollars
    CostUsd,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Tokens => "tokens",
            LimitKind::InputTokens => "input_tokens",
            LimitKind::OutputTokens => "output_tokens",
            LimitKind::Requests => "requests",
            LimitKind::CostUsd => "cost_usd",
        }
    }
}

/// The length of a rate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
    /// Fixed windows: the calendar month in UTC. Sliding windows: 30 days.
    Month,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
            Per::Month => "month",
        }
    }

    /// Nominal length in milliseconds (a month is 30 days).
    pub fn millis(self) -> u64 {
        match self {
            Per::Second => 1_000,
            Per::Minute => 60_000,
            Per::Hour => 3_600_000,
            Per::Day => 86_400_000,
            Per::Month => 30 * 86_400_000,
        }
    }
}

/// How a window moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WindowKind {
    /// Sliding-window counter: the previous fixed window weighted by its remaining overlap.
    #[default]
    Sliding,
    /// Calendar-aligned in UTC (day at 00:00, month on the 1st).
    Fixed,
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    /// `amount` units of `kind` per window. For `CostUsd` the amount is in micro-dollars.
    Rate {
        kind: LimitKind,
        amount: u64,
        per: Per,
        window: WindowKind,
    },
    /// At most this many requests in flight at once.
    Concurrent(u32),
}

/// Normalised token usage of one response (SPEC "Counting").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
}

impl Usage {
    /// What a `tokens` limit counts.
    pub fn total(&self) -> u64 {
        self.input_side().saturating_add(self.output)
    }

    /// What an `input_tokens` limit counts.
    pub fn input_side(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }
}

/// USD per million tokens for each token class (SPEC `pricing`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl Price {
    /// Cost of `usage` in micro-dollars, rounded up so that a limit is never under-charged.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        // tokens × USD/Mtok = micro-USD exactly.
        let micros = usage.input as f64 * self.input
            + usage.output as f64 * self.output
            + usage.cache_write as f64 * self.cache_write
            + usage.cache_read as f64 * self.cache_read;
        if micros.is_finite() && micros > 0.0 {
            micros.ceil().min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
