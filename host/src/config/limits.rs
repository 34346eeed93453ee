//! The client-side limits as configured (`header_timeout`, `idle_timeout`,
//! `body_timeout`, `body_min_rate`, `max_connections`); the accept loop
//! (`server::client_limits`) enforces them.

use std::time::Duration;

/// Upper bound of the `max_connections` derived from the descriptor limit.
pub const MAX_DERIVED_CONNECTIONS: usize = 10_000;

/// Descriptors kept back from the derived `max_connections` for the listener,
/// plugin files, logs and the like.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The client-side limits, from the top level of `llamagate.toml`. They are
/// read at start-up; a reload does not change them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Time from a request's first byte (or from accept) to its complete headers.
    pub header_timeout: Duration,
    /// Time a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// Time allowed for request bodies.
    pub body: BodyPace,
    /// Connections open at once, loopback headroom aside.
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(75),
            body: BodyPace {
                timeout: Duration::from_secs(30),
                min_rate: 64 << 10,
            },
            max_connections: default_max_connections(),
        }
    }
}

/// `max_connections` when none is configured: half of what the soft
/// `RLIMIT_NOFILE` leaves after [`RESERVED_DESCRIPTORS`] (a proxied request
/// can hold a backend connection too), at least 1 and at most
/// [`MAX_DERIVED_CONNECTIONS`].
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, Resource};
        match getrlimit(Resource::Nofile).current {
            Some(soft) => {
                let derived = soft.saturating_sub(RESERVED_DESCRIPTORS) / 2;
                (derived.min(MAX_DERIVED_CONNECTIONS as u64) as usize).max(1)
            }
            None => MAX_DERIVED_CONNECTIONS,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = RESERVED_DESCRIPTORS;
        MAX_DERIVED_CONNECTIONS
    }
}

/// How long a request body may take: `timeout` plus one second per
/// `min_rate` bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPace {
    /// `body_timeout`: the allowance before the first byte counts.
    pub timeout: Duration,
    /// `body_min_rate`, bytes per second (at least 1).
    pub min_rate: u64,
}

impl BodyPace {
    /// Time allowed for a body of which `received` bytes have arrived.
    pub fn allowance(&self, received: u64) -> Duration {
        let nanos = u128::from(received) * 1_000_000_000 / u128::from(self.min_rate.max(1));
        self.timeout
            .saturating_add(Duration::from_nanos(nanos.min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_cap_is_bounded() {
        let n = default_max_connections();
        assert!((1..=MAX_DERIVED_CONNECTIONS).contains(&n), "{n}");
    }
}
