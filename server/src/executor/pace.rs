//! Pacing a client's messages: past a rate, reading pauses, so HTTP/2 flow
//! control slows the sender instead of the node spending CPU on a flood.
//! Every message counts at least `MESSAGE_COST` bytes, so a flood of empty
//! messages or signals is bounded too.

use std::time::Duration;

use tokio::time::Instant;

/// What a message without stdin bytes (a signal, an empty chunk) counts as.
pub const MESSAGE_COST: usize = 256;
/// How much unused allowance a quiet client may save up.
const MAX_BURST: Duration = Duration::from_secs(1);

/// A token bucket over the messages of one stream.
#[derive(Debug)]
pub struct Pace {
    bytes_per_sec: f64,
    start: Instant,
    sent: f64,
}

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            start: Instant::now(),
            sent: 0.0,
        }
    }

    /// Waits until a message carrying `bytes` of stdin is within the rate.
    pub async fn wait(&mut self, bytes: usize) {
        let now = Instant::now();
        // A client that was quiet for a while gets at most a second's worth
        // of burst, not its whole idle time.
        let due = self.start + Duration::from_secs_f64(self.sent / self.bytes_per_sec);
        if due + MAX_BURST < now {
            self.start = now - MAX_BURST;
            self.sent = 0.0;
        }
        self.sent += bytes.max(MESSAGE_COST) as f64;
        let due = self.start + Duration::from_secs_f64(self.sent / self.bytes_per_sec);
        if due > now {
            tokio::time::sleep_until(due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fast_sender_is_held_to_the_rate_and_a_quiet_one_gets_a_short_burst() {
        let mut pace = Pace::new(1000);
        let t0 = Instant::now();
        for _ in 0..5 {
            pace.wait(1000).await;
        }
        // 5000 bytes at 1000/s: the fifth is due after 5 s.
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        // Empty messages count too: 40 of them are 10240 "bytes".
        let mut pace = Pace::new(1024);
        let t0 = Instant::now();
        for _ in 0..40 {
            pace.wait(0).await;
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(10));

        // After a minute of quiet, one second's worth passes at once and
        // the rest is paced.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        pace.wait(1024).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        pace.wait(1024).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }
}
