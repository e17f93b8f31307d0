//! `corelog doctor`: is this host, and the file system under the data directory, fit to run
//! corelog? One row per condition: what corelog expects, what the host has, and a verdict.
//!
//! Verdicts: FAIL means corelog will not run, or will run without the durability it promises
//! (io_uring unusable, O_DIRECT refused, a locked-memory limit below glommio's minimum, a data
//! directory on tmpfs). WARN means it runs but slower or with noisier latency than it could
//! (a scheduler in front of the disk, a volatile write cache, THP always, swap, a power-saving
//! governor, interrupts on the pinned cores, a clock source that needs a system call). SKIP
//! means the host does not have the knob (no cpufreq in a VM) or the question does not apply.
//! Any FAIL makes the exit status non-zero.
//!
//! Every check reads the host through [`Sys`], a root directory under which `sys/` and `proc/`
//! are looked up: `/` on a real host, a fixture tree in the tests. The verdict functions take
//! what was read as plain text, so they are tested with the contents of real hosts' files. The
//! checks that need the kernel itself (a NOP through a fresh io_uring ring, an O_DIRECT write,
//! `statfs`, `stat`, `getrlimit`) run only in [`run`].
//!
//! The data directory is mapped to its block device the way the kernel sees it: `stat`'s
//! `st_dev` names `/sys/dev/block/MAJ:MIN`; a partition's directory has a `partition` file and
//! its parent is the disk, whose `queue/` holds the scheduler and write-cache settings; a
//! device-mapper or md device lists its disks under `slaves/`. File systems that report an
//! anonymous device (btrfs, overlayfs) fall back to the mount's source in
//! `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

/// Arguments of `corelog doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The data directory (or the directory that will hold it). Default: `data_dir` of
    /// `--config`, else the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A node configuration: its `data_dir`, `cores`, `pin` and log settings (for the
    /// locked-memory need) are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Cores corelog pins (cores 0..N), for the IRQ affinity checks. Default: from `--config`
    /// when it pins, else none.
    #[arg(long)]
    pub cores: Option<usize>,
    /// The network interface that carries replication. Default: the default route's.
    #[arg(long)]
    pub nic: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// As corelog expects.
    Pass,
    /// The host has no such knob, or the question does not apply.
    Skip,
    /// Works, but slower or noisier than it could.
    Warn,
    /// corelog will not run, or not durably.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked.
    pub condition: String,
    /// What corelog expects.
    pub expected: String,
    /// What the host has.
    pub found: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What to do about a WARN or FAIL (empty otherwise).
    pub hint: String,
}

impl Check {
    fn new(condition: &str, expected: &str, found: impl Into<String>, verdict: Verdict) -> Self {
        Check {
            condition: condition.into(),
            expected: expected.into(),
            found: found.into(),
            verdict,
            hint: String::new(),
        }
    }

    fn hint(mut self, h: impl Into<String>) -> Self {
        if self.verdict == Verdict::Warn || self.verdict == Verdict::Fail {
            self.hint = h.into();
        }
        self
    }
}

/// The conditions, in the order of the table. Every run has exactly one row for each.
pub const CONDITIONS: &[&str] = &[
    "kernel version",
    "io_uring usable",
    "locked memory",
    "data dir file system",
    "online discard",
    "O_DIRECT on data dir",
    "I/O scheduler",
    "volatile write cache",
    "transparent huge pages",
    "swap",
    "CPU governor",
    "disk IRQ affinity",
    "NIC IRQ affinity",
    "clock source",
];

/// A root under which `sys/` and `proc/` are read: `/` on a host, a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct Sys {
    root: PathBuf,
}

impl Sys {
    /// The running host.
    pub fn host() -> Self {
        Sys { root: PathBuf::from("/") }
    }

    /// A fixture tree.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sys { root: root.into() }
    }

    /// The path of `rel` (e.g. `sys/block/vda`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The trimmed contents of `rel`, if readable.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok().map(|s| s.trim().to_string())
    }
}

/// The block device under a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// The device the file system sits on (`vda1`, `dm-0`, `nvme0n1p2`).
    pub name: String,
    /// The whole disks that hold it, whose `queue/` settings matter (`vda`; both members of
    /// a mirror).
    pub disks: Vec<String>,
    /// The disks' sysfs device directories (resolved), to find their interrupts.
    #[serde(skip)]
    pub disk_paths: Vec<PathBuf>,
    /// The disks' sysfs block directories (resolved), which hold `queue/`.
    #[serde(skip)]
    pub disk_dirs: Vec<PathBuf>,
}

impl BlockDevice {
    /// `queue/{file}` of each disk, trimmed, paired with the disk's name.
    pub fn queue(&self, file: &str) -> Vec<(String, Option<String>)> {
        self.disks
            .iter()
            .zip(&self.disk_dirs)
            .map(|(name, dir)| {
                let v = std::fs::read_to_string(dir.join("queue").join(file));
                (name.clone(), v.ok().map(|s| s.trim().to_string()))
            })
            .collect()
    }
}

/// Maps a device number (`st_dev` of a file) to its block device and whole disks, through
/// `sys/dev/block/MAJ:MIN`.
pub fn block_device(sys: &Sys, major: u32, minor: u32) -> Result<BlockDevice, String> {
    let link = sys.path(&format!("sys/dev/block/{major}:{minor}"));
    let dir = std::fs::canonicalize(&link)
        .map_err(|_| format!("no block device {major}:{minor} in sysfs"))?;
    let name = file_name(&dir);
    let mut disks = Vec::new();
    let mut disk_paths = Vec::new();
    let mut disk_dirs = Vec::new();
    whole_disks(&dir, &mut disks, &mut disk_paths, &mut disk_dirs, 0);
    Ok(BlockDevice { name, disks, disk_paths, disk_dirs })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The whole disks under the sysfs directory `dir` of a block device: its parent if it is a
/// partition, the disks of its `slaves/` if it is a stacked device, else itself.
fn whole_disks(
    dir: &Path,
    out: &mut Vec<String>,
    paths: &mut Vec<PathBuf>,
    dirs: &mut Vec<PathBuf>,
    depth: u32,
) {
    let disk = if dir.join("partition").exists() {
        dir.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf())
    } else {
        dir.to_path_buf()
    };
    let slaves = disk.join("slaves");
    let mut members: Vec<PathBuf> = std::fs::read_dir(&slaves)
        .map(|rd| rd.flatten().filter_map(|e| std::fs::canonicalize(e.path()).ok()).collect())
        .unwrap_or_default();
    members.sort();
    if !members.is_empty() && depth < 8 {
        for m in members {
            whole_disks(&m, out, paths, dirs, depth + 1);
        }
        return;
    }
    let name = file_name(&disk);
    if !out.contains(&name) {
        out.push(name);
        // `device` leads to the hardware (PCI function, virtio device) that raises the IRQs.
        paths.push(std::fs::canonicalize(disk.join("device")).unwrap_or_else(|_| disk.clone()));
        dirs.push(disk);
    }
}

/// The mount source of the mount that holds `path`, from the text of `/proc/self/mountinfo`
/// (the longest mount point that is a prefix of `path`, the last one mounted winning).
pub fn mount_source(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?, r.next()?);
        let mp = unescape_mount(mount_point);
        if path.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            best = Some((mp.len(), source.to_string(), fstype.to_string()));
        }
    }
    best.map(|(_, s, f)| (s, f))
}

/// The options of the mount that holds `path` (the mount's own, then the file system's), from
/// the text of `/proc/self/mountinfo`, comma separated.
pub fn mount_options(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let (Some(mount_point), Some(own)) = (left.split(' ').nth(4), left.split(' ').nth(5))
        else {
            continue;
        };
        let fs_opts = right.split(' ').nth(2).unwrap_or("");
        let mp = unescape_mount(mount_point);
        if path.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            best = Some((mp.len(), format!("{own},{fs_opts}")));
        }
    }
    best.map(|(_, o)| o)
}

/// The options of the mount that holds `dir` (see [`mount_options`]).
pub fn mount_options_of_dir(sys: &Sys, dir: &Path) -> Option<String> {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mount_options(&sys.read("proc/self/mountinfo")?, &abs)
}

/// Whether mount `options` turn on online discard.
pub fn online_discard(options: &str) -> bool {
    options.split(',').any(|x| x == "discard")
}

/// Online discard (`discard` mount option): every block freed is discarded at once. A log that
/// deletes segments then makes the device discard 64 MiB at a time, and on the test VM that
/// slowed the writes and flushes queued beside it to 16-29 ms. Trimmed segments are reused
/// (`spare_segments_max`), so few are deleted; a periodic `fstrim` is the usual advice.
pub fn check_discard(options: Option<&str>) -> Check {
    let Some(o) = options else {
        return Check::new("online discard", "off", "unknown (no mount found)", Verdict::Skip);
    };
    if online_discard(o) {
        Check::new("online discard", "off", "discard", Verdict::Warn).hint(
            "deleted segments are discarded at once and stall writes beside them; mount without \
             `discard` and run fstrim periodically (fstrim.timer)",
        )
    } else {
        Check::new("online discard", "off", "off", Verdict::Pass)
    }
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// `(major, minor)` of `st_dev` of `path`.
pub fn device_number(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    Some((libc::major(dev), libc::minor(dev)))
}

/// `(major, minor)` of a device node (`st_rdev`), such as a mount source `/dev/vda1`.
fn device_node_number(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    (rdev != 0).then(|| (libc::major(rdev), libc::minor(rdev)))
}

/// The block device under `dir` on this host.
pub fn block_device_of_dir(sys: &Sys, dir: &Path) -> Result<BlockDevice, String> {
    let (major, minor) =
        device_number(dir).ok_or_else(|| format!("cannot stat {}", dir.display()))?;
    match block_device(sys, major, minor) {
        Ok(d) => Ok(d),
        Err(first) => {
            // An anonymous device number (btrfs, overlayfs): try the mount's source.
            let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            let mi = sys.read("proc/self/mountinfo").unwrap_or_default();
            let (source, fstype) = mount_source(&mi, &abs).ok_or(first.clone())?;
            let (ma, mi) = device_node_number(Path::new(&source))
                .ok_or_else(|| format!("{first}; mount source {source} ({fstype}) is no device"))?;
            block_device(sys, ma, mi)
        }
    }
}

/// `(major, minor)` of a kernel release such as `6.8.0-45-generic`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The oldest kernel the runtime starts on: the native runtime sleeps with a timeout in the
/// same `io_uring_enter` (IORING_FEAT_EXT_ARG, 5.11); glommio 0.9 needs 5.8.
pub const KERNEL_MIN: (u32, u32) = if cfg!(feature = "glommio") { (5, 8) } else { (5, 11) };

/// Below [`KERNEL_MIN`] corelog does not start; 5.15 is the first long-term kernel whose
/// io_uring has everything corelog uses working well (and 6.x more so: a flush posts one
/// completion from 5.17, and completions wait for the executor's next system call from 5.19).
pub fn check_kernel(release: &str) -> Check {
    let v = parse_kernel_version(release);
    let verdict = match v {
        None => Verdict::Warn,
        Some(v) if v < KERNEL_MIN => Verdict::Fail,
        Some(v) if v < (5, 15) => Verdict::Warn,
        Some(_) => Verdict::Pass,
    };
    let (major, minor) = KERNEL_MIN;
    Check::new("kernel version", &format!(">= 5.15 ({major}.{minor} at least)"), release, verdict)
        .hint(format!(
            "upgrade the kernel: the {} runtime needs {major}.{minor}, and io_uring matured by 5.15",
            crate::rt::RUNTIME
        ))
}

/// Sets up a ring of 2 entries and sends a NOP through it.
pub fn io_uring_nop() -> Result<(), String> {
    let mut ring = io_uring::IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    let nop = io_uring::opcode::Nop::new().build().user_data(0x6f6b);
    // SAFETY: a NOP refers to no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit_and_wait(1).map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe = ring.completion().next().ok_or("no completion")?;
    if cqe.user_data() != 0x6f6b || cqe.result() < 0 {
        return Err(format!("NOP completed with {}", cqe.result()));
    }
    Ok(())
}

/// `disabled` is `/proc/sys/kernel/io_uring_disabled` (absent before 6.6); `probe` the result
/// of [`io_uring_nop`].
pub fn check_io_uring(disabled: Option<&str>, probe: &Result<(), String>) -> Check {
    let sysctl = match disabled {
        Some(d) => format!("io_uring_disabled={d}"),
        None => "no io_uring_disabled sysctl".into(),
    };
    let (found, verdict) = match probe {
        Ok(()) => (format!("NOP completed; {sysctl}"), Verdict::Pass),
        Err(e) => (format!("{e}; {sysctl}"), Verdict::Fail),
    };
    Check::new("io_uring usable", "a ring completes a NOP", found, verdict)
        .hint("sysctl -w kernel.io_uring_disabled=0 (or run as a member of kernel.io_uring_group)")
}

/// glommio refuses to start below this locked-memory limit (the native runtime registers no
/// memory; this check is made for a `--features glommio` build).
pub const GLOMMIO_MEMLOCK_MIN: u64 = 512 << 10;

/// `limit` is RLIMIT_MEMLOCK in bytes (`None`: unlimited); `ipc_lock` whether the process has
/// CAP_IPC_LOCK; `needed` the bytes of DMA memory corelog registers.
///
/// io_uring charges registered buffers to the user's locked memory once per ring unless the
/// process has CAP_IPC_LOCK; glommio registers each executor's DMA arena with its three rings.
/// Below the need it skips the registration (writes still work, through the slower unfixed path).
pub fn check_memlock(limit: Option<u64>, ipc_lock: bool, needed: u64) -> Check {
    let expected = format!(">= {} or CAP_IPC_LOCK", human_bytes(needed));
    let found = match limit {
        None => "unlimited".to_string(),
        Some(l) => human_bytes(l),
    } + if ipc_lock { ", CAP_IPC_LOCK" } else { "" };
    let verdict = match limit {
        _ if ipc_lock => Verdict::Pass,
        None => Verdict::Pass,
        Some(l) if l < GLOMMIO_MEMLOCK_MIN => Verdict::Fail,
        Some(l) if l < needed => Verdict::Warn,
        Some(_) => Verdict::Pass,
    };
    Check::new("locked memory", &expected, found, verdict).hint(format!(
        "raise it: LimitMEMLOCK={} in the systemd unit, or memlock in limits.conf",
        needed.max(GLOMMIO_MEMLOCK_MIN)
    ))
}

/// Whether CAP_IPC_LOCK (bit 14) is in the effective set, from the text of
/// `/proc/self/status`.
pub fn has_cap_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// The name of a file-system magic number (`statfs` `f_type`).
pub fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683E => "btrfs".into(),
        0x858_458F6 => "ramfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        t => format!("{t:#x}"),
    }
}

/// ext4 and xfs are what corelog is tested on; tmpfs and ramfs lose everything at reboot.
pub fn check_fs(fs: &str, source: &str) -> Check {
    let verdict = match fs {
        "ext4" | "xfs" => Verdict::Pass,
        "tmpfs" | "ramfs" => Verdict::Fail,
        _ => Verdict::Warn,
    };
    Check::new("data dir file system", "ext4 or xfs", format!("{fs} on {source}"), verdict).hint(
        match verdict {
            Verdict::Fail => "memory-backed: nothing survives a reboot; use a disk",
            _ => "untested here: copy-on-write or network file systems make fdatasync costly",
        },
    )
}

/// Creates a file in `dir` with O_DIRECT, writes one aligned 4 KiB block, fdatasyncs it and
/// removes it.
pub fn probe_direct_io(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join(format!(".corelog-doctor-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("open O_DIRECT: {e}"))?;
    let buf = AlignedBuf::new(4096, 0x5a);
    let r = f
        .write_at(buf.as_slice(), 0)
        .map_err(|e| format!("aligned 4 KiB write: {e}"))
        .and_then(|n| if n == 4096 { Ok(()) } else { Err(format!("short write of {n}")) })
        .and_then(|()| f.sync_data().map_err(|e| format!("fdatasync: {e}")));
    drop(f);
    let _ = std::fs::remove_file(&path);
    r
}

/// `probe` is the result of [`probe_direct_io`].
pub fn check_direct_io(probe: &Result<(), String>) -> Check {
    let (found, verdict) = match probe {
        Ok(()) => ("aligned 4 KiB write + fdatasync ok".to_string(), Verdict::Pass),
        Err(e) => (e.clone(), Verdict::Fail),
    };
    Check::new("O_DIRECT on data dir", "open + aligned write work", found, verdict)
        .hint("put the data directory on ext4 or xfs on a local disk")
}

/// The selected entry of a sysfs choice list such as `none [mq-deadline] kyber bfq`.
pub fn selected(choices: &str) -> Option<&str> {
    let start = choices.find('[')?;
    let end = choices[start..].find(']')? + start;
    Some(&choices[start + 1..end])
}

/// `disks` pairs each disk's name with its `queue/scheduler` (absent for some virtual disks).
pub fn check_scheduler(disks: &[(String, Option<String>)]) -> Check {
    if disks.is_empty() {
        return Check::new("I/O scheduler", "none", "no block device found", Verdict::Skip);
    }
    let mut found = Vec::new();
    let mut verdict = Verdict::Pass;
    for (d, s) in disks {
        match s.as_deref() {
            None => found.push(format!("{d}: no queue/scheduler")),
            Some(s) => {
                let sel = selected(s).unwrap_or(s);
                if sel != "none" {
                    verdict = Verdict::Warn;
                }
                found.push(format!("{d}: {sel}"));
            }
        }
    }
    let names: Vec<&str> = disks.iter().map(|(d, _)| d.as_str()).collect();
    Check::new("I/O scheduler", "none", found.join(", "), verdict)
        .hint(format!("tuning/io-scheduler.sh --apply {}", names.join(" ")))
}

/// `disks` pairs each disk with its `queue/write_cache` and `queue/fua`.
pub fn check_write_cache(disks: &[(String, Option<String>, Option<String>)]) -> Check {
    if disks.is_empty() {
        return Check::new(
            "volatile write cache",
            "write through (PLP)",
            "no block device found",
            Verdict::Skip,
        );
    }
    let mut found = Vec::new();
    let mut verdict = Verdict::Pass;
    for (d, wc, fua) in disks {
        let wc = wc.as_deref().unwrap_or("unknown");
        let fua = fua.as_deref().unwrap_or("?");
        if wc != "write through" {
            verdict = Verdict::Warn;
        }
        found.push(format!("{d}: {wc}, fua {fua}"));
    }
    Check::new("volatile write cache", "write through (PLP)", found.join("; "), verdict).hint(
        "durable still (every fdatasync flushes the cache) but each flush waits for it; \
         drives with power-loss protection report write through. Never set write through \
         on a drive without PLP",
    )
}

/// `enabled` is `/sys/kernel/mm/transparent_hugepage/enabled`.
pub fn check_thp(enabled: Option<&str>) -> Check {
    let Some(e) = enabled else {
        return Check::new("transparent huge pages", "madvise or never", "n/a", Verdict::Skip);
    };
    let sel = selected(e).unwrap_or(e);
    let verdict = if sel == "always" { Verdict::Warn } else { Verdict::Pass };
    Check::new("transparent huge pages", "madvise or never", sel, verdict)
        .hint("tuning/thp.sh --apply (khugepaged compaction stalls reactor threads)")
}

/// `swaps` is `/proc/swaps`, `swappiness` is `/proc/sys/vm/swappiness`.
pub fn check_swap(swaps: Option<&str>, swappiness: Option<&str>) -> Check {
    let devices: Vec<&str> =
        swaps.unwrap_or("").lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    let sw: Option<u32> = swappiness.and_then(|s| s.trim().parse().ok());
    let found = format!(
        "{}, swappiness {}",
        if devices.is_empty() { "no swap".to_string() } else { devices.join(" ") },
        sw.map_or("?".to_string(), |s| s.to_string())
    );
    let verdict = match (devices.is_empty(), sw) {
        (true, _) => Verdict::Pass,
        (false, Some(s)) if s <= 10 => Verdict::Pass,
        _ => Verdict::Warn,
    };
    Check::new("swap", "none, or swappiness <= 10", found, verdict)
        .hint("tuning/swappiness.sh --apply (a swapped-out buffer turns a write into a read)")
}

/// `governors` pairs each CPU that corelog uses with its `cpufreq/scaling_governor`.
pub fn check_governor(governors: &[(usize, Option<String>)]) -> Check {
    let known: Vec<(usize, &str)> =
        governors.iter().filter_map(|(c, g)| g.as_deref().map(|g| (*c, g))).collect();
    if known.is_empty() {
        return Check::new(
            "CPU governor",
            "performance",
            "no cpufreq (a VM, or a fixed-frequency CPU)",
            Verdict::Skip,
        );
    }
    let mut distinct: Vec<&str> = known.iter().map(|(_, g)| *g).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let verdict =
        if distinct.iter().all(|g| *g == "performance") { Verdict::Pass } else { Verdict::Warn };
    Check::new("CPU governor", "performance", distinct.join(", "), verdict)
        .hint("tuning/cpu-governor.sh --apply (frequency ramps add tens of µs to short bursts)")
}

/// `current` and `available` are the files of `/sys/devices/system/clocksource/clocksource0`.
/// tsc (x86), arch_sys_counter (arm64) and kvm-clock are read in the vDSO, without a syscall.
pub fn check_clocksource(current: Option<&str>, available: Option<&str>) -> Check {
    let Some(c) = current else {
        return Check::new("clock source", "tsc", "n/a", Verdict::Skip);
    };
    let fast = ["tsc", "arch_sys_counter", "kvm-clock"];
    let verdict = if fast.contains(&c) { Verdict::Pass } else { Verdict::Warn };
    let hint = if available.is_some_and(|a| a.split_whitespace().any(|x| x == "tsc")) {
        "tuning/clocksource.sh --apply (tsc is offered)"
    } else {
        "every clock_gettime becomes a system call; per-stage timing costs more"
    };
    Check::new("clock source", "tsc (or another vDSO clock)", c, verdict).hint(hint)
}

/// One line of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    /// The IRQ number.
    pub irq: u32,
    /// Interrupts per CPU.
    pub counts: Vec<u64>,
    /// The rest of the line (controller, trigger, action names).
    pub name: String,
}

/// The numbered lines of `/proc/interrupts`.
pub fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    let ncpu = lines.next().map_or(0, |h| h.split_whitespace().count());
    let mut out = Vec::new();
    for l in lines {
        let Some((num, rest)) = l.trim_start().split_once(':') else { continue };
        let Ok(irq) = num.parse() else { continue };
        let mut fields = rest.split_whitespace();
        let counts: Vec<u64> = fields.by_ref().take(ncpu).filter_map(|c| c.parse().ok()).collect();
        let name = fields.collect::<Vec<_>>().join(" ");
        out.push(IrqLine { irq, counts, name });
    }
    out
}

/// A CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => out.extend(part.trim().parse::<usize>().ok()),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The IRQs a device raises: the `msi_irqs/` of the nearest ancestor of its sysfs directory
/// that has one (the PCI function), else its `irq` file. Vector 0 of a virtio function is
/// its configuration interrupt; `interrupts` drops IRQs whose names say `config`.
pub fn device_irqs(dev_path: &Path, interrupts: &[IrqLine]) -> Vec<u32> {
    let mut p = Some(dev_path);
    while let Some(dir) = p {
        let msi = dir.join("msi_irqs");
        if let Ok(rd) = std::fs::read_dir(&msi) {
            let mut v: Vec<u32> =
                rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
            v.sort_unstable();
            v.retain(|irq| {
                interrupts.iter().find(|l| l.irq == *irq).is_none_or(|l| !l.name.contains("config"))
            });
            return v;
        }
        if let Some(irq) = std::fs::read_to_string(dir.join("irq"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|i| *i > 0)
        {
            return vec![irq];
        }
        p = dir.parent().filter(|d| d.as_os_str().len() > 1 && !d.ends_with("devices"));
    }
    Vec::new()
}

/// Where an IRQ fires: its effective affinity if the kernel reports one, else its allowed set.
pub fn irq_cpus(sys: &Sys, irq: u32) -> Vec<usize> {
    sys.read(&format!("proc/irq/{irq}/effective_affinity_list"))
        .or_else(|| sys.read(&format!("proc/irq/{irq}/smp_affinity_list")))
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default()
}

/// Where one IRQ may fire (`smp_affinity_list`) and where it does (the effective affinity,
/// or the allowed set when the kernel does not report one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqPlacement {
    /// The IRQ number.
    pub irq: u32,
    /// The CPUs it fires on.
    pub effective: Vec<usize>,
    /// The CPUs it may fire on.
    pub allowed: Vec<usize>,
}

/// The placement of `irq` on this host (or fixture).
pub fn irq_placement(sys: &Sys, irq: u32) -> IrqPlacement {
    let allowed = sys
        .read(&format!("proc/irq/{irq}/smp_affinity_list"))
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    IrqPlacement { irq, effective: irq_cpus(sys, irq), allowed }
}

/// `irqs` are the device's IRQs; `pinned` the cores corelog pins; `ncpu` the CPUs online.
///
/// Interrupt work on a pinned reactor core steals time from it. With cores to spare the IRQs
/// belong on the others. A device with a queue per CPU (NVMe, multi-queue NICs: each IRQ
/// allowed on exactly one CPU, together covering them all) is fine as is, since each core
/// completes its own I/O, and the kernel will not move those IRQs anyway. A host where corelog
/// pins every core has no choice.
pub fn check_irq_affinity(
    condition: &str,
    device: &str,
    irqs: &[IrqPlacement],
    pinned: &[usize],
    ncpu: usize,
) -> Check {
    let expected = "off the pinned cores, or a queue per core";
    if irqs.is_empty() {
        return Check::new(condition, expected, format!("{device}: no IRQs found"), Verdict::Skip);
    }
    let mut cpus: Vec<usize> = irqs.iter().flat_map(|p| p.effective.iter().copied()).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let mut one_each: Vec<usize> =
        irqs.iter().filter(|p| p.allowed.len() == 1).map(|p| p.allowed[0]).collect();
    one_each.sort_unstable();
    one_each.dedup();
    let per_cpu_queues =
        ncpu > 1 && irqs.iter().all(|p| p.allowed.len() == 1) && one_each.len() >= ncpu;
    let list = |v: &[usize]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let found = format!(
        "{device}: IRQ {} on cpu {}{}; pinned {}",
        irqs.iter().map(|p| p.irq.to_string()).collect::<Vec<_>>().join(","),
        list(&cpus),
        if per_cpu_queues { " (a queue per CPU)" } else { "" },
        if pinned.is_empty() { "none".to_string() } else { list(pinned) }
    );
    let overlap = cpus.iter().any(|c| pinned.contains(c));
    let verdict = if pinned.is_empty() {
        Verdict::Skip
    } else if !overlap || per_cpu_queues || pinned.len() >= ncpu {
        Verdict::Pass
    } else {
        Verdict::Warn
    };
    Check::new(condition, expected, found, verdict).hint(format!(
        "tuning/irq-affinity.sh --apply --avoid {} (move the device's IRQs off the pinned cores)",
        list(pinned)
    ))
}

/// The interface of the default route, from the text of `/proc/net/route`.
pub fn default_route_interface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// Bytes, in the unit that reads best.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// What a run needs to know besides the host.
#[derive(Debug, Clone)]
pub struct Target {
    /// The data directory (an existing directory).
    pub dir: PathBuf,
    /// Cores corelog pins.
    pub pinned: Vec<usize>,
    /// Bytes of DMA memory corelog registers in all.
    pub dma_bytes: u64,
    /// The replication interface.
    pub nic: Option<String>,
}

/// All checks, in the order of [`CONDITIONS`].
pub fn checks(sys: &Sys, t: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    let release = sys.read("proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    out.push(check_kernel(&release));
    out.push(check_io_uring(
        sys.read("proc/sys/kernel/io_uring_disabled").as_deref(),
        &io_uring_nop(),
    ));

    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid out-pointer.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0 {
        (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
    } else {
        Some(0)
    };
    let ipc_lock = has_cap_ipc_lock(&sys.read("proc/self/status").unwrap_or_default());
    if cfg!(feature = "glommio") {
        out.push(check_memlock(limit, ipc_lock, t.dma_bytes));
    } else {
        out.push(Check::new(
            "locked memory",
            "nothing (the native runtime registers no buffers)",
            limit.map_or("unlimited".to_string(), human_bytes),
            Verdict::Skip,
        ));
    }

    let fs = crate::log::filesystem_type(&t.dir).map_or("unknown".to_string(), fs_name);
    let dev = block_device_of_dir(sys, &t.dir);
    let source = match &dev {
        Ok(d) => format!("/dev/{}", d.name),
        Err(e) => e.clone(),
    };
    out.push(check_fs(&fs, &source));
    out.push(check_discard(mount_options_of_dir(sys, &t.dir).as_deref()));
    out.push(check_direct_io(&probe_direct_io(&t.dir)));

    let disks: Vec<String> = dev.as_ref().map(|d| d.disks.clone()).unwrap_or_default();
    let queue = |f: &str| dev.as_ref().map(|d| d.queue(f)).unwrap_or_default();
    out.push(check_scheduler(&queue("scheduler")));
    let (wc, fua) = (queue("write_cache"), queue("fua"));
    out.push(check_write_cache(
        &wc.into_iter().zip(fua).map(|((d, w), (_, f))| (d, w, f)).collect::<Vec<_>>(),
    ));
    out.push(check_thp(sys.read("sys/kernel/mm/transparent_hugepage/enabled").as_deref()));
    out.push(check_swap(
        sys.read("proc/swaps").as_deref(),
        sys.read("proc/sys/vm/swappiness").as_deref(),
    ));
    let online = sys
        .read("sys/devices/system/cpu/online")
        .map(|s| parse_cpu_list(&s))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        });
    let used: Vec<usize> = if t.pinned.is_empty() { online.clone() } else { t.pinned.clone() };
    out.push(check_governor(
        &used
            .iter()
            .map(|c| {
                (*c, sys.read(&format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")))
            })
            .collect::<Vec<_>>(),
    ));

    let interrupts = parse_interrupts(&sys.read("proc/interrupts").unwrap_or_default());
    let with_cpus = |irqs: Vec<u32>| -> Vec<IrqPlacement> {
        irqs.into_iter().map(|i| irq_placement(sys, i)).collect()
    };
    let disk_irqs: Vec<IrqPlacement> = dev
        .as_ref()
        .map(|d| d.disk_paths.iter().flat_map(|p| device_irqs(p, &interrupts)).collect())
        .map(with_cpus)
        .unwrap_or_default();
    out.push(check_irq_affinity(
        "disk IRQ affinity",
        &disks.join(","),
        &disk_irqs,
        &t.pinned,
        online.len(),
    ));
    let nic = t
        .nic
        .clone()
        .or_else(|| default_route_interface(&sys.read("proc/net/route").unwrap_or_default()));
    let nic_irqs = nic
        .as_ref()
        .and_then(|n| std::fs::canonicalize(sys.path(&format!("sys/class/net/{n}/device"))).ok())
        .map(|p| with_cpus(device_irqs(&p, &interrupts)))
        .unwrap_or_default();
    out.push(check_irq_affinity(
        "NIC IRQ affinity",
        nic.as_deref().unwrap_or("no default route"),
        &nic_irqs,
        &t.pinned,
        online.len(),
    ));
    out.push(check_clocksource(
        sys.read("sys/devices/system/clocksource/clocksource0/current_clocksource").as_deref(),
        sys.read("sys/devices/system/clocksource/clocksource0/available_clocksource").as_deref(),
    ));
    debug_assert_eq!(out.len(), CONDITIONS.len());
    out
}

/// The table as text.
pub fn render_table(checks: &[Check]) -> String {
    let w =
        |f: &dyn Fn(&Check) -> usize, min: usize| checks.iter().map(f).max().unwrap_or(0).max(min);
    let (wc, we, wf) = (
        w(&|c| c.condition.len(), 9),
        w(&|c| c.expected.chars().count(), 8),
        w(&|c| c.found.chars().count(), 5).min(60),
    );
    let mut s = format!("{:wc$}  {:we$}  {:wf$}  verdict\n", "condition", "expected", "found");
    for c in checks {
        s += &format!("{:wc$}  {:we$}  {:wf$}  {}\n", c.condition, c.expected, c.found, c.verdict);
    }
    let hints: Vec<&Check> = checks.iter().filter(|c| !c.hint.is_empty()).collect();
    if !hints.is_empty() {
        s += "\nto do:\n";
        for c in hints {
            s += &format!("  {} {}: {}\n", c.verdict, c.condition, c.hint);
        }
    }
    s
}

/// A small aligned buffer for O_DIRECT.
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// `len` bytes aligned to 4096, every byte `fill`.
    pub(crate) fn new(len: usize, fill: u8) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `ptr` points to `layout.size()` writable bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, layout.size()) };
        AlignedBuf { ptr, layout }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: allocated and initialised in `new`, alive until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Runs `corelog doctor`.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let cfg = match &args.config {
        Some(p) => match crate::tools::cli::load_config(p).and_then(|mut c| {
            c.apply_disk_profile()?;
            Ok(c)
        }) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("corelog doctor: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let dir = args
        .dir
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("."));
    // A data directory not created yet: check the nearest existing ancestor.
    let mut existing = dir.clone();
    while !existing.is_dir() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p.to_path_buf(),
            _ => {
                existing = PathBuf::from(".");
                break;
            }
        }
    }
    let pinned: Vec<usize> = match (args.cores, &cfg) {
        (Some(n), _) => (0..n).collect(),
        (None, Some(c)) if c.pin => (0..c.cores).collect(),
        _ => Vec::new(),
    };
    let dma_bytes = match &cfg {
        Some(c) => {
            let per_core = c.log_config(0).dma_memory_bytes() as u64
                * c.groups.div_ceil(c.cores as u64).max(1);
            3 * per_core * c.cores as u64
        }
        None => {
            let d = crate::node::NodeConfig::default();
            3 * d.log_config(0).dma_memory_bytes() as u64 * pinned.len().max(1) as u64
        }
    };
    let target = Target { dir: existing.clone(), pinned, dma_bytes, nic: args.nic.clone() };
    let checks = checks(&Sys::host(), &target);
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warns = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    if args.json {
        let v = serde_json::json!({
            "dir": existing,
            "checks": checks,
            "fail": fails,
            "warn": warns,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializable"));
    } else {
        if existing != dir {
            println!("{} does not exist yet; checking {}", dir.display(), existing.display());
        }
        print!("{}", render_table(&checks));
        println!("\n{fails} FAIL, {warns} WARN");
    }
    if fails > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
