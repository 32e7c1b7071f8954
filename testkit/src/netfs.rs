//! A real network file system for the multi-host tests: a file-server host
//! of its own on a `netns::Lan` exports a tree over GlusterFS (Debian's
//! `glusterfs-server` and `glusterfs-client`), and every executor host
//! mounts it, through its FUSE client over the LAN, in a mount namespace of
//! its own, at the same path as the build host does. A job on an executor
//! host therefore sees the tree only through the network, with the file
//! system's default caching (attribute and entry caches, write-behind,
//! quick-read: nothing turned off), as on a real farm.
//!
//! Why GlusterFS: this kernel has FUSE but no in-kernel NFS client; of the
//! FUSE file systems Debian ships, GlusterFS keeps each writer's uid and
//! gid as NFS does (sshfs writes everything as its one login user, so it
//! cannot show per-user ownership), needs one daemon and one brick (MooseFS
//! needs a master, a chunk server and a metalogger), and sets up in about a
//! second.
//!
//! Use:
//!
//! ```ignore
//! let mut lan = Lan::create_or_skip(4, "my_test")?;      // hosts 0..=3
//! let fs = NetFs::start(&mut lan, &[1, 2, 3]).unwrap(); // adds the file server
//! // fs.path(): the shared tree, on the build host (this process) and on
//! // hosts 1..=3 alike; the build host's view is a mount too.
//! let mexecd = fs.command(&lan, 1, bin("mexecd"));      // host 1, its mount
//! let executor = Executor::start_with(mexecd, "n1", 4, &["--listen", ...]);
//! eprintln!("set-up took {:?}", fs.setup_time);
//! ```
//!
//! - `NetFs::start(lan, clients)` adds one host to `lan` (its index is
//!   `server`), starts `glusterd` there with its state in a temporary
//!   directory, creates and starts a one-brick volume, mounts it on the
//!   build host at `path()`, and mounts it on each host in `clients` in a
//!   mount namespace of that host's own. The tree's root belongs to the
//!   job account (`crate::JOB_USER` when run as root).
//! - `start_with(lan, clients, options)` does the same with volume
//!   options set before the volume starts (`gluster volume set`), such as
//!   the cache-invalidation settings docs/network-file-systems.md gives
//!   a site (client/tests/netfs.rs's `SITE_OPTIONS`).
//! - `command(lan, host, program)` runs `program` on `host` (its network
//!   namespace) inside that host's mount namespace: what `Lan::command` is
//!   for a host without the file system.
//! - `run_on(lan, host, script)` runs `sh -c script` there and returns its
//!   output (to look at the tree as that host sees it).
//! - `setup_time`: how long `start` took, for the test to print.
//!
//! Everything is undone on drop (mounts, daemons, state); drop the `NetFs`
//! before its `Lan`. `Lan::kill_everything_on(host)` kills that host's FUSE
//! client too, as a power cut would: its mount then fails with "transport
//! endpoint is not connected" until the host is mounted again
//! (`remount(host)`).
//! A test process killed outright leaves its build-host mount behind
//! (`umount -l` it); the namespaces are removed by the next `Lan`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Lan;

/// How long the file server may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A GlusterFS volume served from a host of a `Lan`, mounted on hosts.
#[derive(Debug)]
pub struct NetFs {
    /// Index in the `Lan` of the file-server host.
    pub server: usize,
    /// How long `start` took: daemon, volume, every mount.
    pub setup_time: Duration,
    /// Holds the brick, glusterd's state, the mount point and the
    /// namespace files.
    base: tempfile::TempDir,
    volume: String,
    server_ip: std::net::Ipv4Addr,
    server_namespace: String,
    /// Client host index -> its network namespace and the file that keeps
    /// its mount namespace.
    clients: BTreeMap<usize, (String, PathBuf)>,
    build_host_mounted: bool,
}

impl NetFs {
    /// Adds a file-server host to `lan`, exports a fresh volume from it,
    /// and mounts the volume on the build host and on each of `clients`.
    pub fn start(lan: &mut Lan, clients: &[usize]) -> Result<NetFs, String> {
        Self::start_with(lan, clients, &[])
    }

    /// Like `start`, with volume options (`gluster volume set VOLUME KEY
    /// VALUE`) set before the volume starts.
    pub fn start_with(
        lan: &mut Lan,
        clients: &[usize],
        options: &[(&str, &str)],
    ) -> Result<NetFs, String> {
        let started = Instant::now();
        for tool in ["glusterd", "gluster", "mount.glusterfs", "nsenter"] {
            if !tool_exists(tool) {
                return Err(format!(
                    "{tool} is missing: install glusterfs-server and glusterfs-client \
                     (scripts/test.sh does)"
                ));
            }
        }
        let server = lan.add_host()?;
        let base = tempfile::Builder::new()
            .prefix("mexec-netfs-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temporary directory: {e}"))?;
        let host = &lan.hosts[server];
        let mut fs = NetFs {
            server,
            setup_time: Duration::ZERO,
            volume: format!("mx{}v{server}", std::process::id()),
            server_ip: host.ip,
            server_namespace: host.namespace.clone(),
            clients: BTreeMap::new(),
            build_host_mounted: false,
            base,
        };
        for dir in ["brick", "glusterd", "log", "tree", "ns"] {
            std::fs::create_dir(fs.base.path().join(dir)).map_err(|e| format!("{dir}: {e}"))?;
        }
        fs.start_server(options)?;
        // The build host first: its probe waits for the brick to listen,
        // so no client meets a volume that is not up yet.
        fs.mount_build_host()?;
        crate::give_to_job_user(&fs.path());
        fs.keep_namespaces_here()?;
        for &client in clients {
            fs.add_client(lan, client)?;
        }
        fs.setup_time = started.elapsed();
        Ok(fs)
    }

    /// The shared tree: the same path on the build host and every client.
    pub fn path(&self) -> PathBuf {
        self.base.path().join("tree")
    }

    /// A command that runs `program` on `host`, in its mount namespace.
    pub fn command(&self, lan: &Lan, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let (_, ns_file) = self
            .clients
            .get(&host)
            .unwrap_or_else(|| panic!("host {host} does not mount the network file system"));
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount={}", ns_file.display()))
            .arg(format!("--net=/run/netns/{}", lan.hosts[host].namespace))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `sh -c script` on `host` as it sees the tree; its output.
    pub fn run_on(&self, lan: &Lan, host: usize, script: &str) -> Output {
        self.command(lan, host, "sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Mounts the volume again on `host` (after its FUSE client was killed
    /// with everything else on the host).
    pub fn remount(&self, host: usize) -> Result<(), String> {
        self.mount_on(host)
    }

    /// glusterd on the server host, its state and sockets in `base`, and a
    /// started one-brick volume.
    fn start_server(&self, options: &[(&str, &str)]) -> Result<(), String> {
        let dir = self.base.path();
        let vol = std::fs::read_to_string("/etc/glusterfs/glusterd.vol")
            .map_err(|e| format!("/etc/glusterfs/glusterd.vol: {e}"))?;
        // Its own state directory and command socket, so several servers
        // (one per test) run side by side on one machine.
        let vol = vol
            .replace(
                "/var/lib/glusterd",
                &dir.join("glusterd").display().to_string(),
            )
            .replace(
                "end-volume",
                &format!(
                    "    option glusterd-sockfile {}\nend-volume",
                    self.cli_socket().display()
                ),
            );
        std::fs::write(dir.join("glusterd.vol"), vol).map_err(|e| format!("glusterd.vol: {e}"))?;
        run(Command::new("ip")
            .args(["netns", "exec", &self.server_namespace, "glusterd"])
            .arg("-f")
            .arg(dir.join("glusterd.vol"))
            .arg("-S")
            .arg(dir.join("glusterfsd.socket"))
            .arg("-p")
            .arg(dir.join("glusterd.pid"))
            .arg("-l")
            .arg(dir.join("log/glusterd.log")))?;
        let brick = format!("{}:{}", self.server_ip, dir.join("brick").display());
        // glusterd answers its socket a moment after it forks.
        retry(|| self.gluster(&["volume", "create", &self.volume, &brick, "force"]))?;
        for (key, value) in options {
            self.gluster(&["volume", "set", &self.volume, key, value])?;
        }
        self.gluster(&["volume", "start", &self.volume])?;
        Ok(())
    }

    /// Runs the gluster command-line tool against this server.
    fn gluster(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.server_namespace, "gluster"])
            .arg(format!("--glusterd-sock={}", self.cli_socket().display()))
            .arg("--mode=script")
            .args(args))
    }

    fn cli_socket(&self) -> PathBuf {
        self.base.path().join("glusterd.socket")
    }

    /// Makes `base/ns` a private mount, where files that keep mount
    /// namespaces alive may be bound.
    fn keep_namespaces_here(&self) -> Result<(), String> {
        let ns = self.base.path().join("ns");
        run(Command::new("mount").arg("--bind").arg(&ns).arg(&ns))?;
        run(Command::new("mount").arg("--make-private").arg(&ns))?;
        Ok(())
    }

    /// A mount namespace for `host`, kept in a file, with the volume
    /// mounted in it by a FUSE client in the host's network namespace.
    fn add_client(&mut self, lan: &Lan, host: usize) -> Result<(), String> {
        let ns_file = self.base.path().join("ns").join(format!("h{host}"));
        std::fs::File::create(&ns_file).map_err(|e| format!("{}: {e}", ns_file.display()))?;
        run(Command::new("unshare")
            .arg(format!("--mount={}", ns_file.display()))
            .args(["--propagation", "private", "true"]))?;
        self.clients
            .insert(host, (lan.hosts[host].namespace.clone(), ns_file));
        self.mount_on(host)
    }

    /// Mounts the volume at `path()` in client `host`'s mount namespace,
    /// by a FUSE client of its own. What is mounted there already (the
    /// build host's mount, copied with the namespace, or a dead client)
    /// is taken off first, so the host reaches the server itself.
    fn mount_on(&self, host: usize) -> Result<(), String> {
        let (namespace, ns_file) = &self.clients[&host];
        let path = self.path();
        let script = format!(
            "if mountpoint -q '{path}'; then umount -l '{path}'; fi; \
             mount -t glusterfs '{source}' '{path}' && ls '{path}' >/dev/null",
            path = path.display(),
            source = self.source(),
        );
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount={}", ns_file.display()))
            .arg(format!("--net=/run/netns/{namespace}"))
            .args(["--", "sh", "-c", &script]);
        retry(|| run(&mut command).map(drop))
    }

    fn mount_build_host(&mut self) -> Result<(), String> {
        let mut command = Command::new("mount");
        command
            .args(["-t", "glusterfs", &self.source()])
            .arg(self.path());
        retry(|| run(&mut command).map(drop))?;
        self.build_host_mounted = true;
        // The brick may come up a moment after the mount returns.
        let probe = self.path().join(".mexec-netfs-probe");
        retry(|| {
            std::fs::write(&probe, b"up").map_err(|e| format!("write through the mount: {e}"))
        })?;
        std::fs::remove_file(&probe).map_err(|e| format!("remove the probe: {e}"))
    }

    /// `server:/volume`, what `mount -t glusterfs` takes.
    fn source(&self) -> String {
        format!("{}:/{}", self.server_ip, self.volume)
    }
}

impl Drop for NetFs {
    fn drop(&mut self) {
        let path = self.path();
        if self.build_host_mounted {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
        for (namespace, ns_file) in self.clients.values() {
            // Unmounting ends the host's FUSE client, the last process in
            // its mount namespace; unbinding the file frees the namespace.
            let _ = Command::new("nsenter")
                .arg(format!("--mount={}", ns_file.display()))
                .arg(format!("--net=/run/netns/{namespace}"))
                .args(["umount", "-l"])
                .arg(&path)
                .status();
            let _ = Command::new("umount").arg(ns_file).status();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.base.path().join("ns"))
            .status();
        kill_all_in(&self.server_namespace);
        // What glusterd keeps outside its state directory.
        let _ = std::fs::remove_dir_all(Path::new("/var/run/gluster/vols").join(&self.volume));
        let brick_log = self.base.path().join("brick").display().to_string()[1..].replace('/', "-");
        let _ = std::fs::remove_file(format!("/var/log/glusterfs/bricks/{brick_log}.log"));
    }
}

/// SIGKILLs every process in network namespace `namespace` (glusterd and
/// its brick), so the server is gone even if the `Lan` outlives us.
fn kill_all_in(namespace: &str) {
    let Ok(output) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `command`; Ok(stdout), or Err naming it with its stderr.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?}: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

/// Retries `step` every 100 ms until it succeeds or `READY_TIMEOUT` passes.
fn retry<T>(mut step: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match step() {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn tool_exists(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(tool).exists())
}
