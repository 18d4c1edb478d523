//! Where queries run: on a runtime of their own, so that a long or heavy
//! query never keeps the server's network runtime from accepting
//! connections, finishing TLS handshakes and answering other sessions.
//!
//! DataFusion runs a plan in the task that polls it, and the tasks it
//! spawns land on that task's runtime; spawning the whole execution onto
//! the query runtime therefore moves all of its CPU work there. The
//! operating system shares the cores between both runtimes' threads, and
//! the network threads, idle most of the time, get them at once when a
//! packet arrives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect};
use tokio::runtime::Handle;
use tokio::task::{JoinError, JoinHandle};

/// The runtime queries run on; `None` runs them in the caller's task.
#[derive(Debug, Clone, Default)]
pub struct QueryExecutor {
    runtime: Option<Handle>,
}

impl QueryExecutor {
    /// Queries run on `runtime`.
    pub fn on(runtime: Handle) -> Self {
        Self { runtime: Some(runtime) }
    }

    /// Runs `plan` to completion. When the caller stops waiting (the
    /// statement is cancelled, the connection drops), the query is aborted.
    pub async fn collect(&self, plan: Arc<dyn ExecutionPlan>, task: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
        self.run(collect(plan, task)).await
    }

    /// Runs `work` on the query runtime, aborting it when dropped.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match &self.runtime {
            None => work.await,
            Some(runtime) => AbortOnDrop(runtime.spawn(work))
                .await
                .map_err(|e| DataFusionError::Execution(format!("the query stopped: {}", join_error_text(&e))))?,
        }
    }
}

fn join_error_text(e: &JoinError) -> String {
    if e.is_cancelled() {
        "it was cancelled".into()
    } else {
        "it panicked (a bug; the server keeps running)".into()
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn work_runs_on_the_query_runtime_and_is_aborted_when_the_caller_stops_waiting() {
        let queries = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("query")
            .enable_all()
            .build()
            .unwrap();
        let network = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let executor = QueryExecutor::on(queries.handle().clone());
        let name = network.block_on(executor.run(async { Ok(std::thread::current().name().map(str::to_owned)) }));
        assert_eq!(name.unwrap().as_deref(), Some("query"));

        // A caller that gives up (timeout) aborts the work.
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let waited = network.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(50),
                executor.run(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    flag.store(true, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await
        });
        assert!(waited.is_err(), "the caller timed out");
        std::thread::sleep(Duration::from_millis(500));
        assert!(!finished.load(Ordering::SeqCst), "the abandoned query was aborted");
    }
}
