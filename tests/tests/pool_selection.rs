//! The shipped haproxy.cfg's pool selection, against the running stack: the global pool by default,
//! the Korea pool (`egress_kr`, here one server with exit IP 127.0.0.5) for the header
//! `X-Egress-Pool: kr` or the Proxy-Authorization user `kr`, and not for any other user or value.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::net::Ipv4Addr;
use std::time::Duration;

use egress_harness::stack::LocalStack;
use egress_harness::wait_until;

const KOREA_EXIT: &str = "127.0.0.5";

#[test]
fn korea_pool_by_header_or_proxy_user_global_otherwise() -> anyhow::Result<()> {
    let stack = LocalStack::start(&mut |_| {}, &|| false)?;
    assert!(
        wait_until(Duration::from_secs(60), || stack.all_up()),
        "not all servers UP: {:?}",
        stack.server_stats().ok()
    );
    let clients = (1..=6).map(|i| Ipv4Addr::new(127, 0, 5, i));
    for client in clients {
        let korea = [
            "X-Egress-Pool: kr\r\n",
            "X-Egress-Pool: KR\r\n",
            // kr:secret
            "Proxy-Authorization: Basic a3I6c2VjcmV0\r\n",
        ];
        for headers in korea {
            assert_eq!(stack.request_with(client, headers)?, KOREA_EXIT, "{headers:?}");
        }
        let global = [
            "",
            "X-Egress-Pool: global\r\n",
            // bob:secret
            "Proxy-Authorization: Basic Ym9iOnNlY3JldA==\r\n",
        ];
        for headers in global {
            let exit = stack.request_with(client, headers)?;
            assert!(
                exit.starts_with("127.0.0.") && exit != KOREA_EXIT,
                "{client} {headers:?}: {exit}"
            );
        }
    }
    // The selector is logged: pool=kr / pool=global on HAProxy's log line.
    let logs = stack.haproxy.logs();
    assert!(
        logs.contains(" pool=kr ") && logs.contains(" pool=global "),
        "{logs}"
    );
    Ok(())
}
