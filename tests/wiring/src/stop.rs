//! Stopping the background loops (pumps, ticker) cleanly.

use std::future::Future;

use tokio::{sync::watch, task::JoinHandle};

/// Stops a background pump or ticker and waits for it to finish its current step.
pub struct StopHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StopHandle {
    /// Spawns `run`, which should return soon after its receiver turns `true`.
    pub(crate) fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(stopped));
        StopHandle { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
