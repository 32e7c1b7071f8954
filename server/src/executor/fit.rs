//! Whether this node is one the job may run on: it has every property the
//! job requires, and its compiler of the job's name fingerprints as the
//! client's does. Checked before admission, so a job refused here never
//! took a slot, and the client's retry loop moves on to the next node.

use mexec_common::properties;
use mexec_common::toolchain::{mismatch, Mismatch};

use super::error::JobError;
use super::valid_job::ValidJob;
use super::NodeContext;

/// Refuses `job` if this node is not one it may run on. A node that had
/// not fingerprinted the program yet does so now, and its next load report
/// carries the fingerprint.
pub async fn check(ctx: &NodeContext, job: &ValidJob) -> Result<(), JobError> {
    let unmet = properties::unmet(&job.spec.require, &ctx.properties);
    if !unmet.is_empty() {
        return Err(JobError::Unmet(unmet.join(", ")));
    }
    let Some(theirs) = &job.spec.toolchain else {
        return Ok(());
    };
    let (ours, changed) = ctx.toolchains.for_job(job, job.run_as.as_ref()).await;
    if changed {
        ctx.admission.announce();
    }
    let Some(ours) = ours else {
        return Ok(());
    };
    match mismatch(&ctx.name, &[ours.to_proto()], theirs) {
        Some(Mismatch { theirs, ours, .. }) => Err(JobError::Toolchain(
            Mismatch {
                node: ctx.name.clone(),
                program: job.argv0.clone(),
                // From the node's side: "theirs" is ours, and the reverse.
                theirs: ours,
                ours: theirs,
            }
            .to_string(),
        )),
        None => Ok(()),
    }
}
