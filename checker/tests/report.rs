//! `egress-checker report` against a real Postgres holding a generated day of events; the Slack
//! webhook against a local HTTP server that records requests and answers 429, 500 and 200; the page
//! in a real browser (headless Chromium).

use std::io::BufReader;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use egress_report::{html, model};

/// The report crate's sample events, shared with its unit tests (not compiled into the library).
#[path = "../../report/src/sample.rs"]
mod sample;
use egress_harness::postgres::Postgres;
use egress_harness::process::ChildSpec;
use egress_harness::standin::{Answer, StandIn};
use egress_harness::tinyproxy::Tinyproxy;
use egress_ledger::{Actor, Event, EventKind, Store};
use serde_json::Value;

const SECRET_PATH: &str = "/services/T000/B000/s3cr3t-token";

/// The proxy variables reqwest reads: cleared, so only a test's own `env` sets a proxy.
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn checker(db: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress-checker"));
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.arg("report")
        .args(args)
        .env("EGRESS_DATABASE_URL", db)
        .env("EGRESS_CHECKER_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run egress-checker")
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The generated day plus a server whose name and reason try to break out of the HTML.
fn load_day(url: &str) -> anyhow::Result<()> {
    let end = Utc::now() - TimeDelta::minutes(1);
    let mut events = sample::day_of_events(end);
    events.push(
        Event::new(
            EventKind::Quarantined,
            Actor::Checker,
            "evil\"be",
            "<img src=x onerror=alert(1)>&",
        )
        .at(end - TimeDelta::hours(2))
        .reason("<script>alert('r')</script>"),
    );
    runtime().block_on(async {
        let store = Store::connect(url).await?;
        store.insert_events(&events).await?;
        store.close().await;
        Ok(())
    })
}

/// Validate `doc` against docs/report.schema.json with python3's `jsonschema` (Draft 2020-12).
fn schema_check(doc: &Value) -> anyhow::Result<()> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, serde_json::to_vec(doc).unwrap()).unwrap();
    let script = "import json, sys, jsonschema\n\
        s = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        v = jsonschema.Draft202012Validator(s, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)\n\
        errs = [f'{list(e.absolute_path)}: {e.message}' for e in v.iter_errors(json.load(open(sys.argv[2])))]\n\
        print('\\n'.join(errs)); sys.exit(1 if errs else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&schema)
        .arg(&file)
        .output()
        .expect("python3 is needed to validate the JSON Schema (Debian: python3, pip: jsonschema)");
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python3's jsonschema module is missing (pip install jsonschema, or kubernetes-validate): {stderr}"
    );
    anyhow::bail!("{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

/// A scripted webhook on the harness's stand-in: answers the statuses in order (the last one
/// forever, with `Retry-After` when given) and records every request.
struct Webhook {
    url: String,
    standin: StandIn,
}

fn webhook(script: &'static [(u16, Option<u64>)]) -> Webhook {
    let next = AtomicUsize::new(0);
    let standin = StandIn::start_with(move |_| {
        let (status, retry_after) = script[next.fetch_add(1, Ordering::SeqCst).min(script.len() - 1)];
        let answer = Answer::text(status, if status == 200 { "ok" } else { "oops" });
        match retry_after {
            Some(secs) => answer.header("Retry-After", &secs.to_string()),
            None => answer,
        }
    })
    .unwrap();
    let url = format!("http://{}{SECRET_PATH}", standin.addr());
    Webhook { url, standin }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn report_from_a_day_of_events_with_slack_retries_and_failures() -> anyhow::Result<()> {
    let mut pg = Postgres::start()?;
    let db = pg.url().to_owned();
    load_day(&db)?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().to_str().unwrap();

    // 1. The report itself, without Slack.
    let o = checker(&db, &["--out", out, "--title", "test pool"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("8 servers"),
        "{}",
        text(&o)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(out_dir.path().join("report.json"))?)?;
    schema_check(&report)?;
    let parsed: model::Report = serde_json::from_value(report.clone())?;
    let srv = |name: &str| {
        parsed
            .servers
            .iter()
            .find(|s| s.server == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(parsed.schema_version, model::SCHEMA_VERSION);
    assert!(
        (parsed.window.seconds - 86_400.0).abs() < 120.0,
        "{}",
        parsed.window.seconds
    );
    // The flapper: six quarantines, six recoveries, 56 minutes quarantined.
    let gw2 = srv("gw-02");
    assert_eq!((gw2.quarantines.count, gw2.recoveries), (6, 6));
    assert!(
        (gw2.quarantines.total_seconds - 56.0 * 60.0).abs() < 1.0,
        "{}",
        gw2.quarantines.total_seconds
    );
    assert_eq!(gw2.quarantines.reasons[0].reason, "connect-timeout");
    assert_eq!(gw2.quarantines.reasons[0].count, 4);
    assert_eq!(parsed.pool.most_flapping[0].server, "gw-02");
    // Quarantined since before the window: counted from the window's start to the restore (3 h).
    let kr1 = srv("kr-01");
    assert_eq!((kr1.quarantines.count, kr1.recoveries), (0, 1));
    assert_eq!(kr1.segments[0].state, model::State::Quarantined);
    assert_eq!(kr1.segments[0].from, parsed.window.since);
    let q = kr1.quarantines.total_seconds;
    assert!((q - (3.0 * 3600.0 - 60.0)).abs() < 90.0, "{q}");
    // A quarantine healed by a rotation, with its IPs.
    let gw3 = srv("gw-03");
    assert_eq!(gw3.rotations.len(), 1);
    assert_eq!(gw3.rotations[0].old_ip.as_deref(), Some("203.0.113.13"));
    assert_eq!(gw3.rotations[0].new_ip.as_deref(), Some("203.0.113.113"));
    assert_eq!(gw3.exit_ip.as_deref(), Some("203.0.113.113"));
    let states: Vec<_> = gw3.segments.iter().map(|s| s.state).collect();
    use model::State::*;
    assert_eq!(states, [Healthy, Quarantined, Healthy]);
    // A scheduled rotation: draining 25 min, maint 6 min.
    let gw4 = srv("gw-04");
    let states: Vec<_> = gw4.segments.iter().map(|s| s.state).collect();
    assert_eq!(states, [Healthy, Draining, Maint, Healthy]);
    assert!((gw4.unavailable_seconds - 31.0 * 60.0).abs() < 1.0);
    // The failed rotation and the open quarantine.
    let gw5 = srv("gw-05");
    assert_eq!(gw5.rotation_failures.len(), 1);
    assert_eq!(gw5.state_now, Quarantined);
    let open: Vec<&str> = parsed
        .pool
        .open_quarantines
        .iter()
        .map(|q| q.server.as_str())
        .collect();
    assert_eq!(open, ["gw-05", "<img src=x onerror=alert(1)>&"]);
    assert_eq!(parsed.pool.rotations, 2);
    assert_eq!(parsed.pool.rotation_failures, 1);
    assert_eq!(parsed.pool.quarantines, 6 + 1 + 1 + 1);
    assert_eq!(srv("gw-01").availability, Some(1.0));
    assert_eq!((srv("kr-02").exit_ip_changes, srv("kr-02").exit_ip_leaks), (2, 1));
    // Segments tile [observed_from, until] for every server.
    for s in &parsed.servers {
        assert_eq!(s.segments.first().unwrap().from, s.observed_from, "{}", s.server);
        assert_eq!(s.segments.last().unwrap().to, parsed.window.until, "{}", s.server);
        for w in s.segments.windows(2) {
            assert_eq!(w[0].to, w[1].from, "{}", s.server);
            assert_ne!(w[0].state, w[1].state, "{}", s.server);
        }
    }
    // The schema refuses what it should (so the check above can fail).
    let mut broken = report.clone();
    broken["servers"][0]["state_now"] = "asleep".into();
    assert!(schema_check(&broken).is_err());
    let mut broken = report.clone();
    broken["pool"].as_object_mut().unwrap().remove("availability");
    assert!(schema_check(&broken).is_err());

    // The page escapes what came from the database.
    let page = std::fs::read_to_string(out_dir.path().join("index.html"))?;
    assert!(
        !page.contains("<img src=x") && !page.contains("<script>"),
        "unescaped text in the page"
    );
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;&amp;"));
    assert!(page.contains("&lt;script&gt;alert(&#39;r&#39;)&lt;/script&gt;"));
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "external asset"
    );
    assert_eq!(page.matches("class=\"row server\"").count(), 8);

    // 2. Slack: 429 (Retry-After: 2), then 500, then 200.
    let hook = webhook(&[(429, Some(2)), (500, None), (200, None)]);
    let started = std::time::Instant::now();
    let o = checker(
        &db,
        &["--out", out, "--slack-webhook-url-env", "TEST_HOOK"],
        &[("TEST_HOOK", &hook.url)],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("3 attempts"),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("s3cr3t"),
        "the webhook URL leaked: {}",
        text(&o)
    );
    let reqs = hook.standin.requests();
    assert_eq!(reqs.len(), 3);
    // Retry-After: 2 s between the 429 and the next attempt (the rate limit alone would allow 1 s).
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After was not honoured: {gap:?}"
    );
    for req in &reqs {
        assert_eq!(
            (req.method.as_str(), req.target.as_str(), req.version),
            ("POST", SECRET_PATH, 1)
        );
        assert!(
            req.headers
                .iter()
                .any(|(n, v)| n == "content-type" && v.to_ascii_lowercase().starts_with("application/json")),
            "{:?}",
            req.headers
        );
        let body = &String::from_utf8_lossy(&req.body);
        let msg: Value = serde_json::from_str(body)?;
        let blocks = msg["blocks"].as_array().unwrap();
        assert!(!blocks.is_empty() && blocks.len() <= 50);
        assert!(msg["text"].as_str().unwrap().contains("availability"));
        assert_eq!(blocks[0]["type"], "header");
        assert!(
            body.contains("gw-05") && body.contains("203.0.113.13 → 203.0.113.113"),
            "{body}"
        );
        assert!(body.contains("&lt;img src=x"), "mrkdwn not escaped: {body}");
    }

    // 3. A webhook that always fails: non-zero, the last report stays, no temp file left behind.
    // The budget must fit all five attempts whatever the jitter: the waits are 1, 2, 4, 8 s ±50 %,
    // at most 22.5 s together. With 20 s, one CI run drew 20.4 s and gave up after 4 attempts.
    let before = snapshot(out_dir.path());
    let hook = webhook(&[(500, None)]);
    let secret_dir = tempfile::tempdir()?;
    let secret = secret_dir.path().join("webhook-url");
    std::fs::write(&secret, format!("{}\n", hook.url))?;
    let o = checker(
        &db,
        &[
            "--out",
            out,
            "--slack-webhook-url-file",
            secret.to_str().unwrap(),
            "--slack-timeout",
            "30s",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("gave up after 5 attempts") && stderr.contains("HTTP 500"),
        "{}",
        text(&o)
    );
    assert!(
        stderr.contains("previous report was left in place"),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("s3cr3t"),
        "the webhook URL leaked: {}",
        text(&o)
    );
    assert_eq!(hook.standin.requests().len(), 5);
    assert_eq!(snapshot(out_dir.path()), before, "the previous report changed");

    // 4. The database is down: non-zero, a clear message, the last report stays.
    pg.stop()?;
    let o = checker(&db, &["--out", out], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("cannot read the ledger: database unreachable"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(out_dir.path()), before, "the previous report changed");

    // 5. Usage errors exit 2 before touching anything.
    let o = checker(
        &db,
        &["--out", out, "--slack-webhook-url-env", "NOT_SET_ANYWHERE"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = checker(&db, &["--out", out, "--since", "yesterday"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = checker(
        &db,
        &[
            "--out",
            out,
            "--slack-webhook-url-env",
            "A",
            "--slack-webhook-url-file",
            "/x",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(snapshot(out_dir.path()), before);
    Ok(())
}

/// The Slack post honours the proxy of the environment, as curl does: `HTTP_PROXY` names a real
/// proxy (tinyproxy, whose outgoing connections leave from 127.0.0.61), so the webhook sees the post
/// arrive from that address; reqwest does not exempt loopback on its own, and `NO_PROXY=127.0.0.1`
/// sends the next post direct. Logged at trace level, the run still never prints the webhook's path.
#[test]
fn slack_post_goes_through_the_proxy_the_environment_names() -> anyhow::Result<()> {
    const EXIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 61);
    let pg = Postgres::start()?;
    let db = pg.url().to_owned();
    let proxy = Tinyproxy::start(EXIT)?;
    let hook = webhook(&[(200, None)]);
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().to_str().unwrap();
    let proxy_url = format!("http://{}", proxy.addr());
    let args = ["--out", out, "--slack-webhook-url-env", "TEST_HOOK"];

    let o = checker(
        &db,
        &args,
        &[
            ("TEST_HOOK", &hook.url),
            ("HTTP_PROXY", &proxy_url),
            ("EGRESS_CHECKER_LOG", "trace"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(1 attempt)"),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("s3cr3t"),
        "the webhook URL leaked: {}",
        text(&o)
    );
    let reqs = hook.standin.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].target.as_str()),
        ("POST", SECRET_PATH)
    );
    assert_eq!(reqs[0].peer.ip(), EXIT, "the post did not come through the proxy");
    let relayed = |log: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("POST http://{}{SECRET_PATH}", hook.standin.addr())))
            .count()
    };
    assert_eq!(relayed(&proxy.logs()), 1, "{}", proxy.logs());

    let o = checker(
        &db,
        &args,
        &[
            ("TEST_HOOK", &hook.url),
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", "127.0.0.1"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let reqs = hook.standin.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].peer.ip(),
        Ipv4Addr::LOCALHOST,
        "NO_PROXY was not honoured"
    );
    assert_eq!(relayed(&proxy.logs()), 1, "{}", proxy.logs());
    Ok(())
}

/// Count pixels within a small distance of `rgb`.
fn count_colour(png_path: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| {
            let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
            channels >= 3 && d(p[0], rgb.0) <= 6 && d(p[1], rgb.1) <= 6 && d(p[2], rgb.2) <= 6
        })
        .count()
}

fn hex(c: &str) -> (u8, u8, u8) {
    let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap();
    ((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

#[test]
fn the_page_renders_its_timelines_in_chromium() -> anyhow::Result<()> {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|n| find_in_path(n))
    else {
        // scripts/install-deps installs it: a missing browser is a broken machine, not a pass.
        anyhow::bail!(
            "chromium is not installed (Debian package `chromium`): the page cannot be checked in a browser"
        );
    };
    let end = Utc::now();
    let events = sample::day_of_events(end);
    let (before, inside): (Vec<Event>, Vec<Event>) = events
        .into_iter()
        .partition(|e| e.at < end - TimeDelta::hours(24));
    let report = model::build(
        "browser test",
        end - TimeDelta::hours(24),
        end,
        &before,
        &inside,
        false,
    );
    let dir = tempfile::tempdir()?.keep();
    let page = dir.join("index.html");
    std::fs::write(&page, html::render(&report))?;
    let shot = dir.join("report.png");
    let profile = dir.join("profile");
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("file://{}", page.display()));
    ChildSpec::new("chromium", cmd).run(Duration::from_secs(120))?;
    eprintln!("screenshot: {}", shot.display());
    let red = count_colour(&shot, hex(html::colour(model::State::Quarantined)));
    let green = count_colour(&shot, hex(html::colour(model::State::Healthy)));
    let amber = count_colour(&shot, hex(html::colour(model::State::Draining)));
    eprintln!("pixels: healthy {green}, quarantined {red}, draining {amber}");
    // 7 tracks 920 px wide and 18 high, mostly healthy; kr-01's 3 h and gw-05's 5 h are quarantined.
    assert!(
        green > 40_000,
        "the healthy timelines did not render: {green} pixels"
    );
    assert!(red > 5_000, "the quarantines did not render: {red} pixels");
    assert!(amber > 200, "the drains did not render: {amber} pixels");

    // The DOM the browser built holds every segment.
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("file://{}", page.display()));
    let dom = ChildSpec::new("chromium-dom", cmd).run(Duration::from_secs(120))?;
    // Keep the page and the screenshot for people to look at; the browser profile can go.
    let _ = std::fs::remove_dir_all(&profile);
    let segments: usize = report.servers.iter().map(|s| s.segments.len()).sum();
    assert_eq!(
        dom.matches("class=\"seg quarantined\"").count(),
        report
            .servers
            .iter()
            .flat_map(|s| &s.segments)
            .filter(|s| s.state == model::State::Quarantined)
            .count()
    );
    assert!(
        dom.matches("class=\"seg ").count() >= segments,
        "{segments} segments expected in the DOM"
    );
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Regenerate docs/sample-report/ from the generated day (run by hand; see docs/report.md).
#[test]
#[ignore = "writes docs/sample-report/; run with --ignored to regenerate the sample"]
fn regenerate_sample_report() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let events = sample::day_of_events(Utc::now());
    runtime().block_on(async {
        let store = Store::connect(pg.url()).await?;
        store.insert_events(&events).await?;
        store.close().await;
        anyhow::Ok(())
    })?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sample-report");
    let o = checker(
        pg.url(),
        &["--out", out.to_str().unwrap(), "--title", "sample pool"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    schema_check(&report)?;
    Ok(())
}

/// Wall time of `report` over a month of history for 28 servers (4 copies of the generated day's
/// 7 servers, 30 days): prints the figure quoted in docs/report.md.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn measure_report_over_a_month_of_history() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let now = Utc::now();
    let mut events = Vec::new();
    for day in 0..30 {
        for copy in 0..4 {
            for mut e in sample::day_of_events(now - TimeDelta::days(day)) {
                e.server = format!("{}-{copy}", e.server);
                e.id = uuid::Uuid::now_v7();
                events.push(e);
            }
        }
    }
    runtime().block_on(async {
        let store = Store::connect(pg.url()).await?;
        for chunk in events.chunks(5000) {
            store.insert_events(chunk).await?;
        }
        store.close().await;
        anyhow::Ok(())
    })?;
    let out = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let o = checker(pg.url(), &["--out", out.path().to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}", text(&o));
        runs.push(started.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    eprintln!(
        "{} events in the ledger, 28 servers: report wall time min {:.3}s median {:.3}s max {:.3}s",
        events.len(),
        runs[0],
        runs[2],
        runs[4]
    );
    Ok(())
}
