//! The one drain primitive (after ztunnel's `drain.rs`): a [`Trigger`] that starts the drain and
//! waits for it, and cloneable [`Watch`]es held by accept loops and connections. A holder of a
//! `Watch` stops taking new work when it is signalled, finishes what it has, then drops the
//! `Watch`; the drain is over when every `Watch` is gone or the grace period has passed.

use std::time::Duration;
use tokio::sync::watch;

/// Starts the drain.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
    status: Status,
}

/// Whether the drain has started, for those who only report it (`/ready`): unlike a
/// [`Watch`], holding one does not delay the end of the drain.
#[derive(Debug, Clone, Default)]
pub struct Status(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Status {
    pub fn is_draining(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Told when the drain starts. Keep it until the work it guards is done.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

pub fn new() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (
        Trigger {
            tx,
            status: Status::default(),
        },
        Watch { rx },
    )
}

// === impl Trigger ===

impl Trigger {
    /// Signals every watch, then waits until all of them are dropped or `grace` has passed.
    /// Returns whether everything finished in time.
    pub async fn drain(self, grace: Duration) -> bool {
        self.status
            .0
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.tx.send(true);
        tokio::time::timeout(grace, self.tx.closed()).await.is_ok()
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// How many watches are still held (accept loops and open connections).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}

// === impl Watch ===

impl Watch {
    /// Resolves once the drain has started (at once if it already has). Cancel-safe.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone, which also means "stop".
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watches_and_gives_up_after_the_grace_period() {
        let (trigger, watch) = new();
        let held = watch.clone();
        let task = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        drop(watch);
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.ok();

        let (trigger, watch) = new();
        let stuck = watch.clone();
        drop(watch);
        assert!(!trigger.drain(Duration::from_millis(20)).await);
        assert!(stuck.is_draining());
    }
}
