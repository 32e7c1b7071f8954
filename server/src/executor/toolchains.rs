//! The fingerprints of the compilers this node runs, per program name as
//! jobs name them: made on the first job that asks for the check, reused
//! while every file behind one is unchanged, remade when one changes (an
//! upgrade under the running daemon), and reported with the load so that
//! the gatekeeper and clients place by them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mexec_common::toolchain::{self, Fingerprint, RunAs};
use mexec_proto::v1::ToolchainFingerprint;

use super::account::Account;
use super::environment;
use super::valid_job::ValidJob;

/// How often the known fingerprints are checked against their files.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A fingerprint and how it was asked for, so it can be remade alike.
#[derive(Debug, Clone)]
struct Known {
    fingerprint: Fingerprint,
    env: Vec<(OsString, OsString)>,
    run_as: Option<RunAs>,
}

/// This node's fingerprints, by program name.
#[derive(Debug, Default)]
pub struct Toolchains {
    known: Mutex<HashMap<String, Known>>,
    /// Held while a fingerprint is made, so that the first jobs of a
    /// `make -j50` make it once and the others find it made.
    making: tokio::sync::Mutex<()>,
}

impl Toolchains {
    pub fn new() -> Arc<Toolchains> {
        Arc::new(Toolchains::default())
    }

    /// Every fingerprint, for the load report.
    pub fn report(&self) -> Vec<ToolchainFingerprint> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut report: Vec<_> = known.values().map(|k| k.fingerprint.to_proto()).collect();
        report.sort_by(|a, b| a.program.cmp(&b.program));
        report
    }

    /// Our fingerprint of the program `job` would run, as `run_as`; `None`
    /// when there is no such program here or it does not answer as a
    /// compiler (the job then fails, or runs, as it would have anyway).
    /// The second value is true when the report changed.
    pub async fn for_job(
        self: &Arc<Self>,
        job: &ValidJob,
        run_as: Option<&Account>,
    ) -> (Option<Fingerprint>, bool) {
        let driver = match &job.program {
            Some(program) => Some(program.path.clone()),
            None => toolchain::resolve_program(
                OsStr::new(&job.argv[0]),
                environment::job_path(&job.spec).as_deref(),
                &job.cwd,
            ),
        };
        let Some(driver) = driver else {
            return (None, false);
        };
        if let Some(current) = self.current(&job.argv0, &driver) {
            return (Some(current), false);
        }
        let _making = self.making.lock().await;
        if let Some(current) = self.current(&job.argv0, &driver) {
            return (Some(current), false);
        }
        let known = Known {
            fingerprint: placeholder(&job.argv0, driver),
            env: environment::for_job(&job.spec, run_as, job.as_submitter),
            run_as: run_as.map(|a| RunAs {
                uid: a.uid,
                gid: a.gid,
            }),
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remake(known))
            .await
            .unwrap_or((None, false))
    }

    /// The fingerprint of `program` if it is for `driver` and still current.
    fn current(&self, program: &str, driver: &PathBuf) -> Option<Fingerprint> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let k = known.get(program)?;
        (k.fingerprint.driver == *driver && k.fingerprint.is_current())
            .then(|| k.fingerprint.clone())
    }

    /// Makes the fingerprint `known` stands for again and keeps it; a
    /// driver that no longer answers is forgotten. Blocking.
    fn remake(&self, known: Known) -> (Option<Fingerprint>, bool) {
        let program = known.fingerprint.program.clone();
        let made = toolchain::compute(
            &program,
            &known.fingerprint.driver,
            &known.env,
            known.run_as,
        );
        let mut table = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let before = table.get(&program).map(|k| k.fingerprint.to_proto());
        match made {
            Ok(fingerprint) => {
                let changed = before.as_ref() != Some(&fingerprint.to_proto());
                if changed {
                    tracing::info!(
                        program, version = %fingerprint.version, digest = %fingerprint.digest,
                        driver = %fingerprint.driver.display(), "toolchain fingerprinted"
                    );
                }
                table.insert(
                    program,
                    Known {
                        fingerprint: fingerprint.clone(),
                        ..known
                    },
                );
                (Some(fingerprint), changed)
            }
            Err(err) => {
                tracing::warn!(program, %err, "no toolchain fingerprint");
                (None, table.remove(&program).is_some())
            }
        }
    }

    /// Remakes every fingerprint whose files changed; true when the report
    /// changed. Blocking (a stat per file, and a probe for what changed).
    pub fn recheck(&self) -> bool {
        let stale: Vec<Known> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known
                .values()
                .filter(|k| !k.fingerprint.is_current())
                .cloned()
                .collect()
        };
        let mut changed = false;
        for known in stale {
            changed |= self.remake(known).1;
        }
        changed
    }
}

/// A fingerprint not yet made: the program and driver to make it for.
fn placeholder(program: &str, driver: PathBuf) -> Fingerprint {
    Fingerprint {
        program: program.to_owned(),
        driver,
        version: String::new(),
        target: String::new(),
        digest: String::new(),
        files: Vec::new(),
    }
}

/// Checks the known fingerprints every `RECHECK_EVERY` and calls
/// `changed` when the report changed, for as long as the task runs.
pub async fn watch(toolchains: Arc<Toolchains>, changed: impl Fn() + Send + 'static) {
    let mut every = tokio::time::interval(RECHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let this = toolchains.clone();
        if tokio::task::spawn_blocking(move || this.recheck())
            .await
            .unwrap_or(false)
        {
            changed();
        }
    }
}
