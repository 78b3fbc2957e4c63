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

/// How messages name a limit: `100000 tokens per minute`, `0.015 USD per day`,
/// `4 concurrent requests`. A cost shows every decimal it has (at least two), so a 429 names
/// the budget that refused it and never a rounded one.
impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Limit::Rate {
                kind: LimitKind::CostUsd,
                amount,
                per,
                ..
            } => {
                // `amount` is in micro-dollars: six decimals, trailing zeros beyond two dropped.
                let micros = format!("{:06}", amount % 1_000_000);
                let decimals = micros.trim_end_matches('0').len().max(2);
                let fraction = micros.get(..decimals).unwrap_or("");
                write!(
                    f,
                    "{}.{fraction} USD per {}",
                    amount / 1_000_000,
                    per.as_str()
                )
            }
            Limit::Rate {
                kind, amount, per, ..
            } => write!(f, "{amount} {} per {}", kind.as_str(), per.as_str()),
            Limit::Concurrent(n) => write!(f, "{n} concurrent requests"),
        }
    }
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
    /// Exact: tokens × USD/Mtok is micro-USD, and a price is a whole number of pico-USD per
    /// token (any price with at most six decimals), so the sum is taken in integers. With
    /// sane counts (each ≤ 10^8, SPEC "Usage numbers are sane") it can only saturate for a
    /// price above about 10^10 USD per million tokens.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let pico = [
            (usage.input, self.input),
            (usage.output, self.output),
            (usage.cache_write, self.cache_write),
            (usage.cache_read, self.cache_read),
        ]
        .into_iter()
        .map(|(tokens, price)| u128::from(tokens).saturating_mul(u128::from(pico_per_token(price))))
        .fold(0u128, u128::saturating_add);
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// USD per million tokens as pico-USD per token (`as` maps a negative or NaN price to 0 and
/// saturates an absurd one).
fn pico_per_token(usd_per_mtok: f64) -> u64 {
    (usd_per_mtok * 1e6).round() as u64
}

#[cfg(test)]
mod tests;
