//! HAProxy under the harness: config errors are HAProxy's own message, the runtime API answers and
//! its output parses, logs are captured; a missing program is one line naming the package.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use egress_harness::client::echo_ip_via_proxy;
use egress_harness::echo::EchoServer;
use egress_harness::fault::{FaultBackend, FaultMode};
use egress_harness::haproxy::{GLOBAL, Haproxy};

#[test]
fn bad_config_fails_with_haproxys_message() {
    let err = Haproxy::start(&format!(
        "{GLOBAL}\nfrontend f\n    bind 127.0.0.1:{{{{PORT0}}}}\n    no-such-keyword 1\n"
    ))
    .expect_err("an invalid config must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("haproxy -c") && text.contains("no-such-keyword"),
        "{text}"
    );
}

#[test]
fn config_without_runtime_socket_is_rejected_clearly() {
    let err = Haproxy::start("defaults\n    timeout client 1s\n").expect_err("no admin socket");
    assert!(format!("{err}").contains("{{RUNTIME_SOCKET}}"), "{err}");
}

#[test]
fn runtime_api_stats_state_and_logs() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let up = FaultBackend::start(FaultMode::Forward)?;
    let down = FaultBackend::start(FaultMode::Refuse)?;
    let config = format!(
        "{GLOBAL}
listen egress
    mode tcp
    bind 127.0.0.1:{{{{PORT0}}}}
    log-format \"conn %ci:%cp -> %s\"
    balance first
    server up {} check inter 200ms fall 1 rise 1
    server down {} check inter 200ms fall 1 rise 1
",
        up.addr(),
        down.addr()
    );
    let haproxy = Haproxy::start(&config)?;
    assert!(haproxy.cmd("show info")?.contains("Name: HAProxy"));

    let status = |server: &str| -> String {
        haproxy
            .stat("egress", server)
            .ok()
            .flatten()
            .and_then(|row| row.get("status").cloned())
            .unwrap_or_default()
    };
    assert!(
        egress_harness::wait_until(Duration::from_secs(5), || status("down") == "DOWN"),
        "{}",
        status("down")
    );
    assert_eq!(status("up"), "UP");

    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(0)));
    assert_eq!(echo_ip_via_proxy(front, &echo, None)?, "127.0.0.1");
    assert!(
        egress_harness::wait_until(Duration::from_secs(5), || haproxy.logs().contains("-> up")),
        "no log line for the session:\n{}",
        haproxy.logs()
    );

    haproxy.cmd("set server egress/up state drain")?;
    let state = haproxy.show_servers_state()?;
    let row = state
        .iter()
        .find(|r| r.get("srv_name").map(String::as_str) == Some("up"))
        .expect("server up in show servers state");
    // srv_admin_state 0x08 = SRV_ADMF_FDRAIN, "the server is in forced drain mode" (management guide).
    let admin: u32 = row
        .get("srv_admin_state")
        .and_then(|s| s.parse().ok())
        .expect("srv_admin_state");
    assert_eq!(admin & 0x08, 0x08, "{row:?}");
    Ok(())
}

#[test]
fn missing_program_is_one_line_naming_the_package() {
    let err =
        egress_harness::programs::find_program("no-such-haproxy-binary", "haproxy").expect_err("missing");
    let text = format!("{err:#}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("install Debian's `haproxy` package"), "{text}");
}

#[test]
fn missing_bin_names_the_build_command() {
    let err = egress_harness::bins::bin_path("no-such-egress-binary").expect_err("missing");
    assert!(
        format!("{err}").contains("cargo build --workspace --bins"),
        "{err}"
    );
}
