//! The closed set of probe failure classes.
//!
//! A class is a Prometheus label value and the `#<reason>` HAProxy shows after `down` (the agent
//! reply description ends up in `last_agt` / `agent_desc`), so the set is closed and every value is a
//! short static token.

use std::fmt;

/// Why a probe failed. `as_str()` is the label / `#reason` spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The backend refused the TCP connection (RST).
    Refused,
    /// The backend did not accept the TCP connection within the connect timeout.
    ConnectTimeout,
    /// Any other socket error while connecting (unreachable, no route, ...).
    ConnectError,
    /// The CONNECT request got a non-2xx status. Bucketed so the label set stays bounded.
    ConnectStatus(StatusBucket),
    /// TCP accepted, but no complete CONNECT response within the deadline (a black hole).
    ConnectTimeoutAfterAccept,
    /// The backend closed the connection before a complete CONNECT response.
    ConnectClosed,
    /// The CONNECT response was not HTTP, was too long, or carried early tunnel bytes.
    ConnectMalformed,
    /// The TLS handshake through the tunnel failed (certificate, protocol, reset).
    Tls,
    /// The TLS handshake through the tunnel did not finish within its deadline.
    TlsTimeout,
    /// The IP-echo request through the tunnel failed or timed out.
    ExitIpUnavailable,
    /// The IP-echo answer did not contain a parseable IP address.
    ExitIpInvalid,
    /// The exit IP equals the checker's own direct exit IP: traffic leaves from the node itself.
    ExitIpLeak,
}

/// A CONNECT status, kept exact for the codes that matter and bucketed otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusBucket(u16);

impl StatusBucket {
    /// An exact bucket, for constants in tests.
    #[cfg(test)]
    pub(crate) const fn new_const(code: u16) -> Self {
        StatusBucket(code)
    }

    /// Bucket a status code: common proxy answers stay exact, the rest collapse to `Nxx`.
    pub fn new(code: u16) -> Self {
        match code {
            400 | 403 | 404 | 405 | 407 | 408 | 429 | 500 | 501 | 502 | 503 | 504 => StatusBucket(code),
            100..=199 => StatusBucket(100),
            300..=399 => StatusBucket(300),
            400..=499 => StatusBucket(401),
            500..=599 => StatusBucket(599),
            _ => StatusBucket(0),
        }
    }

    fn as_str(self) -> &'static str {
        match self.0 {
            400 => "connect-status-400",
            403 => "connect-status-403",
            404 => "connect-status-404",
            405 => "connect-status-405",
            407 => "connect-status-407",
            408 => "connect-status-408",
            429 => "connect-status-429",
            500 => "connect-status-500",
            501 => "connect-status-501",
            502 => "connect-status-502",
            503 => "connect-status-503",
            504 => "connect-status-504",
            100 => "connect-status-1xx",
            300 => "connect-status-3xx",
            401 => "connect-status-4xx",
            599 => "connect-status-5xx",
            _ => "connect-status-other",
        }
    }
}

impl FailureClass {
    /// A CONNECT answered with `code` (not 2xx).
    pub fn connect_status(code: u16) -> Self {
        FailureClass::ConnectStatus(StatusBucket::new(code))
    }

    /// The label value and HAProxy `#reason` token.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Refused => "refused",
            FailureClass::ConnectTimeout => "connect-timeout",
            FailureClass::ConnectError => "connect-error",
            FailureClass::ConnectStatus(b) => b.as_str(),
            FailureClass::ConnectTimeoutAfterAccept => "connect-timeout-after-accept",
            FailureClass::ConnectClosed => "connect-closed",
            FailureClass::ConnectMalformed => "connect-malformed",
            FailureClass::Tls => "tls",
            FailureClass::TlsTimeout => "tls-timeout",
            FailureClass::ExitIpUnavailable => "exit-ip-unavailable",
            FailureClass::ExitIpInvalid => "exit-ip-invalid",
            FailureClass::ExitIpLeak => "exit-ip-leak",
        }
    }

    /// Whether the checker's own direct path to the target can explain this failure. Only these are
    /// cross-checked by the control probe; a refused or silent backend is always the backend's fault.
    pub fn may_be_target_side(self) -> bool {
        match self {
            FailureClass::ConnectStatus(b) => matches!(b.0, 502..=504 | 599 | 500),
            FailureClass::ConnectTimeoutAfterAccept | FailureClass::Tls | FailureClass::TlsTimeout => true,
            _ => false,
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_agent_safe() {
        let mut seen = std::collections::BTreeSet::new();
        for code in 0..1000u16 {
            seen.insert(FailureClass::connect_status(code).as_str());
        }
        assert!(seen.len() <= 17, "{seen:?}");
        assert_eq!(FailureClass::connect_status(503).as_str(), "connect-status-503");
        assert_eq!(FailureClass::connect_status(418).as_str(), "connect-status-4xx");
        // A reason goes after `#` on the agent line: it must never contain a separator or a line end.
        for s in seen {
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{s}");
        }
    }
}
