//! A node's job limits in words, for its start line and `--help`-reading
//! people: `wall 24h, memory 17.7 GiB, output 1 GiB, open files 4096`, not
//! Rust's debug output.

use std::time::Duration;

use super::limits::JobLimits;

/// The limits that are set, in words; `none` when none is.
pub fn describe(limits: &JobLimits) -> String {
    let parts: Vec<String> = [
        limits.wall.map(|d| format!("wall {}", duration(d))),
        limits.cpu.map(|d| format!("cpu {}", duration(d))),
        limits.memory_bytes.map(|b| format!("memory {}", bytes(b))),
        limits
            .address_space_bytes
            .map(|b| format!("address space {}", bytes(b))),
        limits.output_bytes.map(|b| format!("output {}", bytes(b))),
        limits.open_files.map(|n| format!("open files {n}")),
        limits.processes.map(|n| format!("processes {n}")),
        limits
            .stdin_bytes_per_sec
            .map(|b| format!("stdin {}/s", bytes(b))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `24h`, `90m`, `1h30m`, `45s`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut text = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            text.push_str(&format!("{n}{unit}"));
        }
    }
    if text.is_empty() {
        format!("{}ms", d.as_millis())
    } else {
        text
    }
}

/// `1 GiB`, `17.7 GiB`, `512 MiB`, `100 bytes`.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_words() {
        let limits = JobLimits {
            wall: Some(Duration::from_secs(86_400)),
            cpu: Some(Duration::from_secs(5_400)),
            memory_bytes: Some(18_957_044_736),
            address_space_bytes: None,
            output_bytes: Some(1 << 30),
            open_files: Some(4096),
            processes: Some(256),
            stdin_bytes_per_sec: Some(64 << 20),
        };
        assert_eq!(
            describe(&limits),
            "wall 24h, cpu 1h30m, memory 17.7 GiB, output 1 GiB, open files 4096, \
             processes 256, stdin 64 MiB/s"
        );
        let none = JobLimits {
            wall: None,
            cpu: None,
            memory_bytes: None,
            address_space_bytes: None,
            output_bytes: None,
            open_files: None,
            processes: None,
            stdin_bytes_per_sec: None,
        };
        assert_eq!(describe(&none), "none");
    }
}
