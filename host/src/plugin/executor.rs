//! Where plugin calls run: a fixed set of dedicated threads, fed by one
//! queue — never tokio's async workers, never its blocking pool.
//!
//! - Not the async workers: WASI's synchronous bindings (a guest's panic
//!   message, a `println!`) bridge into async code with `block_on`, which
//!   panics on a tokio worker; and a call that spins until its time limit must
//!   not stall the streams a worker relays. These threads carry no runtime
//!   context, so WASI uses its own.
//! - Not `spawn_blocking`: under load, one blocking task per request grew the
//!   blocking pool to dozens of threads and spent a third of the CPU waking
//!   them. Here the threads are made once; a request costs one queue push
//!   and one wake-up of the task awaiting the answer.
//!
//! Per-plugin call slots ([`super::slots`]) bound how many of these threads one
//! plugin can hold; there are twice as many threads as CPUs (at least four), so
//! a plugin spinning on all of its default slots leaves threads for the others.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// The process's plugin threads and their queue. A plain mutex and condition
/// variable: an idle thread sleeps until a job comes, and never spins (a
/// spinning channel's idle threads took CPU from the async workers on small
/// machines).
struct Executor {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

/// The call was lost: its thread died (a bug in llamagate, caught and logged).
#[derive(Debug, thiserror::Error)]
#[error("the plugin call was lost (llamagate bug; see the log)")]
pub struct CallLost;

impl Executor {
    fn submit(&self, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        self.ready.notify_one();
    }

    fn next(&self) -> Job {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = queue.pop_front() {
                return job;
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn executor() -> &'static Executor {
    static EXECUTOR: OnceLock<Executor> = OnceLock::new();
    static STARTED: std::sync::Once = std::sync::Once::new();
    let executor = EXECUTOR.get_or_init(|| Executor {
        queue: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    });
    STARTED.call_once(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .max(4);
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("llamagate-plugin-{i}"))
                .spawn(move || loop {
                    let job = executor.next();
                    // A panic is a host bug: keep the thread, lose the call.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a plugin call panicked in llamagate; the request fails");
                    }
                })
                .expect("starting a plugin thread");
        }
    });
    executor
}

/// Runs `work` (one plugin call, or a listing's chain) on a plugin thread and
/// awaits its result without holding an async worker.
pub async fn off_thread<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CallLost> {
    let (done, result) = tokio::sync::oneshot::channel();
    executor().submit(Box::new(move || {
        let _ = done.send(work());
    }));
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
