//! SIGTERM and SIGINT into a cancellation token: the first phase of a two-phase shutdown.

use tokio_util::sync::CancellationToken;

/// Cancel `token` on the first SIGTERM or SIGINT. Returns once the token is cancelled.
pub async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; shutdown only on token");
            token.cancelled().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        _ = token.cancelled() => {}
    }
    token.cancel();
}
