//! Fuzz the `show stat` CSV parser: arbitrary bytes (as HAProxy's runtime API could return after a
//! reload, a cut-off read, or a hostile socket) must give Ok or Err, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(rows) = egress_haproxy_api::parse_show_stat(text) {
            // Typed fields and the by-name map agree.
            for r in rows {
                assert_eq!(r.fields.get("pxname"), Some(&r.proxy));
                assert_eq!(r.fields.get("svname"), Some(&r.name));
                assert_eq!(r.fields.get("status"), Some(&r.status));
            }
        }
        let _ = egress_haproxy_api::parse_servers_state(text);
    }
});
