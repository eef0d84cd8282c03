//! Value types every layer shares: weights, upstream addresses, host patterns, arm roles,
//! service states and status classes. A leaf: it imports nothing of the crate.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// Canary weight in thousandths of a percent (0..=100_000), so 0.001 % steps are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u32);

impl Weight {
    /// The resolution: units per percent.
    pub const UNITS_PER_PERCENT: u32 = 1_000;
    /// 100 %.
    pub const FULL: Weight = Weight(100 * Self::UNITS_PER_PERCENT);
    /// 0 %.
    pub const ZERO: Weight = Weight(0);

    /// From a percentage; refuses NaN, infinities and values outside 0..=100.
    pub fn from_percent(p: f64) -> Result<Weight, String> {
        if !p.is_finite() || !(0.0..=100.0).contains(&p) {
            return Err(format!("must be between 0 and 100 (got {p})"));
        }
        Ok(Weight((p * Self::UNITS_PER_PERCENT as f64).round() as u32))
    }

    /// The weight as a percentage.
    pub fn percent(self) -> f64 {
        self.0 as f64 / Self::UNITS_PER_PERCENT as f64
    }

    /// Raw units (thousandths of a percent).
    pub fn units(self) -> u32 {
        self.0
    }

    /// Whether no traffic goes to the canary by weight.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl serde::Serialize for Weight {
    /// As a percentage.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

impl<'de> serde::Deserialize<'de> for Weight {
    /// From a percentage, 0..=100.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Weight, D::Error> {
        let p = f64::deserialize(d)?;
        Weight::from_percent(p).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

/// An upstream as written (`host:port`) and as resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamAddr {
    /// What the config or the API said.
    pub spec: String,
    /// The address it resolved to when the config was loaded (never resolved per request).
    pub addr: SocketAddr,
}

impl UpstreamAddr {
    /// Checks that `spec` is `host:port` (an IP literal or a name) without resolving it;
    /// returns the literal address when it is one.
    pub fn check(spec: &str) -> Result<Option<SocketAddr>, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("is empty (expected host:port)".into());
        }
        if spec.contains("://") || spec.contains('/') {
            return Err(format!(
                "'{spec}' must be host:port, without a scheme or path"
            ));
        }
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return Ok(Some(addr));
        }
        let (host, port) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("'{spec}' has no port (expected host:port)"))?;
        port.parse::<u16>()
            .map_err(|_| format!("'{spec}' has an invalid port"))?;
        if host.is_empty() || host.contains(['[', ']', ' ']) {
            return Err(format!("'{spec}' has no valid host (expected host:port)"));
        }
        Ok(None)
    }

    /// Checks `host:port` without resolving it: a name keeps the unspecified address
    /// (`0.0.0.0:port`), for a check that must not depend on the machine's DNS.
    pub fn unresolved(spec: &str) -> Result<UpstreamAddr, String> {
        let trimmed = spec.trim();
        let addr = match Self::check(trimmed)? {
            Some(addr) => addr,
            None => {
                let port = trimmed
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(0);
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        };
        Ok(UpstreamAddr {
            spec: trimmed.to_string(),
            addr,
        })
    }

    /// Checks `host:port` and resolves it; a name is looked up once, here (at load, at
    /// start, or when the API sets a canary), never per request.
    pub fn parse(spec: &str) -> Result<UpstreamAddr, String> {
        let trimmed = spec.trim();
        if let Some(addr) = Self::check(trimmed)? {
            return Ok(UpstreamAddr {
                spec: trimmed.to_string(),
                addr,
            });
        }
        let spec = trimmed;
        let addr = spec
            .to_socket_addrs()
            .map_err(|e| format!("'{spec}' does not resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("'{spec}' resolves to no address"))?;
        Ok(UpstreamAddr {
            spec: spec.to_string(),
            addr,
        })
    }
}

/// A Host pattern: an exact name or a `*.suffix` wildcard, lowercase, without port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `web.example.com`
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com` (stored as `.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses `name` or `*.suffix` (lowercased; no port).
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim().to_ascii_lowercase();
        let (wild, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, t.clone()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "'{text}' is not a host name (expected e.g. \"web.example.com\" or \"*.example.com\", no port)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Which version of a service an arm serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmRole {
    /// The version in production.
    Stable,
    /// The version on trial.
    Canary,
}

impl ArmRole {
    /// The metric label and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            ArmRole::Stable => "stable",
            ArmRole::Canary => "canary",
        }
    }

    /// Parses a tester header value (`stable` / `canary`, any case).
    pub fn parse(value: &[u8]) -> Option<ArmRole> {
        if value.eq_ignore_ascii_case(b"canary") {
            Some(ArmRole::Canary)
        } else if value.eq_ignore_ascii_case(b"stable") {
            Some(ArmRole::Stable)
        } else {
            None
        }
    }
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// No canary: everything goes to stable.
    Stable,
    /// A canary receives its weight.
    Canary,
    /// The canary was cut back and is held at 0 until a new canary is set.
    RolledBack,
}

impl ServiceState {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Stable => "stable",
            ServiceState::Canary => "canary",
            ServiceState::RolledBack => "rolled_back",
        }
    }
}

/// Status class of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusClass {
    /// 1xx (a 101 upgrade, say).
    Informational,
    /// 2xx
    Success,
    /// 3xx
    Redirect,
    /// 4xx
    ClientError,
    /// 5xx, including the gate's own 502/504 for an upstream that failed.
    ServerError,
    /// No response header was written (client gone, or the gate gave up before answering).
    NoResponse,
}

impl StatusClass {
    /// All classes, in label order.
    pub const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::NoResponse,
    ];

    /// The class of an HTTP status code; `None` means no response was written.
    pub fn of(status: Option<u16>) -> StatusClass {
        match status {
            Some(100..=199) => StatusClass::Informational,
            Some(200..=299) => StatusClass::Success,
            Some(300..=399) => StatusClass::Redirect,
            Some(400..=499) => StatusClass::ClientError,
            Some(_) => StatusClass::ServerError,
            None => StatusClass::NoResponse,
        }
    }

    /// The Prometheus `code_class` label.
    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::NoResponse => "none",
        }
    }

    /// Whether this counts against a version: a 5xx or no answer at all.
    pub fn is_failure(self) -> bool {
        matches!(self, StatusClass::ServerError | StatusClass::NoResponse)
    }

    /// Position in [`StatusClass::ALL`].
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// FNV-1a, 64 bits: a stable fingerprint (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
