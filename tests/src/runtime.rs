//! One tokio runtime, on its own threads, for the in-process servers (echo, fault backends), so that
//! sync tests and async tests (on their own runtimes) can use them alike.

use std::sync::OnceLock;

pub(crate) fn handle() -> anyhow::Result<tokio::runtime::Handle> {
    static RT: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("egress-harness")
            .enable_all()
            .build()
    });
    match rt {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(anyhow::anyhow!("starting the harness runtime: {e}")),
    }
}

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped thread, so that callers
/// inside or outside a tokio runtime can both block on it.
pub(crate) fn block_on<F, T>(fut: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(fut)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("harness helper thread panicked"))?
    })
}
