//! The sizes a job request may have. Both roles check them before a job is
//! admitted or queued (the executor for jobs it runs, the gatekeeper for
//! jobs it relays), so a hostile request costs a node nothing; the largest
//! message either daemon decodes follows from them.

use mexec_proto::v1::JobSpec;

/// The most arguments a job may have.
pub const MAX_ARGS: usize = 32 * 1024;
/// The most bytes argv may hold in all (Linux allows about 2 MiB for argv
/// and environment together; real link lines stay well under this).
pub const MAX_ARGV_BYTES: usize = 512 * 1024;
/// The most environment entries a job may have.
pub const MAX_ENV_ENTRIES: usize = 4096;
/// The most bytes the environment may hold in all.
pub const MAX_ENV_BYTES: usize = 512 * 1024;
/// The longest working directory path.
pub const MAX_PATH_BYTES: usize = 4096;
/// The largest gRPC message a daemon decodes: a job spec at its limits fits.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// A request over one of the size limits, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the job is too large: {0}")]
pub struct TooLarge(pub String);

/// Checks the request's sizes against the request limits.
pub fn check_request(spec: &JobSpec) -> Result<(), TooLarge> {
    let too_big = |what: &str, size: usize, limit: usize| {
        Err(TooLarge(format!(
            "{what} is {size}, over the limit of {limit}"
        )))
    };
    if spec.argv.len() > MAX_ARGS {
        return too_big("the argument count", spec.argv.len(), MAX_ARGS);
    }
    let argv_bytes: usize = spec.argv.iter().map(|a| a.len() + 1).sum();
    if argv_bytes > MAX_ARGV_BYTES {
        return too_big("argv (bytes)", argv_bytes, MAX_ARGV_BYTES);
    }
    if spec.env.len() > MAX_ENV_ENTRIES {
        return too_big("the environment (entries)", spec.env.len(), MAX_ENV_ENTRIES);
    }
    let env_bytes: usize = spec
        .env
        .iter()
        .map(|v| v.name.len() + v.value.len() + 2)
        .sum();
    if env_bytes > MAX_ENV_BYTES {
        return too_big("the environment (bytes)", env_bytes, MAX_ENV_BYTES);
    }
    if spec.cwd.len() > MAX_PATH_BYTES {
        return too_big(
            "the working directory (bytes)",
            spec.cwd.len(),
            MAX_PATH_BYTES,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_proto::v1::EnvVar;

    fn spec() -> JobSpec {
        JobSpec {
            argv: vec!["true".into()],
            cwd: "/tmp".into(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn requests_over_the_size_limits_are_refused_with_the_limit_named() {
        assert!(check_request(&spec()).is_ok());
        let mut big = spec();
        big.argv.push(vec![b'x'; 1 << 20].into());
        let err = check_request(&big).unwrap_err().to_string();
        assert!(
            err.contains("argv (bytes)") && err.contains("524288"),
            "{err}"
        );
        let mut many = spec();
        many.env = (0..10_000)
            .map(|i| EnvVar {
                name: format!("V{i}").into_bytes().into(),
                value: "1".into(),
            })
            .collect();
        let err = check_request(&many).unwrap_err().to_string();
        assert!(err.contains("environment (entries) is 10000"), "{err}");
    }
}
