//! Reading NOTIFYs and writing ACKs in batches when HAProxy sends one frame per `send()`.
//!
//! HAProxy 3.1+ (mux-spop) writes each NOTIFY as soon as its stream has one, with its own `send()`
//! (`spop_snd_buf` → `spop_send`, src/mux_spop.c; TCP_NODELAY), where 2.6 packed up to 20 per write.
//! An agent that reads as soon as a socket is readable then gets about one frame per read and
//! answers it with one write: measured on 3.4.7, 1.5 syscalls per message, each a whole trip
//! through the loopback TCP stack, and 88 % of the agent's CPU in the kernel (docs/spoa-figures.md).
//!
//! So, when the runtime's worker is about to park after a turn that answered at least
//! [`MIN_BATCH`] NOTIFYs on such connections (frames arrive as a stream, not one by one), it first
//! sleeps for the coalescing window: what arrives meanwhile, on every connection, is read in one read per
//! connection and answered in one write. A quiet agent (one NOTIFY per wake-up) never waits, so its
//! latency is unchanged; a busy one adds at most the window to a message's answer, far inside
//! `timeout processing`. HAProxy reads every ACK of one read in one pass (`spop_process_demux`), so
//! it does less work too. HAProxy 2.6 batches its own writes and waits for ACKs to free its
//! per-connection slots (a wait there costs it throughput, measured): its connections never ask for
//! the window (see `Session`, `one_frame_per_write`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// NOTIFYs answered in one worker turn from which the next park waits for the window.
pub const MIN_BATCH: u64 = 2;

/// NOTIFYs answered by this process so far (one agent per process).
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// Counts `n` answered NOTIFYs of a connection that sends one frame per write (once per read batch).
pub fn record(n: u64) {
    ANSWERED.fetch_add(n, Ordering::Relaxed);
}

/// The runtime's `on_thread_park` hook for a coalescing `window` (zero: never waits).
pub fn park_hook(window: Duration) -> impl Fn() + Send + Sync + 'static {
    let seen = AtomicU64::new(0);
    move || {
        let now = ANSWERED.load(Ordering::Relaxed);
        let before = seen.swap(now, Ordering::Relaxed);
        if !window.is_zero() && streaming(before, now) {
            std::thread::sleep(window);
        }
    }
}

/// Whether the turn between two parks, which saw the answered-NOTIFY count go from `before` to
/// `now`, answered a stream of them (at least [`MIN_BATCH`]) rather than a lone one.
pub fn streaming(before: u64, now: u64) -> bool {
    now.wrapping_sub(before) >= MIN_BATCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_notify_never_waits_a_stream_does() {
        assert!(!streaming(10, 10));
        assert!(!streaming(10, 11));
        assert!(streaming(10, 12));
        assert!(streaming(u64::MAX, 1), "the counter may wrap");
    }

    #[test]
    fn a_zero_window_never_sleeps() {
        record(1000);
        let hook = park_hook(Duration::ZERO);
        let t = std::time::Instant::now();
        hook();
        hook();
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
