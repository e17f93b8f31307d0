//! `tools/netns-cluster.sh`: namespaces with their own addresses that reach each other, cuts
//! by nft rules (both ways and one way) and by link down, heal, and an idempotent teardown.
//! Needs root; skipped with a printed reason otherwise.
//!
//! Connections are made from threads that enter a namespace with `setns(2)` (which moves only
//! the calling thread), so the test needs no program inside the namespaces.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/netns-cluster.sh").display().to_string()
}

fn run(prefix: &str, args: &[&str]) -> Output {
    Command::new("bash").arg(script()).args(args).env("NETNS_PREFIX", prefix).output().unwrap()
}

fn ok(prefix: &str, args: &[&str]) -> String {
    let o = run(prefix, args);
    assert!(
        o.status.success(),
        "netns-cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Whether a TCP connection from `from` (a namespace, or the root one) reaches `to`.
fn reaches(from: Option<&str>, to: SocketAddr) -> bool {
    let probe = move || TcpStream::connect_timeout(&to, Duration::from_millis(400)).is_ok();
    match from {
        Some(ns) => in_netns(ns, probe),
        None => probe(),
    }
}

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = run(&self.0, &["down"]);
    }
}

#[test]
fn namespaces_reach_each_other_and_cuts_heal() {
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root (network namespaces, a bridge, nft rules)");
        return;
    }
    let check = run("cln-", &["check"]);
    if !check.status.success() {
        println!("SKIPPED: {}", String::from_utf8_lossy(&check.stderr).trim());
        return;
    }
    let prefix = format!("cln{}-", std::process::id() % 10000);
    let subnet = format!("10.{}.{}", 150 + std::process::id() % 50, std::process::id() % 250);
    let _down = Down(prefix.clone());
    println!("{}", ok(&prefix, &["up", "3", "--subnet", &subnet]));
    // Idempotent: a second `up` changes nothing.
    ok(&prefix, &["up", "3", "--subnet", &subnet]);
    let addr = |i: u32| -> SocketAddr { format!("{subnet}.{}:7300", 10 + i).parse().unwrap() };
    let ns = |i: u32| format!("{prefix}{i}");
    // A listener in each namespace, on its own address (it accepts without being asked).
    let mut listeners = Vec::new();
    for i in 1..=3 {
        let a = addr(i);
        listeners.push(in_netns(&ns(i), move || TcpListener::bind(a).unwrap()));
    }
    for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 2)] {
        assert!(reaches(Some(&ns(a)), addr(b)), "{a} does not reach {b}");
    }
    assert!(reaches(None, addr(1)), "the host does not reach node 1");

    // Both ways.
    ok(&prefix, &["cut", "1", "2"]);
    assert!(!reaches(Some(&ns(1)), addr(2)));
    assert!(!reaches(Some(&ns(2)), addr(1)));
    assert!(reaches(Some(&ns(1)), addr(3)));
    assert!(reaches(Some(&ns(3)), addr(2)));
    let st = ok(&prefix, &["status"]);
    assert!(st.contains("node 1:") && st.contains("drop rules 2"), "{st}");
    ok(&prefix, &["heal"]);
    assert!(reaches(Some(&ns(1)), addr(2)));

    // One way: 3's packets to the others are dropped (their packets to 3 are not, but a TCP
    // handshake needs both ways, so no connection either way); the others still talk.
    ok(&prefix, &["cut", "3", "all", "--one-way"]);
    assert!(!reaches(Some(&ns(3)), addr(1)));
    assert!(!reaches(Some(&ns(3)), addr(2)));
    assert!(reaches(Some(&ns(1)), addr(2)));
    ok(&prefix, &["heal"]);
    assert!(reaches(Some(&ns(3)), addr(1)));

    // Link down isolates a node from everyone, the host included.
    ok(&prefix, &["link-down", "2"]);
    assert!(!reaches(Some(&ns(1)), addr(2)));
    assert!(!reaches(None, addr(2)));
    ok(&prefix, &["heal"]);
    assert!(reaches(Some(&ns(1)), addr(2)));
    drop(listeners);

    // Teardown removes everything, twice without complaint.
    ok(&prefix, &["down"]);
    ok(&prefix, &["down"]);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&prefix), "a namespace is left");
    let links = Command::new("ip").args(["link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&prefix), "an interface is left");
    // And a command on a cluster that is gone says so.
    let o = run(&prefix, &["cut", "1", "2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no cluster"));
}
