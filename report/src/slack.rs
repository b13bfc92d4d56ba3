//! The Slack message (Block Kit, within Slack's limits) and its delivery to an incoming webhook:
//! retries with backoff on 429 (honouring `Retry-After`) and 5xx, bounded in attempts and time,
//! rate-limited to one attempt per second (Slack's documented webhook rate).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use rand::Rng as _;
use serde_json::{Value, json};

use crate::html::{human_duration, percent};
use crate::model::{Report, State};
use egress_http::{Client, Proxy, WebhookUrl};

/// Block Kit limits (api.slack.com/reference/block-kit): 50 blocks per message, 3000 characters per
/// section text, 150 per header text, 10 fields per section and 2000 characters per field.
pub const MAX_BLOCKS: usize = 50;
/// Section text limit.
pub const MAX_SECTION_TEXT: usize = 3000;
/// Header text limit.
pub const MAX_HEADER_TEXT: usize = 150;
/// Section field limit.
pub const MAX_FIELD_TEXT: usize = 2000;
/// Fields per section.
pub const MAX_FIELDS: usize = 10;
/// The fallback `text` (notifications); Slack truncates messages past 40 000 characters.
pub const MAX_FALLBACK_TEXT: usize = 3000;

/// Cut `s` to `max` characters, ending with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escape text for Slack mrkdwn (`&`, `<`, `>` are control characters there).
pub fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Lines joined under a limit; what does not fit becomes "… and N more".
fn bounded_lines(lines: &[String], max: usize) -> String {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let more = format!("\n… and {} more", lines.len() - i);
        if out.chars().count() + l.chars().count() + 1 + more.chars().count() > max {
            out.push_str(&more);
            return cut(&out, max);
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(l);
    }
    cut(&out, max)
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&text, MAX_SECTION_TEXT)}})
}

/// The message: a header, the pool figures, open quarantines, flappers, rotations, and a context line.
pub fn message(report: &Report, link: Option<&str>) -> Value {
    let pool = &report.pool;
    let esc = |s: &str| mrkdwn_escape(s);
    let header = cut(&format!("Egress report: {}", report.title), MAX_HEADER_TEXT);
    let quarantined_now = pool.state_now.get(&State::Quarantined).copied().unwrap_or(0);
    let fields: Vec<Value> = [
        format!("*Availability*\n{}", percent(pool.availability)),
        format!("*Servers*\n{}", pool.servers),
        format!("*Quarantined now*\n{quarantined_now}"),
        format!("*Quarantines*\n{}", pool.quarantines),
        format!("*Recoveries*\n{}", pool.recoveries),
        format!(
            "*Rotations*\n{} ({} failed)",
            pool.rotations, pool.rotation_failures
        ),
    ]
    .into_iter()
    .take(MAX_FIELDS)
    .map(|t| json!({"type": "mrkdwn", "text": cut(&t, MAX_FIELD_TEXT)}))
    .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": false}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !pool.open_quarantines.is_empty() {
        let lines: Vec<String> = pool
            .open_quarantines
            .iter()
            .map(|q| {
                format!(
                    "• `{}/{}` for {}{}",
                    esc(&q.backend),
                    esc(&q.server),
                    human_duration(q.seconds),
                    q.reason
                        .as_deref()
                        .map(|r| format!(" ({})", esc(r)))
                        .unwrap_or_default()
                )
            })
            .collect();
        blocks.push(section(format!(
            "*:red_circle: Open quarantines*\n{}",
            bounded_lines(&lines, MAX_SECTION_TEXT - 40)
        )));
    }
    if !pool.most_flapping.is_empty() {
        let lines: Vec<String> = pool
            .most_flapping
            .iter()
            .map(|f| {
                format!(
                    "• `{}/{}`: {} quarantines",
                    esc(&f.backend),
                    esc(&f.server),
                    f.quarantines
                )
            })
            .collect();
        blocks.push(section(format!(
            "*Flapped most*\n{}",
            bounded_lines(&lines, MAX_SECTION_TEXT - 40)
        )));
    }
    let mut rotations: Vec<(chrono::DateTime<chrono::Utc>, String)> = Vec::new();
    for s in &report.servers {
        for r in &s.rotations {
            rotations.push((
                r.at,
                format!(
                    "• {} `{}/{}` {} → {}",
                    r.at.format("%b %d %H:%M"),
                    esc(&s.backend),
                    esc(&s.server),
                    esc(r.old_ip.as_deref().unwrap_or("?")),
                    esc(r.new_ip.as_deref().unwrap_or("?"))
                ),
            ));
        }
        for f in &s.rotation_failures {
            rotations.push((
                f.at,
                format!(
                    "• {} `{}/{}` *failed*{}",
                    f.at.format("%b %d %H:%M"),
                    esc(&s.backend),
                    esc(&s.server),
                    f.reason
                        .as_deref()
                        .map(|r| format!(": {}", esc(r)))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    if !rotations.is_empty() {
        rotations.sort();
        let lines: Vec<String> = rotations.into_iter().map(|(_, l)| l).collect();
        blocks.push(section(format!(
            "*Rotations (UTC)*\n{}",
            bounded_lines(&lines, MAX_SECTION_TEXT - 40)
        )));
    }
    let mut context = format!(
        "Window {} → {} UTC · generated {}",
        report.window.since.format("%Y-%m-%d %H:%M"),
        report.window.until.format("%Y-%m-%d %H:%M"),
        report.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(link) = link {
        context.push_str(&format!(" · <{}|full report>", link.replace(['<', '>', '|'], "")));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&context, MAX_FIELD_TEXT)}]}),
    );
    blocks.truncate(MAX_BLOCKS);
    let text = cut(
        &format!(
            "Egress report {}: availability {}, {} quarantined now, {} quarantines, {} rotations",
            report.title,
            percent(pool.availability),
            quarantined_now,
            pool.quarantines,
            pool.rotations
        ),
        MAX_FALLBACK_TEXT,
    );
    json!({"text": text, "blocks": blocks})
}

/// Delivery policy.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Attempts in all (first try included).
    pub max_attempts: u32,
    /// Total time budget for all attempts and waits.
    pub total_timeout: Duration,
    /// Deadline of one attempt: connect (through the proxy, if any), TLS, request and answer.
    pub step_timeout: Duration,
    /// First backoff after a 5xx or a network error; doubles each time, with ±50 % jitter.
    pub backoff: Duration,
    /// Longest wait honoured for `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_attempts: 5,
            total_timeout: Duration::from_secs(60),
            step_timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Why the message was not delivered (the text never holds the webhook URL).
#[derive(Debug, thiserror::Error)]
#[error("Slack webhook {target}: {why}")]
pub struct SlackError {
    target: String,
    why: String,
}

/// Post `message`, retrying per `policy`, trusting the webpki roots, through the proxy the
/// environment names (`HTTPS_PROXY`, `NO_PROXY`: see egress-http). Returns the attempts made.
pub async fn post(url: &WebhookUrl, message: &Value, policy: &Delivery) -> Result<u32, SlackError> {
    let client = Client::new(Proxy::FromEnv).map_err(|e| SlackError {
        target: url.redacted(),
        why: e.to_string(),
    })?;
    post_with(&client, url, message, policy).await
}

/// [`post`] with a given client (tests trust their own CA).
pub async fn post_with(
    client: &Client,
    url: &WebhookUrl,
    message: &Value,
    policy: &Delivery,
) -> Result<u32, SlackError> {
    let fail = |why: String| SlackError {
        target: url.redacted(),
        why,
    };
    let body = serde_json::to_vec(message).map_err(|e| fail(format!("cannot encode the message: {e}")))?;
    let limiter = RateLimiter::direct(Quota::per_second(NonZeroU32::MIN));
    let started = Instant::now();
    let deadline = started + policy.total_timeout;
    let mut backoff = policy.backoff;
    let mut last = String::from("no attempt made");
    for attempt in 1..=policy.max_attempts.max(1) {
        limiter.until_ready().await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let step = policy.step_timeout.min(remaining);
        let wait = match client.post_json(url, &body, step).await {
            Ok(r) if (200..300).contains(&r.status) => {
                tracing::info!(attempt, status = r.status, "Slack message posted");
                return Ok(attempt);
            }
            Ok(r) if r.status == 429 => {
                last = format!("HTTP 429 rate limited (Retry-After {:?})", r.retry_after);
                let secs = r.retry_after.unwrap_or(1);
                let wait = Duration::from_secs(secs);
                if wait > policy.max_retry_after {
                    return Err(fail(format!(
                        "HTTP 429 with Retry-After {secs}s, longer than the {:?} this run waits",
                        policy.max_retry_after
                    )));
                }
                wait
            }
            Ok(r) if r.status >= 500 => {
                last = format!("HTTP {} {}", r.status, r.body_start);
                jittered(&mut backoff)
            }
            Ok(r) => {
                // 4xx other than 429: the URL, the token or the payload is wrong; retrying cannot help.
                return Err(fail(format!(
                    "HTTP {} {} (not retried: check the webhook URL and the channel)",
                    r.status, r.body_start
                )));
            }
            Err(e) => {
                last = e.to_string();
                jittered(&mut backoff)
            }
        };
        tracing::warn!(attempt, error = %last, wait_ms = wait.as_millis() as u64, "Slack webhook attempt failed");
        if attempt == policy.max_attempts {
            break;
        }
        if Instant::now() + wait >= deadline {
            return Err(fail(format!(
                "gave up after {attempt} attempts in {:.1}s (the next wait would pass the {:?} budget); last: {last}",
                started.elapsed().as_secs_f64(),
                policy.total_timeout
            )));
        }
        tokio::time::sleep(wait).await;
    }
    Err(fail(format!(
        "gave up after {} attempts in {:.1}s; last: {last}",
        policy.max_attempts,
        started.elapsed().as_secs_f64()
    )))
}

/// The current backoff with ±50 % jitter; doubles the base for next time (capped at 16×1 s-ish).
fn jittered(base: &mut Duration) -> Duration {
    let b = *base;
    *base = (b * 2).min(Duration::from_secs(16));
    let factor = rand::rng().random_range(0.5..1.5);
    b.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeDelta, Utc};
    use egress_ledger::{Actor, Event, EventKind};

    use super::*;
    use crate::model;

    fn text_len(v: &Value) -> usize {
        v.as_str().map_or(0, |s| s.chars().count())
    }

    #[test]
    fn a_huge_pool_still_fits_slack_limits() {
        let end = Utc::now();
        let since = end - TimeDelta::hours(24);
        let mut events = Vec::new();
        for i in 0..600 {
            let server = format!("server-with-a-rather-long-name-{i:04}-{}", "x".repeat(100));
            let at = since + TimeDelta::minutes(i);
            events.push(
                Event::new(EventKind::Quarantined, Actor::Checker, "egress", &server)
                    .at(at)
                    .reason("connect-timeout"),
            );
            events.push(
                Event::new(EventKind::Restored, Actor::Checker, "egress", &server)
                    .at(at + TimeDelta::seconds(5)),
            );
            events.push(
                Event::new(EventKind::Quarantined, Actor::Checker, "egress", &server)
                    .at(at + TimeDelta::seconds(9)),
            );
            events.push(
                Event::new(EventKind::Rotated, Actor::Rotator, "egress", &server)
                    .at(at + TimeDelta::seconds(20))
                    .old_ip("203.0.113.1".parse().unwrap())
                    .new_ip("203.0.113.2".parse().unwrap()),
            );
        }
        let report = model::build(&"t".repeat(500), since, end, &[], &events, false);
        let msg = message(&report, Some("https://reports.example/egress/"));
        let blocks = msg["blocks"].as_array().unwrap();
        assert!(blocks.len() <= MAX_BLOCKS);
        assert!(text_len(&msg["text"]) <= MAX_FALLBACK_TEXT);
        assert!(text_len(&blocks[0]["text"]["text"]) <= MAX_HEADER_TEXT);
        let mut sections = 0;
        for b in blocks {
            if b["type"] == "section" {
                if let Some(fields) = b["fields"].as_array() {
                    assert!(fields.len() <= MAX_FIELDS);
                    assert!(fields.iter().all(|f| text_len(&f["text"]) <= MAX_FIELD_TEXT));
                } else {
                    sections += 1;
                    let t = b["text"]["text"].as_str().unwrap();
                    assert!(t.chars().count() <= MAX_SECTION_TEXT, "{}", t.len());
                    if !t.starts_with("*Flapped most*") {
                        assert!(t.contains("more"), "a cut list says how many were left out");
                    }
                }
            }
        }
        assert_eq!(sections, 3, "open quarantines, flappers, rotations");
    }

    /// HTTPS end to end: a TLS server for "localhost" that answers 200 with a short body and then
    /// keeps the connection open (the client must not wait for it to close).
    #[tokio::test]
    async fn posts_over_https_and_does_not_wait_for_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"blocks\"") || !got.ends_with(b"}") {
                let n = tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            String::from_utf8_lossy(&got).into_owned()
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let url = WebhookUrl::parse(&format!("https://localhost:{port}/services/secret")).unwrap();
        let end = chrono::Utc::now();
        let report = model::build("tls", end - TimeDelta::hours(1), end, &[], &[], false);
        let started = Instant::now();
        let client = Client::with_tls(Proxy::Direct, &egress_http::tls_config_with(roots)).unwrap();
        let attempts = post_with(&client, &url, &message(&report, None), &Delivery::default())
            .await
            .unwrap();
        assert_eq!(attempts, 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the server to close"
        );
        server.abort();
    }

    #[test]
    fn mrkdwn_control_characters_are_escaped() {
        assert_eq!(mrkdwn_escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
