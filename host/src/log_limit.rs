//! Rate-limited log lines: an error that repeats on every request (a trapping
//! plugin, a descriptor limit) is logged once per interval with a count of the
//! lines it stood for, so a flood of bad requests cannot flood the log.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept before the table starts afresh (bounds memory under key churn).
const MAX_KEYS: usize = 1024;

/// Remembers, per key, when a line was last let through and how many were held back.
pub struct LogLimiter {
    interval: Duration,
    seen: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// A limiter letting one line per key through every `interval`; usable in a `static`.
    pub const fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a line for `key` should be logged now. `Some(n)`: log it, noting
    /// that `n` lines for this key were suppressed since the last one; `None`:
    /// suppress it.
    pub fn check(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                if seen.len() >= MAX_KEYS {
                    seen.clear();
                }
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs at `warn` through a [`LogLimiter`]: `warn_limited!(LIMITER, key, "...", args)`.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $key:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check($key) {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

/// Logs at `error` through a [`LogLimiter`]: `error_limited!(LIMITER, key, "...", args)`.
#[macro_export]
macro_rules! error_limited {
    ($limiter:expr, $key:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check($key) {
            if suppressed > 0 {
                tracing::error!(suppressed, $($arg)+);
            } else {
                tracing::error!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_line_per_interval_through_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.check("a"), Some(0));
        assert_eq!(limiter.check("a"), None);
        assert_eq!(limiter.check("a"), None);
        assert_eq!(limiter.check("b"), Some(0), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.check("a"), Some(2));
    }
}
