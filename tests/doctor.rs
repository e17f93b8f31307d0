//! `corelog doctor`: the parsing and verdict logic against fixture inputs (contents of real
//! hosts' files, a fake sysfs tree), and one run on this host.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use corelog::tools::doctor::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn kernel_versions() {
    assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
    assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
    assert_eq!(parse_kernel_version("garbage"), None);
    assert_eq!(check_kernel("6.8.0-45-generic").verdict, Verdict::Pass);
    // 5.10 lacks what the native runtime needs to sleep with a timeout (EXT_ARG, 5.11).
    let old = if cfg!(feature = "glommio") { Verdict::Warn } else { Verdict::Fail };
    assert_eq!(check_kernel("5.10.0-28-amd64").verdict, old);
    assert_eq!(check_kernel("5.12.0").verdict, Verdict::Warn);
    assert_eq!(check_kernel("4.19.0-27-amd64").verdict, Verdict::Fail);
    assert!(!check_kernel("4.19.0").hint.is_empty());
    assert!(check_kernel("6.1.0").hint.is_empty());
}

#[test]
fn io_uring_and_memlock() {
    assert_eq!(check_io_uring(Some("0"), &Ok(())).verdict, Verdict::Pass);
    let c = check_io_uring(Some("2"), &Err("io_uring_setup: Operation not permitted".into()));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.found.contains("io_uring_disabled=2"), "{}", c.found);
    // This host can set up a ring (corelog's own tests need one).
    assert_eq!(io_uring_nop(), Ok(()));

    let need = 24 << 20;
    assert_eq!(check_memlock(Some(64 << 10), false, need).verdict, Verdict::Fail);
    assert_eq!(check_memlock(Some(8 << 20), false, need).verdict, Verdict::Warn);
    assert_eq!(check_memlock(Some(8 << 20), true, need).verdict, Verdict::Pass);
    assert_eq!(check_memlock(Some(32 << 20), false, need).verdict, Verdict::Pass);
    assert_eq!(check_memlock(None, false, need).verdict, Verdict::Pass);
    assert!(has_cap_ipc_lock("Name:\tx\nCapEff:\t000001ffffffffff\n"));
    assert!(!has_cap_ipc_lock("CapEff:\t0000000000000000\n"));
    assert!(!has_cap_ipc_lock("CapEff:\t0000000000003000\n"));
    assert!(has_cap_ipc_lock("CapEff:\t0000000000004000\n"));
}

#[test]
fn file_systems_and_direct_io() {
    assert_eq!(fs_name(0xEF53), "ext4");
    assert_eq!(fs_name(0x0102_1994), "tmpfs");
    assert_eq!(check_fs("xfs", "/dev/nvme0n1p2").verdict, Verdict::Pass);
    assert_eq!(check_fs("tmpfs", "tmpfs").verdict, Verdict::Fail);
    assert_eq!(check_fs("btrfs", "/dev/sda2").verdict, Verdict::Warn);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if corelog::log::direct_io_effective(dir.path()) {
        assert_eq!(probe_direct_io(dir.path()), Ok(()));
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    assert_eq!(
        check_direct_io(&Err("open O_DIRECT: Invalid argument".into())).verdict,
        Verdict::Fail
    );
}

#[test]
fn block_queue_settings() {
    assert_eq!(selected("none [mq-deadline] kyber bfq"), Some("mq-deadline"));
    assert_eq!(selected("[none] mq-deadline"), Some("none"));
    let s = |d: &str, v: Option<&str>| (d.to_string(), v.map(str::to_string));
    assert_eq!(
        check_scheduler(&[s("nvme0n1", Some("[none] mq-deadline kyber"))]).verdict,
        Verdict::Pass
    );
    let c = check_scheduler(&[s("sda", Some("none [mq-deadline]")), s("sdb", Some("[none]"))]);
    assert_eq!(c.verdict, Verdict::Warn);
    assert_eq!(c.found, "sda: mq-deadline, sdb: none");
    assert!(c.hint.contains("io-scheduler.sh") && c.hint.contains("sda sdb"), "{}", c.hint);
    assert_eq!(check_scheduler(&[]).verdict, Verdict::Skip);

    let w =
        |d: &str, wc: &str, fua: &str| (d.to_string(), Some(wc.to_string()), Some(fua.to_string()));
    assert_eq!(check_write_cache(&[w("nvme0n1", "write through", "1")]).verdict, Verdict::Pass);
    let c = check_write_cache(&[w("vda", "write back", "0")]);
    assert_eq!(c.verdict, Verdict::Warn);
    assert_eq!(c.found, "vda: write back, fua 0");
}

#[test]
fn memory_cpu_and_clock() {
    assert_eq!(check_thp(Some("always [madvise] never")).verdict, Verdict::Pass);
    assert_eq!(check_thp(Some("[always] madvise never")).verdict, Verdict::Warn);
    assert_eq!(check_thp(None).verdict, Verdict::Skip);

    let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
    assert_eq!(check_swap(Some(header), Some("60")).verdict, Verdict::Pass);
    let zram =
        format!("{header}/dev/zram0                              partition\t8388604\t\t0\t\t100\n");
    let c = check_swap(Some(&zram), Some("60"));
    assert_eq!(c.verdict, Verdict::Warn);
    assert_eq!(c.found, "/dev/zram0, swappiness 60");
    assert_eq!(check_swap(Some(&zram), Some("1")).verdict, Verdict::Pass);

    let g = |c: usize, v: Option<&str>| (c, v.map(str::to_string));
    assert_eq!(check_governor(&[g(0, None), g(1, None)]).verdict, Verdict::Skip);
    assert_eq!(
        check_governor(&[g(0, Some("performance")), g(1, Some("performance"))]).verdict,
        Verdict::Pass
    );
    let c = check_governor(&[g(0, Some("performance")), g(1, Some("powersave"))]);
    assert_eq!(c.verdict, Verdict::Warn);
    assert_eq!(c.found, "performance, powersave");

    assert_eq!(check_clocksource(Some("tsc"), Some("tsc kvm-clock")).verdict, Verdict::Pass);
    assert_eq!(check_clocksource(Some("kvm-clock"), Some("kvm-clock tsc")).verdict, Verdict::Pass);
    let c = check_clocksource(Some("hpet"), Some("tsc hpet acpi_pm"));
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(c.hint.contains("clocksource.sh"), "{}", c.hint);
}

const INTERRUPTS: &str = "           CPU0       CPU1       CPU2       CPU3
 35:          0          1          0          0  PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0   11971458          0          0  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 38:          0       2858          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       2375          0          0          0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
NMI:          0          0          0          0   Non-maskable interrupts
";

#[test]
fn interrupts_and_cpu_lists() {
    let l = parse_interrupts(INTERRUPTS);
    assert_eq!(l.len(), 4);
    assert_eq!(l[1].irq, 36);
    assert_eq!(l[1].counts, vec![0, 11971458, 0, 0]);
    assert!(l[1].name.ends_with("virtio1-req.0"), "{}", l[1].name);
    assert_eq!(parse_cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
    assert_eq!(parse_cpu_list("1\n"), vec![1]);
    assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    let route = "Iface\tDestination\tGateway \tFlags\n\
                 eth1\t000200C0\t00000000\t0001\n\
                 eth0\t00000000\t010200C0\t0003\n";
    assert_eq!(default_route_interface(route), Some("eth0".into()));
    assert_eq!(default_route_interface("Iface\tDestination\n"), None);
}

#[test]
fn irq_affinity_verdicts() {
    // (irq, effective, allowed)
    let irq = |i: u32, e: &[usize], a: &[usize]| IrqPlacement {
        irq: i,
        effective: e.to_vec(),
        allowed: a.to_vec(),
    };
    // On a pinned core, with cores to spare: move it.
    let c =
        check_irq_affinity("disk IRQ affinity", "vda", &[irq(36, &[1], &[0, 1, 2, 3])], &[0, 1], 4);
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(c.hint.contains("--avoid 0,1"), "{}", c.hint);
    assert_eq!(c.found, "vda: IRQ 36 on cpu 1; pinned 0,1");
    // Off the pinned cores.
    let c = check_irq_affinity("disk IRQ affinity", "vda", &[irq(36, &[3], &[2, 3])], &[0, 1], 4);
    assert_eq!(c.verdict, Verdict::Pass);
    // A queue per CPU (NVMe, managed IRQs): each core completes its own I/O.
    let per_cpu: Vec<_> = (0..4).map(|c| irq(100 + c as u32, &[c], &[c])).collect();
    let c = check_irq_affinity("d", "nvme0n1", &per_cpu, &[0, 1], 4);
    assert_eq!(c.verdict, Verdict::Pass);
    assert!(c.found.contains("a queue per CPU"), "{}", c.found);
    // As many IRQs as CPUs but each allowed anywhere (a virtio NIC's rx and tx): not per-CPU.
    let spread = [irq(38, &[1], &[0, 1, 2, 3]), irq(39, &[0], &[0, 1, 2, 3])];
    let spread4 = [
        spread[0].clone(),
        spread[1].clone(),
        irq(40, &[2], &[0, 1, 2, 3]),
        irq(41, &[3], &[0, 1, 2, 3]),
    ];
    assert_eq!(check_irq_affinity("d", "eth0", &spread4, &[0, 1], 4).verdict, Verdict::Warn);
    // Every core pinned: nowhere else to go.
    assert_eq!(check_irq_affinity("d", "eth0", &spread, &[0, 1], 2).verdict, Verdict::Pass);
    // Nothing pinned, or no IRQ found: the question does not apply.
    assert_eq!(check_irq_affinity("d", "vda", &spread, &[], 4).verdict, Verdict::Skip);
    assert_eq!(check_irq_affinity("d", "veth0", &[], &[0], 4).verdict, Verdict::Skip);
}

#[test]
fn mountinfo_lookup() {
    let mi = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
              27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
              40 27 0:45 / /data rw,relatime shared:9 - btrfs /dev/nvme0n1p2 rw,ssd\n\
              41 40 0:46 / /data/my\\040logs rw - xfs /dev/sdb1 rw\n";
    assert_eq!(
        mount_source(mi, Path::new("/data/wal")),
        Some(("/dev/nvme0n1p2".into(), "btrfs".into()))
    );
    assert_eq!(
        mount_source(mi, Path::new("/data/my logs/x")),
        Some(("/dev/sdb1".into(), "xfs".into()))
    );
    assert_eq!(mount_source(mi, Path::new("/home")), Some(("/dev/vda".into(), "ext4".into())));
    // Options: the mount's own, then the file system's.
    assert_eq!(mount_options(mi, Path::new("/data/wal")).as_deref(), Some("rw,relatime,rw,ssd"));
    let online = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,errors=continue\n";
    assert_eq!(
        check_discard(mount_options(online, Path::new("/var/tmp")).as_deref()).verdict,
        Verdict::Warn
    );
    assert_eq!(
        check_discard(mount_options(mi, Path::new("/home")).as_deref()).verdict,
        Verdict::Pass
    );
    assert_eq!(check_discard(Some("rw,nodiscard")).verdict, Verdict::Pass);
    assert_eq!(check_discard(None).verdict, Verdict::Skip);
}

/// A fake sysfs: disk `sdz` (8:0) with partition `sdz1` (8:1) on PCI function 0000:00:05.0
/// (MSI-X vectors 90 and 91), and a device-mapper volume `dm-0` (253:0) over `sdz1` and `sdy`.
fn fake_sysfs(root: &Path) {
    let pci = "sys/devices/pci0000:00/0000:00:05.0";
    write(root, &format!("{pci}/msi_irqs/90"), "msix");
    write(root, &format!("{pci}/msi_irqs/91"), "msix");
    let sdz = format!("{pci}/host0/target0:0:0/0:0:0:0/block/sdz");
    write(root, &format!("{sdz}/queue/scheduler"), "[none] mq-deadline\n");
    write(root, &format!("{sdz}/queue/write_cache"), "write through\n");
    write(root, &format!("{sdz}/queue/fua"), "1\n");
    write(root, &format!("{sdz}/sdz1/partition"), "1\n");
    std::fs::create_dir_all(root.join(format!("{sdz}/slaves"))).unwrap();
    symlink(
        root.join(format!("{pci}/host0/target0:0:0/0:0:0:0")),
        root.join(format!("{sdz}/device")),
    )
    .unwrap();
    let sdy = "sys/devices/virtual/block/sdy";
    write(root, &format!("{sdy}/queue/scheduler"), "none [bfq]\n");
    let dm = "sys/devices/virtual/block/dm-0";
    std::fs::create_dir_all(root.join(format!("{dm}/slaves"))).unwrap();
    symlink(root.join(format!("{sdz}/sdz1")), root.join(format!("{dm}/slaves/sdz1"))).unwrap();
    symlink(root.join(sdy), root.join(format!("{dm}/slaves/sdy"))).unwrap();
    std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
    symlink(root.join(&sdz), root.join("sys/dev/block/8:0")).unwrap();
    symlink(root.join(format!("{sdz}/sdz1")), root.join("sys/dev/block/8:1")).unwrap();
    symlink(root.join(dm), root.join("sys/dev/block/253:0")).unwrap();
    write(root, "proc/irq/90/effective_affinity_list", "3\n");
    write(root, "proc/irq/91/smp_affinity_list", "2-3\n");
    write(
        root,
        "proc/interrupts",
        "  CPU0 CPU1 CPU2 CPU3\n 90: 0 0 0 5 PCI-MSIX x 0-edge sdz-q0\n 91: 0 0 1 1 PCI-MSIX x 1-edge sdz-q1\n",
    );
    write(root, "sys/devices/system/cpu/online", "0-3\n");
}

#[test]
fn data_dir_to_block_device() {
    let t = tempfile::tempdir().unwrap();
    fake_sysfs(t.path());
    let sys = Sys::at(t.path());
    let d = block_device(&sys, 8, 1).unwrap();
    assert_eq!((d.name.as_str(), d.disks.clone()), ("sdz1", vec!["sdz".to_string()]));
    let d = block_device(&sys, 8, 0).unwrap();
    assert_eq!((d.name.as_str(), d.disks.clone()), ("sdz", vec!["sdz".to_string()]));
    let d = block_device(&sys, 253, 0).unwrap();
    assert_eq!(d.name, "dm-0");
    assert_eq!(d.disks, vec!["sdz".to_string(), "sdy".to_string()]);
    assert!(block_device(&sys, 9, 9).is_err());

    // The disk's IRQs, found through its `device` link up to the PCI function.
    let d = block_device(&sys, 8, 1).unwrap();
    let irqs = parse_interrupts(&sys.read("proc/interrupts").unwrap());
    assert_eq!(device_irqs(&d.disk_paths[0], &irqs), vec![90, 91]);
    assert_eq!(irq_cpus(&sys, 90), vec![3]);
    assert_eq!(irq_cpus(&sys, 91), vec![2, 3]);
    assert_eq!(irq_placement(&sys, 91).allowed, vec![2, 3]);
    assert_eq!(irq_placement(&sys, 90).allowed, Vec::<usize>::new());
}

/// The whole run against the fake sysfs, with the real data directory's device number mapped
/// to the fake partition: every row, in order, with the verdicts the fixture implies.
#[test]
fn all_checks_on_a_fixture_host() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fake_sysfs(&root);
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (ma, mi) = device_number(data.path()).unwrap();
    let link = root.join(format!("sys/dev/block/{ma}:{mi}"));
    let _ = std::fs::remove_file(&link);
    symlink(
        root.join("sys/devices/pci0000:00/0000:00:05.0/host0/target0:0:0/0:0:0:0/block/sdz/sdz1"),
        &link,
    )
    .unwrap();
    write(&root, "proc/sys/kernel/osrelease", "6.8.0-45-generic\n");
    write(&root, "sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n");
    write(&root, "proc/swaps", "Filename Type Size Used Priority\n");
    write(&root, "proc/sys/vm/swappiness", "60\n");
    write(&root, "proc/self/mountinfo", "27 1 8:1 / / rw,relatime - ext4 /dev/sdz1 rw,discard\n");
    write(&root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n");
    write(&root, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "performance\n");
    write(&root, "sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet\n");
    let target = Target {
        dir: data.path().to_path_buf(),
        pinned: vec![0, 1],
        dma_bytes: 24 << 20,
        nic: Some("nosuchnic0".into()),
    };
    let checks = checks(&Sys::at(&root), &target);
    let names: Vec<&str> = checks.iter().map(|c| c.condition.as_str()).collect();
    assert_eq!(names, CONDITIONS);
    let v = |name: &str| checks.iter().find(|c| c.condition == name).unwrap();
    assert_eq!(v("kernel version").found, "6.8.0-45-generic");
    assert_eq!(v("kernel version").verdict, Verdict::Pass);
    assert_eq!(v("I/O scheduler").found, "sdz: none");
    assert_eq!(v("I/O scheduler").verdict, Verdict::Pass);
    assert_eq!(v("volatile write cache").verdict, Verdict::Pass);
    assert_eq!(v("transparent huge pages").verdict, Verdict::Warn);
    assert_eq!(v("swap").verdict, Verdict::Pass);
    assert_eq!(v("online discard").verdict, Verdict::Warn);
    assert_eq!(v("CPU governor").verdict, Verdict::Warn);
    assert_eq!(v("clock source").verdict, Verdict::Warn);
    // IRQs 90 and 91 fire on cpus 2 and 3; corelog pins 0 and 1 of 4.
    assert_eq!(v("disk IRQ affinity").found, "sdz: IRQ 90,91 on cpu 2,3; pinned 0,1");
    assert_eq!(v("disk IRQ affinity").verdict, Verdict::Pass);
    assert_eq!(v("NIC IRQ affinity").verdict, Verdict::Skip);
    let table = render_table(&checks);
    for c in CONDITIONS {
        assert!(table.contains(c), "{c} missing from\n{table}");
    }
    assert!(table.contains("tuning/thp.sh"), "{table}");
}

fn doctor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corelog")).arg("doctor").args(args).output().unwrap()
}

/// On this host: every row present once, a valid verdict each, and the exit status says
/// whether any row failed.
#[test]
fn runs_on_this_host() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = doctor(&["--dir", dir.path().to_str().unwrap(), "--json", "--cores", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), CONDITIONS.len(), "{text}");
    for (c, name) in checks.iter().zip(CONDITIONS) {
        assert_eq!(c["condition"], *name);
        assert!(["PASS", "WARN", "FAIL", "SKIP"].contains(&c["verdict"].as_str().unwrap()), "{c}");
        assert!(!c["found"].as_str().unwrap().is_empty(), "{c}");
    }
    let fails = checks.iter().filter(|c| c["verdict"] == "FAIL").count();
    assert_eq!(v["fail"], fails);
    assert_eq!(out.status.success(), fails == 0, "{text}");
    // This host runs corelog's own tests, so io_uring works here, and O_DIRECT wherever the
    // target directory is not on tmpfs.
    let mut must_pass = vec!["io_uring usable"];
    if corelog::log::direct_io_effective(dir.path()) {
        must_pass.push("O_DIRECT on data dir");
    }
    for ok in must_pass {
        let c = checks.iter().find(|c| c["condition"] == ok).unwrap();
        assert_eq!(c["verdict"], "PASS", "{c}");
    }

    let out = doctor(&["--dir", dir.path().to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    for c in CONDITIONS {
        assert_eq!(table.lines().filter(|l| l.starts_with(c)).count(), 1, "{c}:\n{table}");
    }
}

/// A data directory on tmpfs is a FAIL, and the exit status says so.
#[test]
fn tmpfs_fails_with_non_zero_exit() {
    let shm = Path::new("/dev/shm");
    if corelog::log::filesystem_type(shm) != Some(0x0102_1994) {
        eprintln!("skipped: /dev/shm is not tmpfs here");
        return;
    }
    let out = doctor(&["--dir", "/dev/shm", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fs = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["condition"] == "data dir file system")
        .unwrap();
    assert_eq!(fs["verdict"], "FAIL", "{fs}");
    assert_eq!(out.status.code(), Some(1));
}
