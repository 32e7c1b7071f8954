//! The peers measured against: a `distccd` on loopback, and the machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `distccd` on a loopback port, killed on drop.
#[derive(Debug)]
pub struct Distccd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Distccd {
    /// Starts distccd with `jobs` slots, or `None` when it is not installed.
    pub fn start(jobs: u32) -> Option<Distccd> {
        let port = free_port();
        let dir = tempfile::tempdir().ok()?;
        let mut command = Command::new("distccd");
        command
            .args([
                "--daemon",
                "--no-detach",
                "--listen",
                "127.0.0.1",
                "--allow",
                "127.0.0.1",
            ])
            .args(["--port", &port.to_string(), "--jobs", &jobs.to_string()])
            .arg("--log-file")
            .arg(dir.path().join("distccd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if mexec_testkit::is_root() {
            command.args(["--user", mexec_testkit::JOB_USER]);
        }
        // Its own group: distccd's pre-forked workers outlive a killed
        // parent, so the whole group goes on drop.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().ok()?;
        let up = mexec_testkit::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        std::fs::create_dir_all(dir.path().join("client")).ok()?;
        let distccd = Distccd { child, port, dir };
        up.then_some(distccd)
    }

    /// Points a command at this distccd with `jobs` slots.
    pub fn aim(&self, command: &mut Command, jobs: u32) {
        command
            .env("DISTCC_HOSTS", format!("127.0.0.1:{}/{jobs}", self.port))
            .env("DISTCC_DIR", self.dir.path().join("client"));
    }
}

impl Drop for Distccd {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; a negative pid names the group.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(3632)
}

/// A line describing this machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} CPUs ({cpu}), {:.0} GiB memory, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// A 50-line C file, the "small compile" of the overhead benchmark.
pub fn write_small_c(dir: &Path) {
    let mut text = String::from("#include <stdio.h>\n#include <string.h>\n\n");
    for i in 0..8 {
        text.push_str(&format!(
            "static int f{i}(int x) {{\n    int acc = {i};\n    for (int k = 0; k < x; k++)\n        acc = acc * 31 + k;\n    return acc;\n}}\n\n"
        ));
    }
    text.push_str("int main(int argc, char **argv) {\n    (void)argv;\n    printf(\"%d\\n\", f0(argc) + f7(argc));\n    return 0;\n}\n");
    std::fs::write(dir.join("small.c"), text).expect("write small.c");
}

/// A way to make the command of round `i`, for a side-by-side variant.
pub type Make<'a> = Box<dyn Fn(usize) -> Command + 'a>;

/// The compile `args` (a compiler's argv, `args[0]` the compiler, ending
/// in `-o`) through distcc and through icecream, those of them that run,
/// in `dir`, each round writing one of four objects of its own.
pub fn peer_compiles<'a>(
    distccd: Option<&'a Distccd>,
    icecream: Option<&'a crate::icecream::Icecream>,
    dir: &'a Path,
    args: &'a [&'a str],
) -> Vec<(&'static str, Make<'a>)> {
    let mut variants: Vec<(&'static str, Make<'a>)> = Vec::new();
    if let Some(distccd) = distccd {
        variants.push((
            "distcc",
            Box::new(move |i: usize| {
                let mut c = Command::new("distcc");
                c.args(args).arg(format!("d{}.o", i % 4)).current_dir(dir);
                distccd.aim(&mut c, 2);
                c
            }),
        ));
    }
    if let Some(icecream) = icecream {
        variants.push((
            "icecream",
            Box::new(move |i: usize| {
                let mut c = icecream.compile(dir, &args[1..]);
                c.arg(format!("i{}.o", i % 4));
                c
            }),
        ));
    }
    variants
}
