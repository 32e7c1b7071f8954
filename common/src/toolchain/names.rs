//! Which programs are compilers whose output a toolchain decides.

/// The drivers, without version or target.
const DRIVERS: [&str; 6] = ["gcc", "g++", "cc", "c++", "clang", "clang++"];

/// Whether `program` (a name or a path) is a C or C++ compiler driver:
/// gcc, g++, cc, c++, clang, clang++, also versioned (`gcc-12`,
/// `clang-16`) and target-prefixed (`x86_64-linux-gnu-gcc-12`).
pub fn is_compiler(program: &str) -> bool {
    let name = program.rsplit(['/', '\\']).next().unwrap_or(program);
    let name = name.strip_suffix(".exe").unwrap_or(name);
    let name = without_version(name);
    DRIVERS.iter().any(|driver| {
        name == *driver
            || name
                .strip_suffix(driver)
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('-'))
    })
}

/// `gcc-12` and `clang-16.0` without their version; other names as they are.
fn without_version(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, version))
            if !version.is_empty()
                && version.starts_with(|c: char| c.is_ascii_digit())
                && version.chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            base
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compilers_are_known_by_name_with_version_and_target() {
        for yes in [
            "gcc",
            "g++",
            "cc",
            "c++",
            "clang",
            "clang++",
            "gcc-12",
            "clang-16.0",
            "x86_64-linux-gnu-gcc",
            "x86_64-linux-gnu-g++-12",
            "aarch64-linux-gnu-gcc-13",
            "/usr/bin/gcc",
            "/opt/x/bin/clang++-15",
            "gcc.exe",
        ] {
            assert!(is_compiler(yes), "{yes}");
        }
        for no in [
            "distcc", "ccache", "make", "sh", "gcc-ar", "gcc-nm", "cc1", "", "-gcc", "ld", "true",
            "gcc-", "icc2",
        ] {
            assert!(!is_compiler(no), "{no}");
        }
    }
}
