//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the corpus-replay tests
//! (so every target also runs on stable in the normal test suite). Each asserts invariants and
//! panics only on a real bug.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use egress_common::client_hash::HashKey;
use tokio_util::codec::Decoder;

use crate::attribution;
use crate::codec::SpopCodec;
use crate::connection::{Session, State, Step};
use crate::exit_ip::ExitIps;
use crate::frame::{self, FrameType, TypedData};
use crate::handler::Agent;
use crate::metrics::Metrics;

/// The codec and every payload parser, fed `data` in chunks whose sizes come from the data itself.
pub fn frame_decoder(data: &[u8]) {
    let Some((&max_sel, rest)) = data.split_first() else {
        return;
    };
    let max = 256 + u32::from(max_sel) * 64;
    let mut codec = SpopCodec::new(max);
    let mut buf = BytesMut::new();
    let chunk = 1 + (usize::from(max_sel) % 7);
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= max as usize);
                    let _ = frame::HaproxyHello::parse(&f.payload);
                    let _ = frame::Disconnect::parse(&f.payload);
                    let _ = frame::ack::decode_actions(&f.payload);
                    if let Ok(n) = frame::Notify::parse(&f.payload) {
                        for m in n.messages() {
                            assert_eq!(m.args().count(), usize::from(m.nb_args()));
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Never buffer more than one frame's worth beyond what was fed.
        assert!(buf.len() <= rest.len());
    }
}

/// Typed data: decoding never panics, and what decodes re-encodes to something that decodes equal.
pub fn typed_data(data: &[u8]) {
    let mut rest = data;
    while let Ok((r, v)) = TypedData::decode(rest) {
        let mut enc = Vec::new();
        v.encode(&mut enc);
        assert_eq!(enc.len(), v.encoded_len());
        let (tail, again) = TypedData::decode(&enc).expect("re-encoded data decodes");
        assert!(tail.is_empty());
        assert_eq!(again, v);
        assert!(r.len() < rest.len());
        rest = r;
    }
    let _ = frame::varint::decode(data);
}

/// The shared agent, and its attribution queue (drained after each input).
type FuzzAgent = (Arc<Agent>, Mutex<attribution::AttributionReceiver>);

fn fuzz_agent() -> &'static FuzzAgent {
    static AGENT: OnceLock<FuzzAgent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let metrics = Arc::new(Metrics::new().expect("metrics register"));
        let (tx, rx) = attribution::channel(1024, metrics.clone());
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").expect("static key");
        (
            Arc::new(Agent::new(key, Arc::new(ExitIps::new()), tx, metrics)),
            Mutex::new(rx),
        )
    })
}

/// The whole connection state machine fed arbitrary bytes, synchronously (no runtime, no socket:
/// the [`Session`] is what `serve_connection` drives). Shortcuts so the fuzzer reaches the NOTIFY
/// path quickly: if `data` starts with `!`, a valid HAPROXY-HELLO is sent first; with `?` and a
/// byte `b`, a valid HELLO offering max-frame-size `256 + 64·b` (so smaller negotiated limits are
/// exercised too). Checks that no more than one frame (at the limit in force) plus one input chunk
/// is ever buffered, and that no buffer grows past 64 KiB.
pub fn connection(data: &[u8]) {
    let (agent, queue) = fuzz_agent();
    let mut session = Session::new(agent.clone(), frame::DEFAULT_MAX_FRAME_SIZE);
    let mut input = BytesMut::new();
    let data = match data {
        [b'!', rest @ ..] => {
            input.extend_from_slice(&valid_hello());
            rest
        }
        [b'?', b, rest @ ..] => {
            input.extend_from_slice(&hello_with_max(256 + 64 * u32::from(*b)));
            rest
        }
        _ => data,
    };
    let mut out = BytesMut::new();
    let mut closed = false;
    for piece in data.chunks(CHUNK).chain(std::iter::once(&[][..])) {
        input.extend_from_slice(piece);
        loop {
            match session.process(&mut input, &mut out, 8) {
                Step::Yield => continue,
                Step::NeedInput => {
                    // What is left is the start of one frame within the limit in force.
                    assert!(input.len() < 4 + session.max_frame_size() as usize);
                    break;
                }
                Step::Close => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(
            input.capacity() <= BUFFER_LIMIT,
            "input buffer grew to {}",
            input.capacity()
        );
        if closed {
            assert_eq!(session.state(), State::Closing);
            break;
        }
        // The caller flushes after every process(): check and drop what was written.
        assert!(
            out.capacity() <= BUFFER_LIMIT,
            "output buffer grew to {}",
            out.capacity()
        );
        check_agent_output(&mut out, session.max_frame_size());
    }
    check_agent_output(&mut out, session.max_frame_size());
    drop(session);
    // Free what the handlers queued: libFuzzer runs a (slow) leak scan after any input that
    // allocated more than it freed.
    queue.lock().unwrap_or_else(|e| e.into_inner()).drain_now();
}

/// Bytes handed to the session per read in [`connection`].
const CHUNK: usize = 97;
/// No connection buffer may grow beyond this (16 KiB frames, amortised growth).
const BUFFER_LIMIT: usize = 64 * 1024;

/// Everything the agent writes is a sequence of well-formed agent frames with FIN set; every ACK
/// carries at least one action.
pub fn check_agent_output(out: &mut BytesMut, max: u32) {
    let mut codec = SpopCodec::new(max.max(frame::DEFAULT_MAX_FRAME_SIZE));
    while let Some(f) = codec.decode(out).expect("agent output decodes") {
        assert!(f.flags.fin(), "FIN on every frame");
        match f.kind {
            FrameType::Ack => {
                let actions = frame::ack::decode_actions(&f.payload).expect("ACK actions decode");
                assert!(!actions.is_empty(), "every ACK carries an action");
            }
            FrameType::AgentHello | FrameType::AgentDisconnect => {
                assert_eq!((f.stream_id, f.frame_id), (0, 0));
                let kvs: Result<Vec<_>, _> = frame::kv::KvIter::new(&f.payload).collect();
                kvs.expect("KV list decodes");
            }
            other => panic!("the agent never sends {other:?}"),
        }
    }
    assert!(out.is_empty(), "no partial frame in the output");
}

/// A HAPROXY-HELLO as HAProxy 3.x sends it by default.
pub fn valid_hello() -> Vec<u8> {
    hello_with_max(16380)
}

/// A valid HAPROXY-HELLO offering `max_frame_size`.
pub fn hello_with_max(max_frame_size: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut w = frame::FrameWriter::begin(&mut out, FrameType::HaproxyHello, frame::Flags::FIN, 0, 0);
    frame::kv::encode_pair(b"supported-versions", TypedData::String(b"2.0"), w.payload());
    frame::kv::encode_pair(b"max-frame-size", TypedData::Uint32(max_frame_size), w.payload());
    frame::kv::encode_pair(b"capabilities", TypedData::String(b"pipelining"), w.payload());
    w.finish(16380).expect("small frame");
    out.to_vec()
}
