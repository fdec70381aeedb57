//! Limits on what one client can cause through the device API's unary calls: a rate per user
//! over every authenticated call (Presence, History, Inbox, CreateGroup, ChangeMembers,
//! LinkDevice, ...), a rate per remote address for Register (which has no user yet), and the
//! sizes of lists and names a call may carry, checked before anything is read or replicated.
//! Sends have their own per-user rate (the sequencer's) and device streams their own bounds
//! (`session.rs`). A call over a rate is RESOURCE_EXHAUSTED and counted in
//! `chatd_calls_rate_limited_total{call}`.

use std::net::IpAddr;
use std::num::NonZeroU32;

use chat_model::ids::UserId;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

/// Most handles one call may name (Presence, CreateGroup, ChangeMembers).
pub const MAX_HANDLES_PER_CALL: usize = 1024;
/// Longest group name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest request id (names a group for retries), in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The rates (see `GatewayConfig`).
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub calls_per_second: u32,
    pub call_burst: u32,
    pub registers_per_second: u32,
    pub register_burst: u32,
}

/// The gateway's rate limiters.
pub struct CallLimits {
    per_user: DefaultKeyedRateLimiter<u64>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    rates: Rates,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"))
}

impl CallLimits {
    pub fn new(rates: Rates) -> CallLimits {
        CallLimits {
            per_user: RateLimiter::keyed(quota(rates.calls_per_second, rates.call_burst)),
            per_address: RateLimiter::keyed(quota(
                rates.registers_per_second,
                rates.register_burst,
            )),
            rates,
        }
    }

    /// One authenticated call of `user`, or RESOURCE_EXHAUSTED.
    pub fn user_call(&self, user: UserId, call: &'static str) -> Result<(), Status> {
        if self.per_user.check_key(&user.0).is_ok() {
            return Ok(());
        }
        metrics::counter!("chatd_calls_rate_limited_total", "call" => call).increment(1);
        Err(Status::resource_exhausted(format!(
            "user {user} is calling faster than {} calls/s; slow down",
            self.rates.calls_per_second
        )))
    }

    /// One Register from `address` (unknown: not limited by address), or RESOURCE_EXHAUSTED.
    pub fn register(&self, address: Option<IpAddr>) -> Result<(), Status> {
        let Some(address) = address else {
            return Ok(());
        };
        if self.per_address.check_key(&address).is_ok() {
            return Ok(());
        }
        metrics::counter!("chatd_calls_rate_limited_total", "call" => "Register").increment(1);
        Err(Status::resource_exhausted(format!(
            "{address} is registering faster than {} accounts/s",
            self.rates.registers_per_second
        )))
    }

    /// Forget idle keys (called now and then, so the maps do not grow with every user seen).
    pub fn shrink(&self) {
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

/// A list of at most `max` items, or INVALID_ARGUMENT naming it.
pub fn check_len(what: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::invalid_argument(format!(
            "{what}: {len} items, at most {max} allowed"
        )));
    }
    Ok(())
}

/// A text of at most `max` bytes, or INVALID_ARGUMENT naming it.
pub fn check_bytes(what: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what}: {} bytes, at most {max} allowed",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_rate_is_refused_and_others_are_not() {
        let limits = CallLimits::new(Rates {
            calls_per_second: 1,
            call_burst: 3,
            registers_per_second: 1,
            register_burst: 2,
        });
        let (alice, bob) = (UserId(1), UserId(2));
        for _ in 0..3 {
            limits.user_call(alice, "History").unwrap();
        }
        let err = limits.user_call(alice, "History").unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        limits.user_call(bob, "History").unwrap();

        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        limits.register(Some(ip)).unwrap();
        limits.register(Some(ip)).unwrap();
        assert!(limits.register(Some(ip)).is_err());
        limits.register(Some("10.0.0.8".parse().unwrap())).unwrap();
    }

    #[test]
    fn oversize_lists_and_names_are_invalid_arguments() {
        assert!(check_len("member_handles", 1025, MAX_HANDLES_PER_CALL).is_err());
        check_len("member_handles", 1024, MAX_HANDLES_PER_CALL).unwrap();
        let err = check_bytes("name", &"x".repeat(257), MAX_NAME_BYTES).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("257 bytes"), "{err}");
    }
}
