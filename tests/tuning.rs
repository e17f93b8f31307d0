//! The scripts in `tuning/`: a dry run on this host changes nothing and prints an undo command
//! for every change it proposes; `--apply` against a fixture tree (TUNING_ROOT) changes the
//! files, a second run finds nothing to do, and the undo file restores every value.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tuning() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

fn script(name: &str, args: &[&str], root: Option<&Path>, undo: Option<&Path>) -> (bool, String) {
    let mut c = Command::new("bash");
    c.arg(tuning().join(name)).args(args);
    if let Some(r) = root {
        c.env("TUNING_ROOT", r);
    }
    if let Some(u) = undo {
        c.env("UNDO_FILE", u);
    }
    let out = c.output().expect("bash");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The selected value of a sysfs choice list, or the trimmed contents.
fn value(path: &Path) -> String {
    let v = std::fs::read_to_string(path).unwrap();
    let v = v.trim();
    match (v.find('['), v.find(']')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
        _ => v.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// `(path, current)` of every `would set PATH: CUR -> WANT` line, checking that an `undo:`
/// line restoring CUR follows each.
fn proposed(text: &str) -> Vec<(PathBuf, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("would set ") else { continue };
        let (path, change) = rest.split_once(": ").unwrap();
        let cur = change.split(" -> ").next().unwrap();
        let undo = lines.get(i + 1).copied().unwrap_or("");
        assert_eq!(undo, format!("undo: echo '{cur}' > {path}"), "after {l:?} in\n{text}");
        out.push((PathBuf::from(path), cur.to_string()));
    }
    out
}

#[test]
fn dry_runs_change_nothing_and_print_undo_commands() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let runs: &[(&str, &[&str])] = &[
        ("io-scheduler.sh", &["--dir", dir]),
        ("write-cache.sh", &["--dir", dir]),
        ("cpu-governor.sh", &[]),
        ("thp.sh", &[]),
        ("swappiness.sh", &[]),
        ("clocksource.sh", &[]),
        ("net-sysctls.sh", &[]),
        ("busy-poll.sh", &[]),
        ("irq-affinity.sh", &["--avoid", "0", "--dir", dir]),
        ("all.sh", &["--dir", dir, "--avoid", "0"]),
    ];
    let mut listed: Vec<String> = std::fs::read_dir(tuning())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh") && n != "lib.sh")
        .collect();
    listed.sort();
    let mut covered: Vec<String> = runs.iter().map(|r| r.0.to_string()).collect();
    covered.sort();
    assert_eq!(listed, covered, "every script has a dry run here");
    for (name, args) in runs {
        let (ok, text) = script(name, args, None, None);
        assert!(ok, "{name} failed:\n{text}");
        assert!(text.contains("dry run: nothing changed"), "{name}:\n{text}");
        for (path, cur) in proposed(&text) {
            assert_eq!(value(&path), cur, "{name} changed {} in a dry run", path.display());
        }
    }
    // Help and bad arguments.
    let (ok, text) = script("irq-affinity.sh", &[], None, None);
    assert!(!ok && text.contains("--avoid"), "{text}");
    let (ok, text) = script("busy-poll.sh", &["fast"], None, None);
    assert!(!ok && text.contains("not a number"), "{text}");
    let (ok, text) = script("thp.sh", &["--help"], None, None);
    assert!(ok && text.contains("Usage: tuning/thp.sh"), "{text}");
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("{text}\n")).unwrap();
}

#[test]
fn apply_on_a_fixture_and_undo() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let files: &[(&str, &str, &str)] = &[
        // (file, before, after --apply)
        ("sys/block/sdz/queue/scheduler", "none [mq-deadline] kyber", "none"),
        ("sys/block/sdz/queue/nomerges", "0", "2"),
        ("sys/block/sdz/queue/rq_affinity", "1", "2"),
        ("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave", "performance"),
        ("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "performance", "performance"),
        ("sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never", "madvise"),
        ("sys/kernel/mm/transparent_hugepage/defrag", "always defer [madvise] never", "madvise"),
        ("proc/sys/vm/swappiness", "60", "1"),
        ("proc/sys/net/core/somaxconn", "8192", "8192"),
        ("proc/sys/net/core/rmem_max", "212992", "16777216"),
        ("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t33554432", "4096 131072 33554432"),
        ("proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304", "4096 65536 16777216"),
        ("sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet", "tsc"),
        ("proc/irq/90/smp_affinity_list", "0-3", "2-3"),
        ("proc/irq/91/smp_affinity_list", "1", "2-3"),
    ];
    for (f, before, _) in files {
        put(&root, f, before);
    }
    put(&root, "sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet");
    put(&root, "sys/devices/system/cpu/online", "0-3");
    put(&root, "sys/devices/pci0000:00/0000:00:05.0/msi_irqs/90", "msix");
    put(&root, "sys/devices/pci0000:00/0000:00:05.0/msi_irqs/91", "msix");
    std::fs::create_dir_all(root.join("sys/class/net/eth9")).unwrap();
    std::os::unix::fs::symlink(
        root.join("sys/devices/pci0000:00/0000:00:05.0"),
        root.join("sys/class/net/eth9/device"),
    )
    .unwrap();
    let undo = t.path().join("undo.sh");
    let runs: &[(&str, &[&str])] = &[
        ("io-scheduler.sh", &["sdz"]),
        ("cpu-governor.sh", &[]),
        ("thp.sh", &[]),
        ("swappiness.sh", &[]),
        ("net-sysctls.sh", &[]),
        ("clocksource.sh", &[]),
        ("irq-affinity.sh", &["--avoid", "0-1", "--nic", "eth9", "--dir", "/nonexistent"]),
    ];
    for (name, args) in runs {
        let mut a = args.to_vec();
        a.push("--apply");
        let (ok, text) = script(name, &a, Some(&root), Some(&undo));
        assert!(ok, "{name} --apply failed:\n{text}");
        assert!(!text.contains("would set"), "{name}:\n{text}");
    }
    for (f, _, after) in files {
        assert_eq!(value(&root.join(f)), *after, "{f} after --apply");
    }
    // Applied: a second dry run has nothing left to do.
    for (name, args) in runs {
        let (ok, text) = script(name, args, Some(&root), None);
        assert!(ok, "{text}");
        assert!(!text.contains("would set"), "{name} still proposes a change:\n{text}");
    }
    // The undo file puts every value back.
    let out = Command::new("bash").arg(&undo).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (f, before, _) in files {
        let want = value(&{
            let p = t.path().join("before");
            std::fs::write(&p, before).unwrap();
            p
        });
        assert_eq!(value(&root.join(f)), want, "{f} after undo");
    }
}

#[test]
fn shellcheck_if_available() {
    if Command::new("shellcheck").arg("--version").output().is_err() {
        eprintln!("skipped: no shellcheck on this host");
        return;
    }
    let mut c = Command::new("shellcheck");
    c.args(["-x", "-S", "warning"]).current_dir(tuning());
    for e in std::fs::read_dir(tuning()).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".sh") {
            c.arg(e.file_name());
        }
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
