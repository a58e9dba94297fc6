//! One MLflow tag's successive values, published from a background task so the step
//! never waits on the tracking server.

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::mlflow::MlflowTags;

/// Publishes one tag's successive values on a background task: [`publish`](Self::publish)
/// never blocks, requests go out one at a time in order, and values superseded while a
/// request is in flight are skipped (the latest always wins).
#[derive(Debug)]
pub struct TagPublisher {
    latest: watch::Sender<Option<String>>,
    task: JoinHandle<()>,
}

impl TagPublisher {
    /// Starts the publishing task for `key` on the current Tokio runtime.
    pub fn spawn(tags: MlflowTags, key: String) -> anyhow::Result<TagPublisher> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("MLflow tags need a Tokio runtime to publish from")?;
        let (latest, mut updates) = watch::channel(None::<String>);
        let span = tracing::info_span!("mlflow_tag", key = %key, host = %tags.host());
        let task = runtime.spawn(
            async move {
                let mut last_error: Option<String> = None;
                // Ends once the publisher is gone and its last value has been sent.
                while updates.changed().await.is_ok() {
                    let Some(value) = updates.borrow_and_update().clone() else {
                        continue;
                    };
                    match tags.set_tag(&key, &value).await {
                        Ok(()) => {
                            tracing::debug!(value = %value, "MLflow run tag set");
                            last_error = None;
                        }
                        // One warning per distinct failure, not one per state change.
                        Err(err) if last_error.as_deref() == Some(&err.to_string()) => {
                            tracing::debug!("could not set MLflow run tag {key}: {err}");
                        }
                        Err(err) => {
                            tracing::warn!("could not set MLflow run tag {key}: {err}");
                            last_error = Some(err.to_string());
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(TagPublisher { latest, task })
    }

    /// Queues `value` to be sent; returns at once.
    pub fn publish(&self, value: impl Into<String>) {
        // Cannot fail: the task holds the receiver until the sender is dropped.
        let _ = self.latest.send(Some(value.into()));
    }

    /// Sends the last queued value (if not sent yet) and stops. Bounded by one request
    /// timeout per value still queued (at most two: the one in flight and the latest).
    pub async fn finish(self) {
        let TagPublisher { latest, task } = self;
        drop(latest);
        if let Err(err) = task.await {
            tracing::debug!("MLflow tag task ended abnormally: {err}");
        }
    }
}
