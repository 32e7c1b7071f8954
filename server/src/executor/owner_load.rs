//! Deciding what a desktop node offers, from samples of its owner's load
//! and free memory: no I/O here, so tests drive it with made-up samples.
//!
//! The owner's load is the number of runnable tasks that are not ours,
//! sampled every `SAMPLE_EVERY` and smoothed with an exponential moving
//! average: quickly as it rises (`RISING`), so new work goes elsewhere
//! within about a second of the owner starting something, slowly as it
//! falls (`FALLING`), so a pause between two of the owner's compiles does
//! not bring farm work back at once. The node offers its slots in proportion to the
//! cores the owner leaves free; a count changes only once the figure has
//! moved `HYSTERESIS` past the point where rounding would change it, so a
//! load hovering at a boundary does not flap the offer, and grows only
//! after `GROW_AFTER`, so an owner whose work comes and goes does not
//! either.

use std::time::{Duration, Instant};

/// How often the owner's load is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The time constant of the moving average while the owner's load rises: a
/// step is 63 % through after this long, 86 % after twice as long.
pub const RISING: Duration = Duration::from_millis(500);
/// The time constant while it falls.
pub const FALLING: Duration = Duration::from_millis(1500);
/// How far past a rounding boundary the offer must be before it changes,
/// in slots.
pub const HYSTERESIS: f64 = 0.2;
/// The offer shrinks at once but grows only once it could have grown for
/// this long: an owner whose load comes and goes does not flap it, and a
/// lease granted on a brief dip does not meet a refusal.
pub const GROW_AFTER: Duration = Duration::from_secs(1);
/// Memory counts as short again only once it is this much above the
/// threshold, so one freed job does not flip it straight back.
const MEMORY_RECOVERED: f64 = 1.25;

/// What a desktop node watches for, and how it reacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesktopPolicy {
    /// The node's slots (its offer when the owner is idle).
    pub slots: u32,
    /// Online CPUs: the owner's load is measured against them.
    pub cores: u32,
    /// Below this much available memory the node admits nothing.
    pub min_available_bytes: u64,
    /// With reclaim: how long the owner must need the whole machine (or
    /// memory be short) before repeatable jobs are given back.
    pub reclaim_after: Option<Duration>,
}

/// One sample of the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Runnable tasks that are not ours, now.
    pub owner_runnable: f64,
    /// Available memory, when known.
    pub mem_available_bytes: Option<u64>,
}

/// What the node offers now, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    /// The smoothed owner's load.
    pub owner_load: f64,
    /// Slots offered: 0 up to `slots`.
    pub slots: u32,
    /// Why fewer than all; empty when all.
    pub reason: String,
    /// Whether repeatable jobs are to be given back now.
    pub reclaiming: bool,
}

/// The state carried from one sample to the next.
#[derive(Debug, Clone)]
pub struct OwnerTracker {
    policy: DesktopPolicy,
    load: f64,
    last: Option<Instant>,
    cpu_offer: u32,
    /// Since when the offer could have grown.
    grow_since: Option<Instant>,
    memory_short: bool,
    /// Since when the owner has left no slot to offer (or memory is short).
    wanted_since: Option<Instant>,
}

impl OwnerTracker {
    /// A tracker that starts out offering every slot.
    pub fn new(policy: DesktopPolicy) -> OwnerTracker {
        OwnerTracker {
            policy,
            load: 0.0,
            last: None,
            cpu_offer: policy.slots,
            grow_since: None,
            memory_short: false,
            wanted_since: None,
        }
    }

    /// Takes a sample made at `now` and returns the offer after it.
    pub fn sample(&mut self, sample: Sample, now: Instant) -> Offer {
        let dt = self.last.map_or(SAMPLE_EVERY, |last| now - last);
        self.last = Some(now);
        let now_load = sample.owner_runnable.max(0.0);
        let tau = if now_load > self.load {
            RISING
        } else {
            FALLING
        };
        let weight = 1.0 - (-dt.as_secs_f64() / tau.as_secs_f64()).exp();
        self.load += (now_load - self.load) * weight;
        self.cpu_offer = self.damped(offer_for(&self.policy, self.load, self.cpu_offer), now);
        self.memory_short =
            memory_short(&self.policy, sample.mem_available_bytes, self.memory_short);
        let wanted = self.memory_short || self.cpu_offer == 0;
        self.wanted_since = if wanted {
            self.wanted_since.or(Some(now))
        } else {
            None
        };
        let reclaiming = match (self.policy.reclaim_after, self.wanted_since) {
            (Some(hold), Some(since)) => now - since >= hold,
            _ => false,
        };
        let (slots, reason) = if self.memory_short {
            let mib = sample.mem_available_bytes.unwrap_or(0) >> 20;
            (0, format!("memory: {mib} MiB available"))
        } else if self.cpu_offer < self.policy.slots {
            (self.cpu_offer, format!("owner load {:.1}", self.load))
        } else {
            (self.cpu_offer, String::new())
        };
        Offer {
            owner_load: self.load,
            slots,
            reason,
            reclaiming,
        }
    }
}

impl OwnerTracker {
    /// `proposed` applied at once when it shrinks the offer, after
    /// `GROW_AFTER` when it grows it.
    fn damped(&mut self, proposed: u32, now: Instant) -> u32 {
        if proposed <= self.cpu_offer {
            self.grow_since = None;
            return proposed;
        }
        let since = *self.grow_since.get_or_insert(now);
        if now - since >= GROW_AFTER {
            self.grow_since = None;
            proposed
        } else {
            self.cpu_offer
        }
    }
}

/// The slots to offer with the owner at `load`, moving from `current`
/// only past the hysteresis band.
pub fn offer_for(policy: &DesktopPolicy, load: f64, current: u32) -> u32 {
    let cores = f64::from(policy.cores.max(1));
    let slots = f64::from(policy.slots);
    let target = (slots * (cores - load) / cores).clamp(0.0, slots);
    if (target - f64::from(current)).abs() <= 0.5 + HYSTERESIS {
        current.min(policy.slots)
    } else {
        target.round() as u32
    }
}

fn memory_short(policy: &DesktopPolicy, available: Option<u64>, was_short: bool) -> bool {
    let Some(available) = available else {
        return was_short;
    };
    let threshold = policy.min_available_bytes as f64;
    if was_short {
        (available as f64) < threshold * MEMORY_RECOVERED
    } else {
        (available as f64) < threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(reclaim_after: Option<Duration>) -> DesktopPolicy {
        DesktopPolicy {
            slots: 4,
            cores: 4,
            min_available_bytes: 100 << 20,
            reclaim_after,
        }
    }

    fn sample(owner: f64) -> Sample {
        Sample {
            owner_runnable: owner,
            mem_available_bytes: Some(1 << 30),
        }
    }

    /// Feeds `owner` for `secs` seconds of samples and returns the last offer.
    fn feed(t: &mut OwnerTracker, start: &mut Instant, owner: f64, secs: f64) -> Offer {
        let steps = (secs / SAMPLE_EVERY.as_secs_f64()).round() as u32;
        let mut offer = Offer::default();
        for _ in 0..steps {
            *start += SAMPLE_EVERY;
            offer = t.sample(sample(owner), *start);
        }
        offer
    }

    #[test]
    fn the_offer_shrinks_with_the_owners_load_and_grows_back() {
        let mut t = OwnerTracker::new(policy(None));
        let mut now = Instant::now();
        assert_eq!(feed(&mut t, &mut now, 0.0, 1.0).slots, 4);
        let busy = feed(&mut t, &mut now, 4.0, 5.0);
        assert_eq!(busy.slots, 0);
        assert!(busy.reason.starts_with("owner load "), "{}", busy.reason);
        assert!(!busy.reclaiming, "no reclaim unless asked for");
        let half = feed(&mut t, &mut now, 2.0, 5.0);
        assert_eq!(half.slots, 2);
        let idle = feed(&mut t, &mut now, 0.0, 8.0);
        assert_eq!((idle.slots, idle.reason.as_str()), (4, ""));
    }

    #[test]
    fn one_busy_sample_does_not_move_the_offer_and_a_boundary_does_not_flap() {
        let p = policy(None);
        let mut t = OwnerTracker::new(p);
        let mut now = Instant::now();
        feed(&mut t, &mut now, 0.0, 1.0);
        now += SAMPLE_EVERY;
        assert_eq!(t.sample(sample(2.0), now).slots, 4);
        // Right at the boundary between 3 and 2 slots, either side holds.
        assert_eq!(offer_for(&p, 1.45, 3), 3);
        assert_eq!(offer_for(&p, 1.55, 2), 2);
        assert_eq!(offer_for(&p, 1.8, 3), 2);
    }

    #[test]
    fn reclaim_starts_after_the_hold_and_stops_with_the_owner() {
        let mut t = OwnerTracker::new(policy(Some(Duration::from_secs(2))));
        let mut now = Instant::now();
        let offer = feed(&mut t, &mut now, 4.0, 2.0);
        assert_eq!(offer.slots, 0);
        assert!(!offer.reclaiming, "the owner has not needed it long enough");
        assert!(feed(&mut t, &mut now, 4.0, 2.5).reclaiming);
        assert!(!feed(&mut t, &mut now, 0.0, 3.0).reclaiming);
    }

    #[test]
    fn short_memory_admits_nothing_and_recovers_above_the_margin() {
        let mut t = OwnerTracker::new(policy(Some(Duration::ZERO)));
        let now = Instant::now();
        let low = |mib: u64| Sample {
            owner_runnable: 0.0,
            mem_available_bytes: Some(mib << 20),
        };
        let offer = t.sample(low(50), now);
        assert_eq!(
            (offer.slots, offer.reason.as_str()),
            (0, "memory: 50 MiB available")
        );
        assert!(offer.reclaiming);
        assert_eq!(
            t.sample(low(110), now + SAMPLE_EVERY).slots,
            0,
            "within the margin"
        );
        assert_eq!(t.sample(low(200), now + SAMPLE_EVERY * 2).slots, 4);
    }

    #[test]
    fn the_offer_grows_back_only_after_a_quiet_second() {
        let mut t = OwnerTracker::new(policy(None));
        let mut now = Instant::now();
        assert_eq!(feed(&mut t, &mut now, 4.0, 5.0).slots, 0);
        // The owner pauses for half a second, then is back: no flap.
        assert_eq!(feed(&mut t, &mut now, 0.0, 0.5).slots, 0);
        assert_eq!(feed(&mut t, &mut now, 4.0, 1.0).slots, 0);
        assert!(feed(&mut t, &mut now, 0.0, 3.0).slots > 0);
    }
}
