//! Whether a directory is on a network file system, where each host keeps
//! cached entries and times of its own (docs/network-file-systems.md).
//! Only there are the rereads around a job worth their cost: on a local
//! disk every host sees the same directory, and a job pays nothing.

use std::path::Path;

/// Whether `dir` may be on a network (or FUSE) file system. Where that
/// cannot be told (statfs failed, another system) the answer is yes: a
/// needless reread only costs time, a skipped one can break a build.
pub fn may_be_network(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        match nix::sys::statfs::statfs(dir) {
            // `f_type` is i64 here, i32 on 32-bit targets.
            #[allow(clippy::unnecessary_cast)]
            Ok(fs) => NETWORK_MAGIC.contains(&(fs.filesystem_type().0 as i64)),
            Err(_) => true,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        true
    }
}

/// statfs(2) `f_type` of the network and cluster file systems (and FUSE,
/// under which GlusterFS, MooseFS and sshfs run).
#[cfg(target_os = "linux")]
const NETWORK_MAGIC: [i64; 11] = [
    0x6969,      // NFS
    0x6573_5546, // FUSE
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x517B,      // SMB
    0x00C3_6400, // Ceph
    0x5346_414F, // AFS
    0x6B41_4653, // kAFS
    0x0102_1997, // 9P
    0x4750_4653, // GPFS
    0x0BD0_0BD0, // Lustre
];

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn local_directories_are_not_network_ones() {
        // /proc is procfs and the temporary directory a local disk or
        // tmpfs on any machine the tests run on.
        assert!(!may_be_network(Path::new("/proc")));
        assert!(!may_be_network(&std::env::temp_dir()));
        // What cannot be told counts as network.
        assert!(may_be_network(Path::new("/no/such/dir/mexec")));
    }
}
