//! A small LAN of network namespaces, so each daemon in a test is a host
//! with its own address: one namespace per host, each joined by a veth
//! pair to a bridge in the test's own namespace, which is the build host
//! (clients and make run there, on the same file system as every "host").
//!
//! Everything is created by the test and removed on drop, processes inside
//! the namespaces included, so a failing test leaves nothing behind; what
//! a killed test run left is removed by the next one (the names carry the
//! creating process's pid).
//!
//! Where namespaces cannot be made (not root, no `ip`, a sandbox without
//! CAP_NET_ADMIN), `Lan::create_or_skip` says so on stderr and the test
//! returns early; with `MEXEC_REQUIRE_NETNS=1` (set by `.ci/run`) it fails
//! instead, so CI cannot pass by skipping.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace and link a `Lan` creates.
const PREFIX: &str = "mx";

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// One host of the LAN: a namespace with one interface.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub namespace: String,
    /// The host's address on the LAN.
    pub ip: Ipv4Addr,
    /// The bridge end of its veth pair, in the build host's namespace:
    /// taking it down cuts the host off without a reset.
    link: String,
}

/// Hosts on one bridge; the build host is `gateway` on the same subnet.
#[derive(Debug)]
pub struct Lan {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
}

impl Lan {
    /// A LAN of `hosts` hosts, or why one cannot be made here.
    pub fn create(hosts: usize) -> Result<Lan, String> {
        if !crate::is_root() {
            return Err("network namespaces need root".into());
        }
        remove_leftovers();
        let pid = std::process::id();
        let serial = NEXT_LAN.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{serial}");
        let subnet = free_subnet(pid, serial)?;
        let gateway = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let mut lan = Lan {
            bridge: format!("{tag}b"),
            tag,
            subnet,
            gateway,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        for _ in 0..hosts {
            lan.add_host()?;
        }
        Ok(lan)
    }

    /// Like `create`, but on failure prints why the test is skipped and
    /// returns None, unless `MEXEC_REQUIRE_NETNS=1` asks for a failure.
    pub fn create_or_skip(hosts: usize, test: &str) -> Option<Lan> {
        match Lan::create(hosts) {
            Ok(lan) => Some(lan),
            Err(why) if std::env::var("MEXEC_REQUIRE_NETNS").as_deref() == Ok("1") => {
                panic!("{test}: cannot create network namespaces: {why} (MEXEC_REQUIRE_NETNS=1)")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot create network namespaces: {why}");
                None
            }
        }
    }

    /// Adds one more host and returns its index.
    pub fn add_host(&mut self) -> Result<usize, String> {
        let index = self.hosts.len();
        let namespace = format!("{}h{index}", self.tag);
        let link = format!("{}v{index}", self.tag);
        let [a, b, c] = self.subnet;
        let address = Ipv4Addr::new(a, b, c, 10 + index as u8);
        ip(&["netns", "add", &namespace])?;
        // Recorded before the rest, so drop removes a half-made host too.
        self.hosts.push(Host {
            namespace: namespace.clone(),
            ip: address,
            link: link.clone(),
        });
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ])?;
        ip(&["link", "set", &link, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(index)
    }

    /// A command that runs `program` inside host `index`.
    pub fn command(&self, index: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[index].namespace])
            .arg(program);
        command
    }

    /// `ip:port` of host `index`.
    pub fn address(&self, index: usize, port: u16) -> String {
        format!("{}:{port}", self.hosts[index].ip)
    }

    /// Cuts host `index` off: its link goes down, so packets to and from
    /// it are dropped and nobody gets a reset (a pulled cable, a hung
    /// switch port).
    pub fn cut(&self, index: usize) {
        ip(&["link", "set", &self.hosts[index].link, "down"]).expect("cut the link");
    }

    /// SIGKILLs every process on host `index` (all that run in its
    /// namespace), as if the machine lost power.
    pub fn kill_everything_on(&self, index: usize) {
        kill_processes_in(&self.hosts[index].namespace);
    }

    /// Reconnects host `index`.
    pub fn mend(&self, index: usize) {
        ip(&["link", "set", &self.hosts[index].link, "up"]).expect("mend the link");
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_processes_in(&host.namespace);
            // Deleting our end of the pair deletes both at once; the
            // kernel may take its time to dismantle the namespace itself.
            let _ = ip(&["link", "del", &host.link]);
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Runs `ip ARGS`; Err carries its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// SIGKILLs every process in `namespace`: a namespace with processes in
/// it outlives `ip netns del` as long as they do.
///
/// All at once, as a power cut would: killed one by one, a job killed
/// before its daemon would be reported by the daemon as dead of SIGKILL
/// (and pids wrap, so the daemon is not always listed first). So every
/// process is stopped first, until no new one appears, and only then
/// killed.
fn kill_processes_in(namespace: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let list = || -> Vec<i32> {
        ip(&["netns", "pids", namespace])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut stopped: std::collections::HashSet<i32> = std::collections::HashSet::new();
    loop {
        let fresh: Vec<i32> = list()
            .into_iter()
            .filter(|p| !stopped.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            stopped.insert(pid);
        }
    }
    for pid in stopped {
        // SIGKILL ends a stopped process too.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A /24 in 10.0.0.0/8 that no interface here uses yet.
fn free_subnet(pid: u32, serial: u32) -> Result<[u8; 3], String> {
    let in_use = ip(&["-4", "-o", "addr", "show"])?;
    for attempt in 0..250u32 {
        let second = 100 + ((pid + attempt) % 100) as u8;
        let third = ((serial + attempt * 7) % 250) as u8;
        let prefix = format!("10.{second}.{third}.");
        if !in_use.contains(&format!(" {prefix}")) {
            return Ok([10, second, third]);
        }
    }
    Err("no free 10.x.y.0/24 subnet".into())
}

/// Removes namespaces and bridges left by test processes that died
/// without dropping their `Lan` (killed by a timeout, say).
fn remove_leftovers() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        match pid.parse::<u32>() {
            Ok(pid) => !crate::pid_alive(pid),
            Err(_) => false,
        }
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(name) {
                kill_processes_in(name);
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) {
        for name in links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
        {
            if dead(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
