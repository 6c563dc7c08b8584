//! Which admission policy runs: [`PolicyKind`] (`--scheduler aggressive|conservative|
//! past-future`) and [`PolicyConfig`], which builds it.
//!
//! Owns: the names, the defaults and the construction of each policy. Kept apart from the
//! `Policy` interface so the policies depend on the interface and this on them, not in a cycle.

use std::fmt;
use std::str::FromStr;

use crate::aggressive::Aggressive;
use crate::conservative::Conservative;
use crate::error::{Result, SchedulerError};
use crate::past_future::{PastFuture, PastFutureConfig};
use crate::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyKind {
    Aggressive,
    Conservative,
    #[default]
    PastFuture,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] =
        [PolicyKind::Aggressive, PolicyKind::Conservative, PolicyKind::PastFuture];

    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::Aggressive => "aggressive",
            PolicyKind::Conservative => "conservative",
            PolicyKind::PastFuture => "past-future",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "aggressive" => Ok(PolicyKind::Aggressive),
            "conservative" => Ok(PolicyKind::Conservative),
            "past-future" | "pastfuture" => Ok(PolicyKind::PastFuture),
            other => Err(SchedulerError::InvalidConfig(format!(
                "unknown scheduler '{other}' (expected aggressive, conservative or past-future)"
            ))),
        }
    }
}

/// Everything needed to build any policy; fields a policy does not use are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    /// Safety reserve as a fraction of capacity (the paper's 5%).
    pub reserve: f64,
    pub past_future: PastFutureConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { kind: PolicyKind::PastFuture, reserve: 0.05, past_future: PastFutureConfig::default() }
    }
}

impl PolicyConfig {
    pub fn build(&self) -> Result<Box<dyn Policy>> {
        if !(0.0..1.0).contains(&self.reserve) {
            return Err(SchedulerError::InvalidConfig(format!(
                "reserve must be in [0, 1), got {}",
                self.reserve
            )));
        }
        Ok(match self.kind {
            PolicyKind::Aggressive => Box::new(Aggressive::new(self.reserve)),
            PolicyKind::Conservative => Box::new(Conservative::new(self.reserve)),
            PolicyKind::PastFuture => Box::new(PastFuture::new(self.reserve, &self.past_future)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip_through_the_cli_spelling() {
        for k in PolicyKind::ALL {
            assert_eq!(k.as_str().parse::<PolicyKind>().unwrap(), k);
            let built = PolicyConfig { kind: k, ..Default::default() }.build().unwrap();
            assert_eq!(built.name(), k.as_str());
        }
        assert_eq!("past_future".parse::<PolicyKind>().unwrap(), PolicyKind::PastFuture);
        assert!("fifo".parse::<PolicyKind>().is_err());
        assert_eq!(PolicyKind::default(), PolicyKind::PastFuture);
    }

    #[test]
    fn out_of_range_reserve_is_an_error() {
        assert!(PolicyConfig { reserve: 1.0, ..Default::default() }.build().is_err());
        assert!(PolicyConfig { reserve: -0.1, ..Default::default() }.build().is_err());
    }
}
