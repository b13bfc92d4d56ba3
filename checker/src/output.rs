//! Rendering `who` and `history` answers (a table for people, JSON for scripts) and parsing the CLI's
//! times and durations with clear errors.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;

use egress_common::client_hash::{ClientHash, HashKey};

use egress_ledger::{Event, LedgerError, WhoClientRow, WhoIpRow};

/// The keyed hash of `who --client <ip-or-identity>`: an IP address is hashed in its canonical text
/// form (`IpAddr`'s Display, as the agent hashes HAProxy's `src`), anything else as given.
pub fn client_hash_for(key: &HashKey, ip_or_identity: &str) -> ClientHash {
    let s = ip_or_identity.trim();
    match s.parse::<IpAddr>() {
        Ok(ip) => key.hash(ip.to_string().as_bytes()),
        Err(_) => key.hash(s.as_bytes()),
    }
}

/// Parse an RFC 3339 instant (`2026-11-20T03:00:00Z`, `2026-11-20T04:00:00+01:00`) or `now`.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, LedgerError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            LedgerError::InvalidInput(format!(
                "bad time {s:?}: {e}; expected RFC 3339 such as 2026-11-20T03:00:00Z"
            ))
        })
}

/// Parse a duration such as `5m`, `24h`, `1h 30m`, `90s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, LedgerError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| LedgerError::InvalidInput(format!("bad duration {s:?}: {e}; expected e.g. 5m, 24h, 7d")))
}

/// `--since`: a duration back from `now` (`24h`) or an instant.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, LedgerError> {
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        let d = TimeDelta::from_std(d)
            .map_err(|_| LedgerError::InvalidInput(format!("duration {s:?} is too large")))?;
        return now
            .checked_sub_signed(d)
            .ok_or_else(|| LedgerError::InvalidInput(format!("duration {s:?} is too large")));
    }
    parse_instant(s).map_err(|_| {
        LedgerError::InvalidInput(format!(
            "bad --since {s:?}: expected a duration (24h, 30m) or an RFC 3339 time (2026-11-20T03:00:00Z)"
        ))
    })
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A plain text table: a header, a rule, left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &mut rule.iter().map(String::as_str));
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// `who --ip` as a table; an empty answer says so.
pub fn who_ip_table(rows: &[WhoIpRow]) -> String {
    if rows.is_empty() {
        return "no clients used that exit IP in that range\n".to_owned();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.client_hash.to_string(),
                format!("{}/{}", r.backend, r.server),
                r.exit_ip.to_string(),
                ts(r.first_seen),
                ts(r.last_seen),
                r.requests.to_string(),
                if r.agent_ip_differs {
                    "differs".into()
                } else if r.agent_ip_unknown {
                    "unknown".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(
        &[
            "CLIENT",
            "SERVER",
            "EXIT IP",
            "FIRST SEEN",
            "LAST SEEN",
            "REQUESTS",
            "AGENT IP",
        ],
        &body,
    )
}

/// `who --client` as a table.
pub fn who_client_table(rows: &[WhoClientRow]) -> String {
    if rows.is_empty() {
        return "that client has no attribution in that range\n".to_owned();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}", r.backend, r.server),
                r.exit_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                ts(r.first_seen),
                ts(r.last_seen),
                r.requests.to_string(),
            ]
        })
        .collect();
    table(
        &["SERVER", "EXIT IP", "FIRST SEEN", "LAST SEEN", "REQUESTS"],
        &body,
    )
}

/// `history` as a table.
pub fn history_table(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events in that range\n".to_owned();
    }
    let body: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let ips = match (e.old_ip, e.new_ip) {
                (Some(o), Some(n)) => format!("{o} -> {n}"),
                (None, Some(n)) => n.to_string(),
                (Some(o), None) => format!("{o} ->"),
                (None, None) => String::new(),
            };
            vec![
                ts(e.at),
                format!("{}/{}", e.backend, e.server),
                e.kind.to_string(),
                e.actor.to_string(),
                ips,
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["TIME", "SERVER", "EVENT", "ACTOR", "EXIT IP", "REASON"], &body)
}

/// Any answer as pretty JSON (an array of objects; times in RFC 3339, client hashes as 16 hex).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, LedgerError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| LedgerError::InvalidInput(format!("cannot render JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ips_hash_in_canonical_form() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(client_hash_for(&key, "2001:DB8:0::1"), key.hash(b"2001:db8::1"));
        assert_eq!(client_hash_for(&key, " 10.0.0.1 "), key.hash(b"10.0.0.1"));
        assert_eq!(client_hash_for(&key, "tenant-42"), key.hash(b"tenant-42"));
    }

    #[test]
    fn times_and_durations_parse_or_explain() {
        let t = parse_instant("2026-11-20T03:00:00Z").unwrap();
        assert_eq!(t, parse_instant("2026-11-20T04:00:00+01:00").unwrap());
        let e = parse_instant("2026-11-20 03:00").unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .to_string()
                .contains("bad duration")
        );
        assert_eq!(parse_since("24h", t).unwrap(), t - TimeDelta::hours(24));
        assert_eq!(
            parse_since("2026-11-19T00:00:00Z", t).unwrap(),
            parse_instant("2026-11-19T00:00:00Z").unwrap()
        );
        assert!(parse_since("yesterday", t).is_err());
    }

    #[test]
    fn tables_align_and_json_uses_hex_hashes() {
        let t = parse_instant("2026-11-20T03:00:00Z").unwrap();
        let rows = vec![WhoIpRow {
            client_hash: ClientHash(0xdead_beef),
            backend: "egress".into(),
            server: "s1".into(),
            exit_ip: "203.0.113.7".parse().unwrap(),
            first_seen: t,
            last_seen: t,
            requests: 3,
            agent_ip_differs: false,
            agent_ip_unknown: false,
        }];
        let text = who_ip_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("00000000deadbeef  egress/s1  203.0.113.7  2026-11-20T03:00:00Z"));
        assert_eq!(lines[0].find("SERVER"), lines[2].find("egress/s1"));
        let json = to_json(&rows).unwrap();
        assert!(json.contains("\"client_hash\": \"00000000deadbeef\""), "{json}");
        assert!(
            json.contains("\"first_seen\": \"2026-11-20T03:00:00Z\""),
            "{json}"
        );
        assert!(who_ip_table(&[]).contains("no clients"));
    }
}
