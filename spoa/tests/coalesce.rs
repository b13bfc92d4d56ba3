//! Which connections ask for the batching window (spoa/src/coalesce.rs): HAProxy 3.1+'s mux-spop
//! numbers a connection's streams 1, 3, 5, ... (`spop_conn_get_next_sid`); HAProxy 2.6 sends its
//! process-wide stream counter. Sans-IO, on the real `Session`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::BytesMut;
use egress_common::client_hash::HashKey;
use egress_spoa::connection::{Session, Step};
use egress_spoa::exit_ip::ExitIps;
use egress_spoa::frame::kv::encode_pair;
use egress_spoa::frame::notify::{encode_message, encode_notify};
use egress_spoa::frame::{Flags, FrameType, FrameWriter, TypedData};
use egress_spoa::metrics::Metrics;
use egress_spoa::{Agent, attribution};

fn session() -> Session {
    let metrics = Arc::new(Metrics::new().unwrap());
    let (tx, _rx) = attribution::channel(16, metrics.clone());
    let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
    Session::new(
        Arc::new(Agent::new(key, Arc::new(ExitIps::new()), tx, metrics)),
        16380,
    )
}

fn hello() -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, FrameType::HaproxyHello, Flags::FIN, 0, 0);
    encode_pair(b"supported-versions", TypedData::String(b"2.0"), w.payload());
    encode_pair(b"max-frame-size", TypedData::Uint32(16380), w.payload());
    encode_pair(b"capabilities", TypedData::String(b"pipelining"), w.payload());
    w.finish(16380).unwrap();
    out.to_vec()
}

fn notify(sid: u64) -> Vec<u8> {
    let mut m = Vec::new();
    encode_message(
        b"egress-client",
        &[(b"src", TypedData::Ipv4(Ipv4Addr::new(192, 0, 2, 1)))],
        &mut m,
    );
    let mut out = BytesMut::new();
    encode_notify(sid, 1, &m, &mut out, 16380).unwrap();
    out.to_vec()
}

/// Feeds HELLO and NOTIFYs with `sids`; returns the session's verdict.
fn verdict(sids: &[u64]) -> Option<bool> {
    let mut s = session();
    let mut input = BytesMut::from(&hello()[..]);
    for sid in sids {
        input.extend_from_slice(&notify(*sid));
    }
    let mut out = BytesMut::new();
    while s.process(&mut input, &mut out, 64) == Step::Yield {}
    assert!(input.is_empty(), "every frame decoded");
    s.one_frame_per_write()
}

#[test]
fn haproxy_3_stream_ids_ask_for_the_window() {
    assert_eq!(verdict(&[1, 3, 5]), Some(true));
}

#[test]
fn haproxy_2_6_stream_ids_never_do() {
    // 2.6: the stream's uniq_id, whatever the connection.
    assert_eq!(verdict(&[4711, 4712, 4715]), Some(false));
    // The first NOTIFY decides: a later sid 1 (a counter wrapping, say) changes nothing.
    assert_eq!(verdict(&[8, 1]), Some(false));
}

#[test]
fn no_notify_no_verdict() {
    assert_eq!(verdict(&[]), None);
}
