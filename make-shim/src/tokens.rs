//! The jobserver's token pool, kept at the cluster's size while make runs.
//!
//! make takes a token from the pipe before starting each job beyond its
//! first (the one it always has) and writes it back when the job ends. So
//! with capacity C we keep C - 1 tokens in circulation:
//! - to grow, we first give back tokens we hold, then write new ones;
//! - to shrink, a worker thread takes tokens out of the pipe as make returns
//!   them (a blocking read: jobs already running are never interrupted) and
//!   holds them.
//!
//! Every token written is counted (`minted`). When make has exited, every
//! token must be in the pipe or in our hands: `finish` counts both, so a
//! token lost or duplicated anywhere shows up as a mismatch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The pool.
#[derive(Debug)]
pub struct TokenPool {
    client: jobserver::Client,
    minted: usize,
    held: Arc<Mutex<Vec<jobserver::Acquired>>>,
    pending: Arc<AtomicUsize>,
    withdraw: Option<mpsc::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

/// Token accounting once make has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenAccount {
    /// Tokens ever written into the pipe.
    pub minted: usize,
    /// Tokens found at the end: in the pipe plus held by us.
    pub accounted: usize,
}

impl TokenPool {
    /// A jobserver with `tokens` tokens.
    pub fn new(tokens: usize) -> std::io::Result<TokenPool> {
        let client = jobserver::Client::new(tokens)?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<()>();
        let worker = {
            let (client, held, pending) = (client.clone(), held.clone(), pending.clone());
            std::thread::spawn(move || {
                for () in rx {
                    // Blocks until make gives a token back.
                    let acquired = client.acquire();
                    if let Ok(token) = acquired {
                        held.lock().unwrap_or_else(|p| p.into_inner()).push(token);
                    }
                    pending.fetch_sub(1, Ordering::AcqRel);
                }
            })
        };
        Ok(TokenPool {
            client,
            minted: tokens,
            held,
            pending,
            withdraw: Some(tx),
            worker: Some(worker),
        })
    }

    /// The jobserver, for `configure_make`.
    pub fn client(&self) -> &jobserver::Client {
        &self.client
    }

    /// Tokens in circulation, counting withdrawals under way as done.
    pub fn circulating(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.minted - held - self.pending.load(Ordering::Acquire)
    }

    /// Moves towards `target` tokens in circulation.
    pub fn set_target(&mut self, target: usize) -> std::io::Result<()> {
        loop {
            let circulating = self.circulating();
            if circulating > target {
                self.pending.fetch_add(1, Ordering::AcqRel);
                if let Some(tx) = &self.withdraw {
                    if tx.send(()).is_err() {
                        self.pending.fetch_sub(1, Ordering::AcqRel);
                        return Ok(());
                    }
                }
            } else if circulating < target {
                let token = self.held.lock().unwrap_or_else(|p| p.into_inner()).pop();
                match token {
                    // Dropping an acquired token writes it back.
                    Some(token) => drop(token),
                    None => {
                        self.client.release_raw()?;
                        self.minted += 1;
                    }
                }
            } else {
                return Ok(());
            }
        }
    }

    /// After make exited: waits for withdrawals under way and counts every
    /// token.
    pub fn finish(mut self) -> std::io::Result<TokenAccount> {
        drop(self.withdraw.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let in_pipe = self.client.available()?;
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).len();
        Ok(TokenAccount {
            minted: self.minted,
            accounted: in_pipe + held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_and_shrinking_keeps_every_token_accounted() {
        let mut pool = TokenPool::new(3).unwrap();
        assert_eq!(pool.circulating(), 3);
        pool.set_target(1).unwrap();
        // Nothing else holds tokens, so both withdrawals complete.
        while pool.pending.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        assert_eq!(pool.circulating(), 1);
        pool.set_target(5).unwrap();
        assert_eq!(pool.circulating(), 5);
        assert_eq!(
            pool.minted, 5,
            "two held tokens were given back before minting"
        );
        let account = pool.finish().unwrap();
        assert_eq!(
            account,
            TokenAccount {
                minted: 5,
                accounted: 5
            }
        );
    }

    #[test]
    fn a_token_kept_by_someone_else_shows_as_missing() {
        let pool = TokenPool::new(2).unwrap();
        let stolen = pool.client().acquire().unwrap();
        std::mem::forget(stolen);
        let account = pool.finish().unwrap();
        assert_eq!(
            account,
            TokenAccount {
                minted: 2,
                accounted: 1
            }
        );
    }
}
