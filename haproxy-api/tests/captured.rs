//! The parsers against answers captured from a real HAProxy 2.6.12 (one listen section, servers b1
//! with a failing check, b2 without).

use egress_haproxy_api::{parse_servers_state, parse_show_stat};

const SHOW_STAT: &str = include_str!("fixtures/show_stat_listen_haproxy_2.6.csv");
const SERVERS_STATE: &str = include_str!("fixtures/servers_state_haproxy_2.6.txt");

#[test]
fn parses_show_stat_rows_by_header() {
    let rows = parse_show_stat(SHOW_STAT).unwrap();
    let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["FRONTEND", "b1", "b2", "BACKEND"]);
    assert_eq!(rows[1].status, "DOWN");
    assert_eq!(rows[1].fields["check_desc"], "Layer4 connection problem");
    assert_eq!(rows[2].status, "no check");
    assert_eq!(rows[2].addr.as_deref(), Some("127.0.0.1:10"));
    assert!(rows.iter().all(|r| !r.fields.contains_key("")));
}

#[test]
fn parses_servers_state_rows_by_header() {
    let rows = parse_servers_state(SERVERS_STATE).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["be_name"], "egress");
    assert_eq!(rows[0]["srv_name"], "b1");
    assert_eq!(rows[0]["srv_op_state"], "0");
    assert_eq!(rows[1]["srv_op_state"], "2");
    assert_eq!(rows[1]["srv_port"], "10");
}

#[test]
fn rejects_output_without_header() {
    assert!(parse_show_stat("Unknown command\n").is_err());
    assert!(parse_servers_state("Can't find backend.\n").is_err());
}
