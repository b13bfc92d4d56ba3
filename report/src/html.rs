//! `index.html`: one self-contained page (inline CSS and SVG, no script, no external asset) with the
//! pool summary, a timeline per server and the summary table. Every text from the ledger is escaped.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::model::{Report, ServerReport, State};

/// Width of the timeline drawing area, in SVG user units (pixels at 100 % zoom).
const TRACK_W: f64 = 920.0;
const ROW_H: f64 = 18.0;

/// The fill colour of each state (also used by the browser test to find the timelines).
pub fn colour(state: State) -> &'static str {
    match state {
        State::Healthy => "#2f9e62",
        State::Quarantined => "#d9433b",
        State::Draining => "#f0a92e",
        State::Maint => "#7e5bc9",
    }
}

const ROTATION_COLOUR: &str = "#1d4ed8";

/// Escape text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `3h 25m`, `42m`, `17s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as i64;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// `99.95 %`, or `n/a`.
pub fn percent(v: Option<f64>) -> String {
    match v {
        Some(v) if (0.999_95..1.0).contains(&v) => "99.99 %".into(),
        Some(v) => format!("{:.2} %", v * 100.0),
        None => "n/a".into(),
    }
}

/// A tick step giving at most 12 ticks over `seconds`.
fn tick_step(seconds: f64) -> TimeDelta {
    const STEPS_MIN: [i64; 11] = [5, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10_080];
    for m in STEPS_MIN {
        if seconds / (m as f64 * 60.0) <= 12.0 {
            return TimeDelta::minutes(m);
        }
    }
    TimeDelta::days(((seconds / 86_400.0 / 12.0).ceil() as i64).max(1))
}

struct Scale {
    since: DateTime<Utc>,
    seconds: f64,
}

impl Scale {
    fn x(&self, t: DateTime<Utc>) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        let s = (t - self.since).num_milliseconds() as f64 / 1000.0;
        (s / self.seconds * TRACK_W).clamp(0.0, TRACK_W)
    }
}

fn axis_svg(report: &Report, scale: &Scale) -> String {
    let step = tick_step(report.window.seconds);
    let step_s = step.num_seconds().max(60);
    let first = report.window.since.timestamp().div_euclid(step_s) * step_s + step_s;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="axis" width="{w}" height="26" viewBox="-30 0 {vw} 26" role="img" aria-label="time axis (UTC)">"#,
        w = TRACK_W + 60.0,
        vw = TRACK_W + 60.0
    );
    let _ = write!(
        svg,
        r##"<line x1="0" y1="20" x2="{TRACK_W}" y2="20" stroke="#9aa4b2"/>"##
    );
    let mut t = first;
    while t < report.window.until.timestamp() {
        let Some(at) = DateTime::<Utc>::from_timestamp(t, 0) else {
            break;
        };
        let x = scale.x(at);
        let label = if step >= TimeDelta::days(1) || at.format("%H:%M").to_string() == "00:00" {
            at.format("%b %d").to_string()
        } else {
            at.format("%H:%M").to_string()
        };
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="15" x2="{x:.1}" y2="20" stroke="#9aa4b2"/><text x="{x:.1}" y="11" text-anchor="middle">{label}</text>"##
        );
        t += step_s;
    }
    svg.push_str("</svg>");
    svg
}

fn track_svg(s: &ServerReport, scale: &Scale) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="track" width="{w}" height="{h}" viewBox="-30 0 {w} {h}" role="img" aria-label="timeline of {name}">"#,
        w = TRACK_W + 60.0,
        h = ROW_H + 8.0,
        name = escape(&format!("{}/{}", s.backend, s.server)),
    );
    // Not observed yet (a server whose first event is inside the window).
    let _ = write!(
        svg,
        r##"<rect class="seg unobserved" x="0" y="4" width="{TRACK_W}" height="{ROW_H}" rx="3" fill="#e5e8ee"><title>no data</title></rect>"##
    );
    for seg in &s.segments {
        let (x0, x1) = (scale.x(seg.from), scale.x(seg.to));
        // Keep short stretches visible: at least one pixel wide.
        let w = (x1 - x0).max(1.0);
        let _ = write!(
            svg,
            r#"<rect class="seg {cls}" x="{x0:.2}" y="4" width="{w:.2}" height="{ROW_H}" fill="{fill}"><title>{cls} {from} – {to} ({dur})</title></rect>"#,
            cls = seg.state.as_str(),
            fill = colour(seg.state),
            from = ts(seg.from),
            to = ts(seg.to),
            dur = human_duration((seg.to - seg.from).num_seconds() as f64),
        );
    }
    for r in &s.rotations {
        let x = scale.x(r.at);
        let what = format!(
            "rotated {} {} → {}{}",
            ts(r.at),
            r.old_ip.as_deref().unwrap_or("?"),
            r.new_ip.as_deref().unwrap_or("?"),
            r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
        );
        let _ = write!(
            svg,
            r##"<g class="rotation"><line x1="{x:.2}" y1="1" x2="{x:.2}" y2="{y2}" stroke="{ROTATION_COLOUR}" stroke-width="2"/><path d="M{a:.2} 0 L{b:.2} 0 L{x:.2} 6 Z" fill="{ROTATION_COLOUR}"/><title>{t}</title></g>"##,
            y2 = ROW_H + 7.0,
            a = x - 5.0,
            b = x + 5.0,
            t = escape(&what),
        );
    }
    svg.push_str("</svg>");
    svg
}

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 40px; font: 14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1f2733; background: #f5f7fa; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.meta { color: #5b6676; margin-bottom: 18px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card .v { font-size: 22px; font-weight: bold; }
.card .k { color: #5b6676; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.bad .v { color: #b42318; }
.panel { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 12px 16px; }
.legend { display: flex; gap: 18px; margin: 0 0 8px; color: #3d4756; font-size: 13px; }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; background: var(--c); }
.legend .rot::before { width: 3px; }
.row { display: flex; align-items: center; }
.row .name { width: 230px; flex: none; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; padding-right: 8px; }
.row .name small { color: #5b6676; }
.row .avail { width: 80px; flex: none; text-align: right; font-variant-numeric: tabular-nums; color: #3d4756; }
svg text { font: 11px "DejaVu Sans", Arial, sans-serif; fill: #5b6676; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #dde2ea; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e8ecf1; vertical-align: top; }
th { background: #eef1f5; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: #3d4756; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap, td small { white-space: nowrap; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
ul.plain { margin: 0; padding-left: 18px; }
.warn { background: #fff4e5; border: 1px solid #f0a92e; padding: 8px 12px; border-radius: 6px; margin: 12px 0; }
footer { margin-top: 28px; color: #7a8594; font-size: 12px; }
"#;

/// Render the page.
pub fn render(report: &Report) -> String {
    let scale = Scale {
        since: report.window.since,
        seconds: report.window.seconds,
    };
    let pool = &report.pool;
    let mut h = String::with_capacity(64 * 1024);
    let title = escape(&report.title);
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="egress-checker report, schema {v}">
<title>{title} — egress report</title><style>{CSS}</style></head><body>
<h1>{title} — egress report</h1>
<div class="meta">Window {since} → {until} ({dur}) · generated at <time datetime="{gen}">{gen}</time> · all times UTC</div>
"#,
        v = report.schema_version,
        since = ts(report.window.since),
        until = ts(report.window.until),
        dur = human_duration(report.window.seconds),
        gen = ts(report.generated_at),
    );
    if report.truncated {
        h.push_str(r#"<div class="warn">The window held more events than one report reads; the oldest part is shown.</div>"#);
    }
    let quarantined_now = pool.state_now.get(&State::Quarantined).copied().unwrap_or(0);
    let cards = [
        ("pool availability", percent(pool.availability), false),
        ("servers", pool.servers.to_string(), false),
        (
            "quarantined now",
            quarantined_now.to_string(),
            quarantined_now > 0,
        ),
        ("quarantines", pool.quarantines.to_string(), false),
        ("recoveries", pool.recoveries.to_string(), false),
        ("rotations", pool.rotations.to_string(), false),
        (
            "failed rotations",
            pool.rotation_failures.to_string(),
            pool.rotation_failures > 0,
        ),
    ];
    h.push_str(r#"<div class="cards">"#);
    for (k, v, bad) in cards {
        let _ = write!(
            h,
            r#"<div class="card{b}"><div class="v">{v}</div><div class="k">{k}</div></div>"#,
            b = if bad { " bad" } else { "" }
        );
    }
    h.push_str("</div>\n");

    if !pool.open_quarantines.is_empty() || !pool.most_flapping.is_empty() {
        h.push_str(r#"<div class="cards" style="margin-top:12px">"#);
        if !pool.open_quarantines.is_empty() {
            h.push_str(r#"<div class="panel" style="flex:1"><b>Open quarantines</b><ul class="plain">"#);
            for q in &pool.open_quarantines {
                let _ = write!(
                    h,
                    "<li><b>{}/{}</b> since {} ({}){}</li>",
                    escape(&q.backend),
                    escape(&q.server),
                    ts(q.since),
                    human_duration(q.seconds),
                    q.reason
                        .as_deref()
                        .map(|r| format!(" — {}", escape(r)))
                        .unwrap_or_default()
                );
            }
            h.push_str("</ul></div>");
        }
        if !pool.most_flapping.is_empty() {
            h.push_str(r#"<div class="panel" style="flex:1"><b>Flapped most</b><ul class="plain">"#);
            for f in &pool.most_flapping {
                let _ = write!(
                    h,
                    "<li><b>{}/{}</b> — {} quarantines</li>",
                    escape(&f.backend),
                    escape(&f.server),
                    f.quarantines
                );
            }
            h.push_str("</ul></div>");
        }
        h.push_str("</div>\n");
    }

    h.push_str(r#"<h2>Timeline</h2><div class="panel"><div class="legend">"#);
    for s in [State::Healthy, State::Quarantined, State::Draining, State::Maint] {
        let _ = write!(h, r#"<span style="--c:{}">{}</span>"#, colour(s), s.as_str());
    }
    let _ = write!(
        h,
        r##"<span style="--c:#e5e8ee">no data</span><span class="rot" style="--c:{ROTATION_COLOUR}">rotated (exit IP changed)</span></div>"##
    );
    let axis = axis_svg(report, &scale);
    let _ = write!(
        h,
        r#"<div class="row"><div class="name"></div><div class="avail"></div>{axis}</div>"#
    );
    for s in &report.servers {
        let _ = write!(
            h,
            r#"<div class="row server"><div class="name" title="{full}">{server} <small>{backend}</small></div><div class="avail">{avail}</div>{track}</div>"#,
            full = escape(&format!("{}/{}", s.backend, s.server)),
            server = escape(&s.server),
            backend = escape(&s.backend),
            avail = percent(s.availability),
            track = track_svg(s, &scale),
        );
    }
    if report.servers.is_empty() {
        h.push_str("<p>No server has any event in the ledger yet.</p>");
    }
    h.push_str("</div>\n<h2>Servers</h2>\n<table><thead><tr><th>Server</th><th>State now</th><th>Exit IP</th><th>Availability</th><th>Quarantines</th><th>Quarantined</th><th>Reasons</th><th>Recoveries</th><th>Rotations</th></tr></thead><tbody>\n");
    for s in &report.servers {
        let reasons = s
            .quarantines
            .reasons
            .iter()
            .map(|r| format!("{} ×{}", escape(&r.reason), r.count))
            .collect::<Vec<_>>()
            .join("<br>");
        let mut rotations = s
            .rotations
            .iter()
            .map(|r| {
                format!(
                    "{} {} → {}",
                    r.at.format("%b %d %H:%M"),
                    escape(r.old_ip.as_deref().unwrap_or("?")),
                    escape(r.new_ip.as_deref().unwrap_or("?"))
                )
            })
            .collect::<Vec<_>>();
        rotations.extend(s.rotation_failures.iter().map(|f| {
            format!(
                "{} failed{}",
                f.at.format("%b %d %H:%M"),
                f.reason
                    .as_deref()
                    .map(|r| format!(": {}", escape(r)))
                    .unwrap_or_default()
            )
        }));
        let since = s
            .state_since
            .map(|t| format!("<br><small>since {}</small>", t.format("%b %d %H:%M")))
            .unwrap_or_default();
        let _ = write!(
            h,
            r#"<tr><td><b>{server}</b><br><small>{backend}</small></td><td><span class="pill" style="background:{c}">{state}</span>{since}</td><td>{ip}</td><td class="num">{avail}</td><td class="num">{qn}</td><td class="num">{qt}</td><td class="nowrap">{reasons}</td><td class="num">{rec}</td><td>{rot}</td></tr>"#,
            server = escape(&s.server),
            backend = escape(&s.backend),
            c = colour(s.state_now),
            state = s.state_now.as_str(),
            ip = {
                let mut ip = escape(s.exit_ip.as_deref().unwrap_or("unknown"));
                let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
                let mut notes = Vec::new();
                if s.exit_ip_changes > 0 {
                    notes.push(plural(s.exit_ip_changes, "change"));
                }
                if s.exit_ip_leaks > 0 {
                    notes.push(plural(s.exit_ip_leaks, "leak"));
                }
                if !notes.is_empty() {
                    ip.push_str(&format!("<br><small>{}</small>", notes.join(", ")));
                }
                ip
            },
            avail = percent(s.availability),
            qn = s.quarantines.count,
            qt = human_duration(s.quarantines.total_seconds),
            rec = s.recoveries,
            rot = rotations.join("<br>"),
        );
        h.push('\n');
    }
    let _ = write!(
        h,
        "</tbody></table>\n<footer>Availability = share of the observed time a server was healthy (not quarantined, draining or in maintenance). Machine-readable: <a href=\"report.json\">report.json</a> (schema version {}). Generated by egress-checker {} at {}.</footer>\n</body></html>\n",
        report.schema_version,
        env!("CARGO_PKG_VERSION"),
        ts(report.generated_at)
    );
    h
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::{model, sample};

    #[test]
    fn axes_stay_readable_from_an_hour_to_a_month() {
        let end = Utc::now();
        for hours in [1, 6, 24, 24 * 7, 24 * 31] {
            let since = end - TimeDelta::hours(hours);
            let events = sample::day_of_events(end);
            let (before, inside): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.at < since);
            let report = model::build("t", since, end, &before, &inside, false);
            let page = render(&report);
            let axis = page
                .split("class=\"axis\"")
                .nth(1)
                .unwrap()
                .split("</svg>")
                .next()
                .unwrap();
            let ticks = axis.matches("<text").count();
            assert!((2..=13).contains(&ticks), "{hours} h: {ticks} ticks");
            assert_eq!(page.matches("class=\"row server\"").count(), 7);
        }
    }

    #[test]
    fn an_empty_ledger_renders_a_page_that_says_so() {
        let end = Utc::now();
        let report = model::build("t", end - TimeDelta::hours(24), end, &[], &[], false);
        let page = render(&report);
        assert!(page.contains("No server has any event"));
        assert!(page.contains("n/a"));
    }

    #[test]
    fn text_is_escaped_and_durations_read_well() {
        assert_eq!(
            escape("<a href='x'>&\"\u{7}"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;\u{FFFD}"
        );
        assert_eq!(human_duration(17.0), "17s");
        assert_eq!(human_duration(42.0 * 60.0), "42m");
        assert_eq!(human_duration(3.0 * 3600.0 + 25.0 * 60.0), "3h 25m");
        assert_eq!(human_duration(90_000.0), "1d 1h");
        assert_eq!(percent(Some(0.999_99)), "99.99 %");
        assert_eq!(percent(Some(1.0)), "100.00 %");
    }
}
