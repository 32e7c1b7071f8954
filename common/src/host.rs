//! This machine: its name (for node names, job ids and build ids) and how
//! many CPUs it offers.

/// The host name, or "localhost" where it cannot be read.
#[cfg(unix)]
pub fn name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host name, or "localhost" where it cannot be read.
#[cfg(not(unix))]
pub fn name() -> String {
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// The CPUs this process may use (its affinity mask and cgroup quota
/// included), at least 1.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_has_a_name_and_a_cpu() {
        assert!(!super::name().is_empty());
        assert!(super::cpu_count() >= 1);
    }
}
