//! Admission: at most `slots` jobs run, at most `max_queued` wait, the rest
//! are refused so the client goes elsewhere. A desktop node may offer fewer
//! slots than it has (`set_offered`): new jobs then start only while fewer
//! than the offered number run, and with none offered nothing is admitted;
//! running jobs are never stopped for it. Every change is announced so
//! load watchers see it at once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// A node's admission state, shared by all its jobs.
#[derive(Debug)]
pub struct Admission {
    slots: u32,
    max_queued: u32,
    /// Slots offered now: `slots`, or fewer on a desktop whose owner works.
    offered: AtomicU32,
    permits: Arc<Semaphore>,
    running: AtomicU32,
    queued: AtomicU32,
    jobs_done: AtomicU64,
    draining: AtomicBool,
    changed: watch::Sender<u64>,
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is shutting down.
    Draining,
    /// Every slot is busy and the queue is full.
    Full { running: u32, queued: u32 },
}

/// A job that got in: either it holds a slot, or it waits in the queue.
#[derive(Debug)]
pub enum Ticket {
    /// A slot is free; the job may start.
    Slot(SlotGuard),
    /// The job waits; `wait_for_slot` turns this into a slot.
    Queued(QueueGuard),
}

/// Holds a slot while the job runs; frees it on drop.
#[derive(Debug)]
pub struct SlotGuard {
    admission: Arc<Admission>,
    _permit: OwnedSemaphorePermit,
}

/// Holds a place in the queue; gives it up on drop.
#[derive(Debug)]
pub struct QueueGuard {
    admission: Arc<Admission>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub slots: u32,
    pub offered: u32,
    pub running: u32,
    pub queued: u32,
    pub max_queued: u32,
    pub jobs_done: u64,
    pub draining: bool,
}

impl Admission {
    /// A node with `slots` slots and room for `max_queued` waiting jobs.
    pub fn new(slots: u32, max_queued: u32) -> Arc<Self> {
        Arc::new(Admission {
            slots,
            max_queued,
            offered: AtomicU32::new(slots),
            permits: Arc::new(Semaphore::new(slots as usize)),
            running: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            jobs_done: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            changed: watch::channel(0).0,
        })
    }

    /// Admits a job to a slot or the queue, or refuses it.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            if let Ok(slot) = self.try_start(permit) {
                return Ok(Ticket::Slot(slot));
            }
        }
        if self.offered() == 0 {
            // A desktop whose owner needs it: nothing waits here either.
            return Err(self.full());
        }
        let took_place = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued).then_some(q + 1)
            })
            .is_ok();
        if !took_place {
            return Err(self.full());
        }
        self.announce();
        Ok(Ticket::Queued(QueueGuard {
            admission: self.clone(),
        }))
    }

    fn full(&self) -> Refusal {
        Refusal::Full {
            running: self.running.load(Ordering::Acquire),
            queued: self.queued.load(Ordering::Acquire),
        }
    }

    /// Starts a job on `permit` if fewer than the offered slots are busy;
    /// counting and checking are one step, so two jobs cannot both take
    /// the last offered slot. The permit comes back when none is free.
    fn try_start(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> Result<SlotGuard, OwnedSemaphorePermit> {
        let counted = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r < self.offered()).then_some(r + 1)
            });
        if counted.is_err() {
            return Err(permit);
        }
        self.announce();
        Ok(SlotGuard {
            admission: self.clone(),
            _permit: permit,
        })
    }

    /// Offers `offered` of the slots (at most all of them); announced when
    /// it changes.
    pub fn set_offered(&self, offered: u32) {
        let offered = offered.min(self.slots);
        if self.offered.swap(offered, Ordering::AcqRel) != offered {
            self.announce();
        }
    }

    fn offered(&self) -> u32 {
        self.offered.load(Ordering::Acquire)
    }

    /// Stops admitting; queued jobs are told to go elsewhere.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.announce();
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            slots: self.slots,
            offered: self.offered(),
            running: self.running.load(Ordering::Acquire),
            queued: self.queued.load(Ordering::Acquire),
            max_queued: self.max_queued,
            jobs_done: self.jobs_done.load(Ordering::Acquire),
            draining: self.is_draining(),
        }
    }

    /// A receiver that wakes on every change of the counters.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves once no job runs or waits.
    pub async fn idle(&self) {
        let mut changes = self.subscribe();
        loop {
            let c = self.counts();
            if c.running == 0 && c.queued == 0 {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wakes the load streams: something they report changed.
    pub fn announce(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }
}

impl QueueGuard {
    /// Waits for a slot (first come, first served). Returns `None` when the
    /// node starts draining, or stops offering slots, first: the job should
    /// go elsewhere.
    pub async fn wait_for_slot(self) -> Option<SlotGuard> {
        let admission = self.admission.clone();
        let mut changes = admission.subscribe();
        // One acquire future for the whole wait keeps our place in the
        // semaphore's first-come, first-served queue.
        let acquire = admission.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let gone = |a: &Admission| a.is_draining() || a.offered() == 0;
        let mut permit = loop {
            if gone(&admission) {
                return None;
            }
            tokio::select! {
                biased;
                permit = &mut acquire => break permit.ok()?,
                _ = changes.changed() => {}
            }
        };
        // With fewer slots offered than there are, the first in the queue
        // holds its permit until one of the offered slots frees.
        let slot = loop {
            match admission.try_start(permit) {
                Ok(slot) => break slot,
                Err(back) => permit = back,
            }
            if gone(&admission) || changes.changed().await.is_err() {
                return None;
            }
        };
        // The job leaves the queue (dropping self) as it has taken the slot.
        drop(self);
        Some(slot)
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.admission.queued.fetch_sub(1, Ordering::AcqRel);
        self.admission.announce();
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.admission.running.fetch_sub(1, Ordering::AcqRel);
        self.admission.jobs_done.fetch_add(1, Ordering::AcqRel);
        self.admission.announce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_then_queue_then_refusal() {
        let a = Admission::new(2, 1);
        let s1 = a.admit().unwrap();
        let _s2 = a.admit().unwrap();
        assert!(matches!(s1, Ticket::Slot(_)));
        let q = match a.admit().unwrap() {
            Ticket::Queued(q) => q,
            Ticket::Slot(_) => panic!("third job must queue"),
        };
        assert_eq!(
            a.admit().unwrap_err(),
            Refusal::Full {
                running: 2,
                queued: 1
            }
        );
        let c = a.counts();
        assert_eq!((c.running, c.queued), (2, 1));

        let waiter = tokio::spawn(q.wait_for_slot());
        drop(s1);
        let slot = waiter.await.unwrap().expect("a slot was freed");
        let c = a.counts();
        assert_eq!((c.running, c.queued, c.jobs_done), (2, 0, 1));
        drop(slot);
        assert_eq!(a.counts().running, 1);
    }

    #[tokio::test]
    async fn draining_refuses_new_jobs_and_releases_the_queue() {
        let a = Admission::new(1, 4);
        let slot = a.admit().unwrap();
        let Ticket::Queued(q) = a.admit().unwrap() else {
            panic!("second job must queue")
        };
        let waiter = tokio::spawn(q.wait_for_slot());
        a.start_draining();
        assert!(waiter.await.unwrap().is_none());
        assert_eq!(a.admit().unwrap_err(), Refusal::Draining);
        assert_eq!(a.counts().queued, 0);
        let idle = tokio::spawn({
            let a = a.clone();
            async move { a.idle().await }
        });
        drop(slot);
        idle.await.unwrap();
        assert_eq!(a.counts().running, 0);
    }

    #[tokio::test]
    async fn fewer_offered_slots_admit_fewer_and_none_admits_nothing() {
        let a = Admission::new(3, 2);
        a.set_offered(1);
        let first = a.admit().unwrap();
        assert!(matches!(first, Ticket::Slot(_)));
        let Ticket::Queued(q) = a.admit().unwrap() else {
            panic!("one slot offered: the second job waits")
        };
        let waiter = tokio::spawn(q.wait_for_slot());
        drop(first);
        let second = waiter.await.unwrap().expect("the offered slot freed");
        assert_eq!(a.counts().running, 1);

        // Running jobs stay when the offer falls to nothing; waiting ones
        // and new ones go elsewhere.
        let Ticket::Queued(q) = a.admit().unwrap() else {
            panic!("third job must queue")
        };
        let waiter = tokio::spawn(q.wait_for_slot());
        a.set_offered(0);
        assert!(waiter.await.unwrap().is_none());
        assert!(matches!(a.admit(), Err(Refusal::Full { running: 1, .. })));
        let c = a.counts();
        assert_eq!((c.running, c.queued, c.offered), (1, 0, 0));
        drop(second);
        a.set_offered(7);
        assert_eq!(a.counts().offered, 3, "never more than the slots");
        assert!(matches!(a.admit().unwrap(), Ticket::Slot(_)));
    }
}
