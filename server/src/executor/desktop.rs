//! A desktop node: the machine belongs to someone working at it, so its
//! owner comes first. Jobs run at idle priority (`priority`); a sampler
//! watches the owner's load and free memory (`owner_load` decides) and sets
//! the slots admission offers, which every load report carries, so the
//! gatekeeper and direct clients send new work elsewhere; with reclaim,
//! repeatable jobs are given back when the owner needs the whole machine,
//! ending as a lost node's jobs do, so their clients rerun them elsewhere.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::admission::Admission;
use super::load;
use super::owner_load::{DesktopPolicy, Offer, OwnerTracker, Sample, SAMPLE_EVERY};
use super::procfs;

/// A desktop node's view of its owner, shared by the sampler, the load
/// reports and the jobs.
#[derive(Debug)]
pub struct Desktop {
    policy: DesktopPolicy,
    offer: Mutex<Offer>,
    reclaiming: watch::Sender<bool>,
}

impl Desktop {
    /// A desktop node that offers every slot until its first sample.
    pub fn new(policy: DesktopPolicy) -> Arc<Desktop> {
        Arc::new(Desktop {
            policy,
            offer: Mutex::new(Offer {
                slots: policy.slots,
                ..Offer::default()
            }),
            reclaiming: watch::channel(false).0,
        })
    }

    /// What the node offers now, and why.
    pub fn offer(&self) -> Offer {
        self.offer.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resolves when a job that is `repeatable` is to be given back; never
    /// for other jobs, or without reclaim.
    pub async fn reclaimed(&self, repeatable: bool) {
        if !repeatable || self.policy.reclaim_after.is_none() {
            return std::future::pending().await;
        }
        let mut reclaiming = self.reclaiming.subscribe();
        if reclaiming.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Starts sampling the owner's load every `SAMPLE_EVERY`, keeping the
    /// offer and admission up to date, until the task is aborted.
    pub fn start(self: &Arc<Self>, admission: Arc<Admission>) -> JoinHandle<()> {
        let desktop = self.clone();
        tokio::spawn(async move {
            let mut tracker = OwnerTracker::new(desktop.policy);
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let running = admission.counts().running;
                let sample = tokio::task::spawn_blocking(move || sample(running))
                    .await
                    .unwrap_or(Sample {
                        owner_runnable: 0.0,
                        mem_available_bytes: None,
                    });
                desktop.update(tracker.sample(sample, Instant::now()), &admission);
            }
        })
    }

    fn update(&self, offer: Offer, admission: &Admission) {
        let (slots, reclaiming, owner_load) = (offer.slots, offer.reclaiming, offer.owner_load);
        let before = std::mem::replace(
            &mut *self.offer.lock().unwrap_or_else(|e| e.into_inner()),
            offer,
        );
        if before.slots != slots || before.reclaiming != reclaiming {
            tracing::info!(
                offered = slots,
                reclaiming,
                owner_load = format!("{owner_load:.2}"),
                "desktop offer changed"
            );
        }
        self.reclaiming
            .send_if_modified(|r| std::mem::replace(r, reclaiming) != reclaiming);
        // Announces the change, so membership and WatchLoad report it now.
        admission.set_offered(slots);
    }
}

/// The machine now: runnable tasks that are neither this daemon's nor its
/// jobs' (everything the jobs start descends from the daemon), and free
/// memory. Without children lists the 1-minute estimate has to do.
fn sample(running: u32) -> Sample {
    let owner_runnable = match procfs::runnable_tasks() {
        Some(all) if procfs::lists_children() => {
            let ours = procfs::runnable_tasks_in_tree(std::process::id());
            f64::from(all.saturating_sub(ours))
        }
        _ => load::foreign_load(procfs::load_average_1m().unwrap_or(0.0), running),
    };
    Sample {
        owner_runnable,
        mem_available_bytes: procfs::meminfo_bytes("MemAvailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn desktop(reclaim_after: Option<Duration>) -> Arc<Desktop> {
        Desktop::new(DesktopPolicy {
            slots: 2,
            cores: 2,
            min_available_bytes: 0,
            reclaim_after,
        })
    }

    #[tokio::test]
    async fn only_repeatable_jobs_are_reclaimed_and_only_with_reclaim() {
        let d = desktop(Some(Duration::ZERO));
        let a = Admission::new(2, 2);
        let busy = Offer {
            slots: 0,
            reclaiming: true,
            ..Offer::default()
        };
        d.update(busy, &a);
        assert_eq!(a.counts().offered, 0);
        let quick = Duration::from_millis(50);
        assert!(tokio::time::timeout(quick, d.reclaimed(true)).await.is_ok());
        assert!(tokio::time::timeout(quick, d.reclaimed(false))
            .await
            .is_err());
        let no_reclaim = desktop(None);
        no_reclaim.update(
            Offer {
                reclaiming: true,
                ..Offer::default()
            },
            &a,
        );
        assert!(tokio::time::timeout(quick, no_reclaim.reclaimed(true))
            .await
            .is_err());
    }
}
