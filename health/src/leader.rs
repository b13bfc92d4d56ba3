//! Several checkers, one ledger writer. Every checker replica probes and answers HAProxy's agent
//! checks (the agent address is a Service: any replica may be asked, and all answer alike); only
//! the holder of a Postgres advisory lock writes state events to the ledger and runs self-healing
//! rotations, so each transition is recorded once. The lock lives with a session: when its holder
//! dies or loses the database, Postgres releases it and another replica takes it at its next try
//! (every [`TRY_EVERY`]).
//!
//! During a database outage the holder stays the writer (its events wait in the spool), and the
//! others cannot take the lock; when the database is back, the holder takes the lock again, or
//! learns that another one has it and stops writing. A replica starts as the writer until the
//! database first answers (so a lone checker started during an outage loses nothing): replicas
//! that start during an outage each write, and their transitions can be recorded twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use egress_ledger::AdvisoryLock;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

/// How often a replica without the lock tries to take it, and the holder checks its session.
pub const TRY_EVERY: Duration = Duration::from_secs(2);
/// Deadline of a connection attempt or a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this checker is the ledger writer. Cheap to clone and to ask.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// A checker alone: always the writer (no database, or a test).
    pub fn sole() -> Self {
        Leadership(Arc::new(AtomicBool::new(true)))
    }

    /// Elect through the ledger at `url` with advisory lock `key`, until `shutdown`. `gauge` is 1
    /// while this checker is the writer. It starts as the writer: until the database has answered
    /// once, writing (to the spool) is what loses nothing; the first answer settles the role.
    pub fn elect(url: String, key: i64, gauge: IntGauge, shutdown: CancellationToken) -> Self {
        let flag = Arc::new(AtomicBool::new(true));
        gauge.set(1);
        tokio::spawn(run(url, key, flag.clone(), gauge, shutdown));
        Leadership(flag)
    }

    /// Whether this checker writes the ledger now.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

async fn run(url: String, key: i64, flag: Arc<AtomicBool>, gauge: IntGauge, shutdown: CancellationToken) {
    let set = |leader: bool| {
        if flag.swap(leader, Ordering::Relaxed) != leader {
            tracing::info!(
                leader,
                "ledger writer: {}",
                if leader {
                    "this checker writes the ledger"
                } else {
                    "another checker writes the ledger"
                }
            );
        }
        gauge.set(i64::from(leader));
    };
    loop {
        let session = tokio::select! {
            () = shutdown.cancelled() => return,
            c = tokio::time::timeout(QUERY_TIMEOUT, AdvisoryLock::connect(&url)) => c,
        };
        if let Ok(Ok(mut session)) = session {
            let mut held = false;
            loop {
                // Holding the lock: only check that the session (and so the lock) still lives.
                let step = async {
                    if held {
                        session.ping().await.map(|()| true)
                    } else {
                        session.try_take(key).await
                    }
                };
                match tokio::time::timeout(QUERY_TIMEOUT, step).await {
                    Ok(Ok(got)) => {
                        held = got;
                        set(held);
                    }
                    // The session is gone, and the lock with it; keep the role until the next
                    // session says otherwise (during an outage nobody else can take it).
                    _ => break,
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(TRY_EVERY) => {}
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TRY_EVERY) => {}
        }
    }
}
