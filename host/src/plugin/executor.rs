//! Where plugin calls run: a fixed set of dedicated threads, fed by one
//! channel — never tokio's async workers, never its blocking pool.
//!
//! - Not the async workers: WASI's synchronous bindings (a guest's panic
//!   message, a `println!`) bridge into async code with `block_on`, which
//!   panics on a tokio worker; and a call that spins until its time limit must
//!   not stall the streams a worker relays. These threads carry no runtime
//!   context, so WASI uses its own.
//! - Not `spawn_blocking`: under load, one blocking task per request grew the
//!   blocking pool to dozens of threads and spent a third of the CPU waking
//!   them. Here the threads are made once; a request costs one channel send
//!   and one wake-up of the task awaiting the answer.
//!
//! Per-plugin call slots ([`super::slots`]) bound how many of these threads one
//! plugin can hold; there are twice as many threads as CPUs (at least four), so
//! a plugin spinning on all of its default slots leaves threads for the others.

use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// The process's plugin threads.
struct Executor {
    jobs: Sender<Job>,
}

/// The call was lost: its thread died (a bug in llamagate, caught and logged).
#[derive(Debug, thiserror::Error)]
#[error("the plugin call was lost (llamagate bug; see the log)")]
pub struct CallLost;

fn executor() -> &'static Executor {
    static EXECUTOR: OnceLock<Executor> = OnceLock::new();
    EXECUTOR.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .max(4);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let queue: Receiver<Job> = queue.clone();
            std::thread::Builder::new()
                .name(format!("llamagate-plugin-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        // A panic is a host bug: keep the thread, lose the call.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!(
                                "a plugin call panicked in llamagate; the request fails"
                            );
                        }
                    }
                })
                .expect("starting a plugin thread");
        }
        Executor { jobs }
    })
}

/// Runs `work` (one plugin call, or a listing's chain) on a plugin thread and
/// awaits its result without holding an async worker.
pub async fn off_thread<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CallLost> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    executor().jobs.send(job).map_err(|_| CallLost)?;
    result.await.map_err(|_| CallLost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_off_the_async_workers_on_named_threads() {
        let name = off_thread(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("llamagate-plugin-"));
        // No runtime context there: WASI's `block_on` bridge works.
        assert!(
            off_thread(|| tokio::runtime::Handle::try_current().is_err())
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_panicking_call_is_lost_but_the_threads_live_on() {
        assert!(off_thread(|| panic!("bug")).await.is_err());
        for _ in 0..32 {
            assert_eq!(off_thread(|| 2 + 2).await.unwrap(), 4);
        }
    }
}
