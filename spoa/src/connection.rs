//! One SPOP connection: a sans-IO state machine ([`Session`]: AwaitHello → Ready → Closing) and the
//! async loop that feeds it ([`serve_connection`]).
//!
//! The handlers are synchronous and cheap, so NOTIFYs are answered inline while decoding a read
//! batch: one read, every complete frame handled, every ACK appended to one buffer, one write
//! (whole frames only; never a frame split across writes, haproxy#3478). ACK order is whatever the
//! handlers produce; SPOP with `pipelining` allows any order, always echoing (stream-id, frame-id).
//! `max_inflight` bounds how many NOTIFYs are answered before the ACKs are flushed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, SpopCodec};
use crate::frame::ack::AckWriter;
use crate::frame::{
    AgentHello, DecodeError, Disconnect, FrameRef, FrameType, HaproxyHello, Notify, Scope, Status, TypedData,
};
use crate::handler::{Agent, ConnHandler, VAR_STATUS};
use crate::metrics::Metrics;

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for HAPROXY-HELLO.
    AwaitHello,
    /// Handshake done; NOTIFYs are answered.
    Ready,
    /// A DISCONNECT (or health-check HELLO reply) was queued: flush and close.
    Closing,
}

/// What the caller should do after [`Session::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every complete frame was handled: flush, then read more.
    NeedInput,
    /// `max_inflight` NOTIFYs were handled: flush, then call `process` again before reading.
    Yield,
    /// Flush, then close the socket.
    Close,
}

/// Only `pipelining`: never `async` (2.x would expect ACKs on any connection) nor `fragmentation`.
pub const CAPABILITIES: &str = "pipelining";

/// The SPOP state machine of one connection, without I/O.
#[derive(Debug)]
pub struct Session {
    state: State,
    codec: SpopCodec,
    ours_max: u32,
    handler: ConnHandler,
    metrics: Arc<Metrics>,
    /// NOTIFY handling times, observed locally and flushed to the shared histogram once per batch.
    notify_seconds: prometheus::local::LocalHistogram,
    /// ACKs written in the current batch.
    acks: u64,
    /// Whether the peer is HAProxy 3.1+'s mux-spop, which sends each NOTIFY with its own write:
    /// known at the first NOTIFY (mux-spop numbers a connection's streams 1, 3, 5, ...; 2.6 uses its
    /// process-wide stream counter). Only such connections ask for [`crate::coalesce`].
    one_frame_per_write: Option<bool>,
}

impl Session {
    /// A fresh connection; `max_frame_size` is our limit (negotiated down to HAProxy's).
    pub fn new(agent: Arc<Agent>, max_frame_size: u32) -> Self {
        let metrics = agent.metrics().clone();
        Session {
            state: State::AwaitHello,
            codec: SpopCodec::new(max_frame_size),
            ours_max: max_frame_size,
            handler: ConnHandler::new(agent),
            notify_seconds: metrics.notify_seconds.local(),
            metrics,
            acks: 0,
            one_frame_per_write: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the peer sends one NOTIFY per write (HAProxy 3.1+'s mux-spop), known from the
    /// first NOTIFY on; such connections ask for [`crate::coalesce`]'s batching window.
    pub fn one_frame_per_write(&self) -> Option<bool> {
        self.one_frame_per_write
    }

    /// The max-frame-size in force (ours before the HELLO, the negotiated one after).
    pub fn max_frame_size(&self) -> u32 {
        self.codec.max_frame_size()
    }

    /// Handle every complete frame in `input` (at most `max_inflight` NOTIFYs), appending reply
    /// frames to `out`.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut, max_inflight: usize) -> Step {
        if self.state == State::Closing {
            return Step::Close;
        }
        self.handler.begin_batch();
        let mut notifies = 0u64;
        // Two clock reads per batch, not per NOTIFY: each NOTIFY is recorded with its batch's
        // average (decode and handling, not the socket write).
        let started = Instant::now();
        let step = loop {
            if notifies as usize >= max_inflight {
                break Step::Yield;
            }
            let total = match self.codec.frame_len(input) {
                Ok(None) => break Step::NeedInput,
                Ok(Some(total)) => total,
                Err(error) => {
                    tracing::debug!(%error, "undecodable SPOP frame");
                    self.close(error.status(), out);
                    break Step::Close;
                }
            };
            // Parsed where it lies in the read buffer, then skipped: no `Bytes` and no reference
            // count per frame.
            match input
                .get(4..total)
                .ok_or(DecodeError::Truncated)
                .and_then(FrameRef::parse)
            {
                Ok(frame) => {
                    let is_notify = frame.kind == FrameType::Notify;
                    if !is_notify {
                        self.metrics.frame_received(frame.kind);
                    }
                    self.on_frame(frame, out);
                    input.advance(total);
                    notifies += u64::from(is_notify);
                    if self.state == State::Closing {
                        break Step::Close;
                    }
                }
                Err(error) => {
                    input.advance(total);
                    let error = CodecError::from(error);
                    tracing::debug!(%error, "undecodable SPOP frame");
                    self.close(error.status(), out);
                    break Step::Close;
                }
            }
        };
        self.handler.end_batch();
        if notifies > 0 {
            let each = started.elapsed().as_secs_f64() / notifies as f64;
            for _ in 0..notifies {
                self.notify_seconds.observe(each);
            }
            self.notify_seconds.flush();
            self.metrics.notify_received.inc_by(notifies);
            if self.one_frame_per_write == Some(true) {
                crate::coalesce::record(notifies);
            }
        }
        if self.acks > 0 {
            self.metrics.ack_sent.inc_by(self.acks);
            self.acks = 0;
        }
        step
    }

    /// End the connection from our side: queue an AGENT-DISCONNECT with `status` (unless the
    /// handshake never happened and there is nothing to say) and move to Closing.
    pub fn close(&mut self, status: Status, out: &mut BytesMut) {
        if self.state == State::Closing {
            return;
        }
        // max-frame-size is ≥ 256 on both sides; a DISCONNECT with a table reason always fits.
        if Disconnect::agent(status)
            .encode(FrameType::AgentDisconnect, out, self.codec.max_frame_size())
            .is_ok()
        {
            self.metrics.frame_sent(FrameType::AgentDisconnect);
            self.metrics.disconnect(true, status);
        }
        self.state = State::Closing;
    }

    fn on_frame(&mut self, frame: FrameRef<'_>, out: &mut BytesMut) {
        match (self.state, frame.kind) {
            (_, FrameType::Unknown(_)) => {} // "Unknown frames may be silently skipped"
            (_, FrameType::HaproxyDisconnect) => {
                let status = Disconnect::parse(frame.payload)
                    .map(|d| d.status)
                    .unwrap_or(Status::UNKNOWN);
                self.metrics.disconnect(false, status);
                tracing::debug!(status = status.0, "HAPROXY-DISCONNECT received");
                // "HAProxy will wait an AGENT-DISCONNECT frame in reply."
                self.close(Status::NORMAL, out);
            }
            (State::AwaitHello, FrameType::HaproxyHello) => self.on_hello(&frame, out),
            (State::Ready, FrameType::Notify) => self.on_notify(&frame, out),
            // A NOTIFY before the HELLO, a second HELLO, or a frame type only agents send.
            _ => self.close(Status::INVALID, out),
        }
    }

    fn on_hello(&mut self, frame: &FrameRef<'_>, out: &mut BytesMut) {
        if !frame.flags.fin() {
            return self.close(Status::FRAGMENTATION, out);
        }
        let hello = match HaproxyHello::parse(frame.payload) {
            Ok(h) => h,
            Err(_) => return self.close(Status::INVALID, out),
        };
        let max = match hello.negotiate(self.ours_max) {
            Ok(m) => m,
            Err(status) => return self.close(status, out),
        };
        let reply = AgentHello {
            max_frame_size: max,
            capabilities: CAPABILITIES,
        };
        if reply.encode(out, max).is_err() {
            return self.close(Status::RESOURCE, out);
        }
        self.metrics.frame_sent(FrameType::AgentHello);
        self.codec.set_max_frame_size(max);
        if hello.healthcheck {
            // "the agent can safely close the connection without DISCONNECT frame".
            self.state = State::Closing;
        } else {
            self.state = State::Ready;
        }
    }

    fn on_notify(&mut self, frame: &FrameRef<'_>, out: &mut BytesMut) {
        // spop_conn_get_next_sid (3.1+): `(max_id + 1) | 1`, max_id starting at -1.
        self.one_frame_per_write.get_or_insert(frame.stream_id == 1);
        // 3.x: "the FIN flag must be set on all frames"; fragmentation was never negotiated.
        if !frame.flags.fin() {
            return self.close(Status::FRAGMENTATION, out);
        }
        if frame.flags.abort() {
            return; // an aborted (fragmented) NOTIFY expects no ACK
        }
        let notify = match Notify::parse(frame.payload) {
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(%error, sid = frame.stream_id, fid = frame.frame_id, "malformed NOTIFY");
                return self.close(Status::INVALID, out);
            }
        };
        let max = self.codec.max_frame_size();
        let mut ack = AckWriter::begin(out, frame.stream_id, frame.frame_id);
        self.handler.handle(&notify, &mut ack);
        if ack.finish(max).is_err() {
            // Too many messages to answer within max-frame-size: answer something that fits.
            let mut small = AckWriter::begin(out, frame.stream_id, frame.frame_id);
            small.push(crate::frame::Action::SetVar {
                scope: Scope::Txn,
                name: VAR_STATUS,
                value: TypedData::String(b"ack-too-big"),
            });
            if small.finish(max).is_err() {
                return self.close(Status::RESOURCE, out);
            }
        }
        self.acks += 1;
    }
}

/// Per-connection limits and deadlines.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionConfig {
    /// Our max-frame-size (256..=16380 is what HAProxy can use).
    pub max_frame_size: u32,
    /// NOTIFYs answered before the ACKs are flushed.
    pub max_inflight: usize,
    /// Deadline for the HAPROXY-HELLO, from accept.
    pub hello_timeout: Duration,
    /// A connection with nothing to read for this long is closed (AGENT-DISCONNECT status 2).
    pub idle_timeout: Duration,
    /// Deadline for one write.
    pub write_timeout: Duration,
    /// After shutdown: close once the connection has been quiet this long.
    pub drain_quiet: Duration,
    /// Once a frame has started arriving, the rest must follow within this time (status 2
    /// otherwise): a peer trickling a byte every few minutes must not hold a slot for ever.
    pub frame_timeout: Duration,
    /// After shutdown, a connection that never goes quiet (a busy, reused 3.x connection) is
    /// closed with AGENT-DISCONNECT after this long anyway; HAProxy fails open for what was cut.
    pub drain_max: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_frame_size: crate::frame::DEFAULT_MAX_FRAME_SIZE,
            max_inflight: 64,
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            drain_quiet: Duration::from_millis(100),
            frame_timeout: Duration::from_secs(30),
            drain_max: Duration::from_secs(2),
        }
    }
}

const READ_CHUNK: usize = 32 * 1024;

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// Write all of `buf` within `timeout`: `Err(None)` on timeout. The socket buffer almost always has
/// room, so the write is first tried without a timer; only a write that would block arms one.
async fn write_frames<S>(stream: &mut S, buf: &[u8], timeout: Duration) -> Result<(), Option<std::io::Error>>
where
    S: AsyncWrite + Unpin,
{
    let mut written = 0;
    while written < buf.len() {
        let attempt = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *stream).poll_write(cx, &buf[written..]) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        match attempt {
            Some(Ok(0)) => return Err(Some(std::io::ErrorKind::WriteZero.into())),
            Some(Ok(n)) => written += n,
            Some(Err(error)) => return Err(Some(error)),
            None => break,
        }
    }
    if written < buf.len() {
        return match tokio::time::timeout(timeout, stream.write_all(&buf[written..])).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        };
    }
    Ok(())
}

/// Serve one SPOP connection until it closes. After `shutdown`, the in-flight NOTIFYs are still
/// answered; the connection ends with AGENT-DISCONNECT (status 0) once it has gone quiet.
pub async fn serve_connection<S>(
    mut stream: S,
    agent: Arc<Agent>,
    cfg: ConnectionConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = agent.metrics().clone();
    let mut session = Session::new(agent, cfg.max_frame_size);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let hello_deadline = tokio::time::Instant::now() + cfg.hello_timeout;
    let mut draining = false;
    let mut drain_deadline = hello_deadline;
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut last_read = tokio::time::Instant::now();
    let mut got_input = false;
    // Created once: a fresh `cancelled()` per read would register and unregister a waiter on the
    // token (two lock round-trips) for every read batch.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // One timer per connection, moved only when it fires or when a deadline comes *earlier* than it
    // (a drain, a short configured timeout): a fresh timer per read would take the timer driver's
    // lock twice per read batch. When re-armed it never sleeps more than `recheck` ahead, so a frame
    // that starts arriving later is always checked in time without moving the timer.
    let recheck = cfg.frame_timeout.min(cfg.idle_timeout);
    let timer = tokio::time::sleep_until(hello_deadline);
    tokio::pin!(timer);
    loop {
        let unread = rbuf.len();
        let step = session.process(&mut rbuf, &mut wbuf, cfg.max_inflight.max(1));
        // A frame was decoded: whatever is left is the start of a new one.
        let consumed = rbuf.len() < unread;
        if !wbuf.is_empty() {
            match write_frames(&mut stream, &wbuf, cfg.write_timeout).await {
                Ok(()) => wbuf.clear(),
                Err(None) => {
                    tracing::debug!("SPOP write timed out");
                    return;
                }
                Err(Some(error)) => {
                    if !is_reset(&error) {
                        metrics.io_errors.inc();
                        tracing::debug!(%error, "SPOP write failed");
                    }
                    return;
                }
            }
        }
        match step {
            Step::Close => break,
            Step::Yield => continue,
            Step::NeedInput => {}
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        let now = tokio::time::Instant::now();
        if got_input {
            // Quiet time counts from the end of handling the last read.
            last_read = now;
            got_input = false;
        }
        // Bytes left over after processing are the start of an incomplete frame; its clock starts
        // when it does, not when an earlier frame of a busy connection did.
        partial_since = if rbuf.is_empty() {
            None
        } else if consumed {
            Some(now)
        } else {
            partial_since.or(Some(now))
        };
        // When the connection is due to be closed, as of now.
        let due = |state: State, draining: bool, partial_since: Option<tokio::time::Instant>| match state {
            State::AwaitHello => hello_deadline,
            _ if draining => (last_read + cfg.drain_quiet).min(drain_deadline),
            _ => {
                let idle = last_read + cfg.idle_timeout;
                partial_since.map_or(idle, |t| idle.min(t + cfg.frame_timeout))
            }
        };
        let deadline = due(session.state(), draining, partial_since);
        if now >= deadline {
            // Checked here too, not only by the timer: on a connection that always has data to
            // read, the biased read branch (and tokio's task budget) can keep the timer from being
            // polled, and `drain_max` exists precisely for such busy connections.
            let status = if draining { Status::NORMAL } else { Status::TIMEOUT };
            session.close(status, &mut wbuf);
            continue;
        }
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            r = stream.read_buf(&mut rbuf) => match r {
                Ok(0) => return, // EOF: a normal close (3.x may just close idle connections)
                Ok(_) => got_input = true,
                Err(error) => {
                    if !is_reset(&error) {
                        metrics.io_errors.inc();
                        tracing::debug!(%error, "SPOP read failed");
                    }
                    return;
                }
            },
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                let deadline = due(session.state(), draining, partial_since);
                if now < deadline {
                    // Not due yet (reads moved the deadline since the timer was armed).
                    timer.as_mut().reset(deadline.min(now + recheck));
                } else {
                    let status = if draining { Status::NORMAL } else { Status::TIMEOUT };
                    if session.state() == State::AwaitHello {
                        tracing::debug!("no HAPROXY-HELLO before the deadline");
                    }
                    session.close(status, &mut wbuf);
                }
            },
            _ = &mut cancelled, if !draining => {
                draining = true;
                let now = tokio::time::Instant::now();
                drain_deadline = now + cfg.drain_max;
                // The quiet period starts no earlier than the drain.
                last_read = now;
                if session.state() == State::AwaitHello {
                    session.close(Status::NORMAL, &mut wbuf);
                }
            }
        }
    }
    let _ = tokio::time::timeout(cfg.write_timeout, stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn write_frames_delivers_everything_to_a_slow_reader() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 100];
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                match theirs.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        write_frames(&mut ours, &data, Duration::from_secs(30))
            .await
            .expect("written");
        drop(ours);
        assert_eq!(reader.await.unwrap(), data);
    }

    #[tokio::test]
    async fn write_frames_times_out_when_the_peer_never_reads() {
        let (mut ours, _theirs) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let r = write_frames(&mut ours, &[7u8; 1000], Duration::from_millis(100)).await;
        assert!(matches!(r, Err(None)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn write_frames_reports_a_closed_peer() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let r = write_frames(&mut ours, &[7u8; 10], Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Some(_))), "{r:?}");
    }
}
