//! A generated day of ledger events for seven servers: the data behind the tests and the sample
//! report in `docs/sample-report/`. Every time is relative to `end`, so the day always ends "now".
//!
//! - `egress/gw-01`: healthy all day;
//! - `egress/gw-02`: a flapper, quarantined six times (connect timeouts and 503s), restored each time;
//! - `egress/gw-03`: a two-hour TLS-failure quarantine healed by a rotation (drain, cut, rotated, restored);
//! - `egress/gw-04`: a scheduled rotation, never quarantined;
//! - `egress/gw-05`: a failed rotation, then a quarantine still open at the end;
//! - `egress-kr/kr-01`: quarantined since before the window, restored three hours into it;
//! - `egress-kr/kr-02`: an exit-IP change and a leak seen by the probes.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use egress_ledger::{Actor, Event, EventKind};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal IP")
}

/// The events of the day ending at `end` (and a few before it, that set the state at its start),
/// oldest first.
pub fn day_of_events(end: DateTime<Utc>) -> Vec<Event> {
    let start = end - TimeDelta::hours(24);
    let at = |h: i64, m: i64| start + TimeDelta::hours(h) + TimeDelta::minutes(m);
    let ev = |kind, actor, backend: &str, server: &str, t| Event::new(kind, actor, backend, server).at(t);
    use Actor::{Checker, Rotator};
    use EventKind::*;
    let mut v = Vec::new();

    // First sightings, two days back.
    let first = start - TimeDelta::hours(20);
    for (b, s, i) in [
        ("egress", "gw-01", "203.0.113.11"),
        ("egress", "gw-02", "203.0.113.12"),
        ("egress", "gw-03", "203.0.113.13"),
        ("egress", "gw-04", "203.0.113.14"),
        ("egress", "gw-05", "203.0.113.15"),
        ("egress-kr", "kr-01", "198.51.100.21"),
        ("egress-kr", "kr-02", "198.51.100.22"),
    ] {
        v.push(ev(ExitIpObserved, Checker, b, s, first).new_ip(ip(i)));
    }

    // kr-01: quarantined two hours before the window, restored at 03:00 into it.
    v.push(
        ev(
            Quarantined,
            Checker,
            "egress-kr",
            "kr-01",
            start - TimeDelta::hours(2),
        )
        .reason("exit-ip-mismatch"),
    );
    v.push(ev(Restored, Checker, "egress-kr", "kr-01", at(3, 0)));

    // gw-02 flaps.
    for (h, m, len, reason) in [
        (1, 10, 4, "connect-timeout"),
        (4, 40, 9, "connect-status-503"),
        (7, 5, 3, "connect-timeout"),
        (11, 30, 22, "connect-status-503"),
        (15, 50, 6, "connect-timeout"),
        (20, 15, 12, "connect-timeout"),
    ] {
        v.push(ev(Quarantined, Checker, "egress", "gw-02", at(h, m)).reason(reason));
        v.push(ev(Restored, Checker, "egress", "gw-02", at(h, m + len)));
    }

    // gw-03: a long quarantine healed by a rotation.
    v.push(ev(Quarantined, Checker, "egress", "gw-03", at(9, 0)).reason("tls-failure"));
    v.push(ev(DrainStarted, Rotator, "egress", "gw-03", at(11, 0)).reason("quarantined too long"));
    v.push(ev(Drained, Rotator, "egress", "gw-03", at(11, 2)));
    v.push(ev(SessionsCut, Rotator, "egress", "gw-03", at(11, 2)));
    v.push(
        ev(Rotated, Rotator, "egress", "gw-03", at(11, 6))
            .reason("quarantined too long")
            .old_ip(ip("203.0.113.13"))
            .new_ip(ip("203.0.113.113")),
    );
    v.push(ev(Restored, Checker, "egress", "gw-03", at(11, 7)));

    // gw-04: a scheduled rotation.
    v.push(ev(DrainStarted, Rotator, "egress", "gw-04", at(5, 0)).reason("scheduled"));
    v.push(ev(Drained, Rotator, "egress", "gw-04", at(5, 25)));
    v.push(
        ev(Rotated, Rotator, "egress", "gw-04", at(5, 31))
            .reason("scheduled")
            .old_ip(ip("203.0.113.14"))
            .new_ip(ip("198.51.100.24")),
    );

    // gw-05: a failed rotation, then an open quarantine.
    v.push(ev(DrainStarted, Rotator, "egress", "gw-05", at(13, 0)).reason("scheduled"));
    v.push(ev(Drained, Rotator, "egress", "gw-05", at(13, 20)));
    v.push(ev(RotationFailed, Rotator, "egress", "gw-05", at(13, 35)).reason("no new exit IP within 300s"));
    v.push(ev(Quarantined, Checker, "egress", "gw-05", at(19, 0)).reason("connect-refused"));

    // kr-02: the probes see the exit IP move, and leak once.
    v.push(
        ev(ExitIpChanged, Checker, "egress-kr", "kr-02", at(8, 20))
            .old_ip(ip("198.51.100.22"))
            .new_ip(ip("198.51.100.122")),
    );
    v.push(ev(ExitIpLeak, Checker, "egress-kr", "kr-02", at(16, 45)).new_ip(ip("192.0.2.99")));
    v.push(
        ev(ExitIpChanged, Checker, "egress-kr", "kr-02", at(16, 46))
            .old_ip(ip("192.0.2.99"))
            .new_ip(ip("198.51.100.122")),
    );

    v.sort_by_key(|e| e.at);
    v
}
