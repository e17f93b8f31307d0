//! The fault proxy, one fault kind at a time, between a plain TCP client (node "1") and a
//! plain TCP server (node "2"): every byte the client sends is the link 1->2, every byte the
//! server answers the link 2->1.
//!
//! Timing checks are lower bounds only (a delay or a cap cannot make bytes arrive *sooner*),
//! so a slow, shared machine cannot make them fail. The latency the proxy adds is measured and
//! printed by `added_latency`, not asserted.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corelog::faultproxy::{FaultProxy, send_command};
use hdrhistogram::Histogram;

const BIN: &str = env!("CARGO_BIN_EXE_corelog");

/// A server that echoes every connection; returns its address.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    a
}

/// A server that hands each accepted connection to the test.
fn accepting_server() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (a, rx)
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A proxy with the route 1->2 to `target`, and the client's connection through it.
fn proxied(target: SocketAddr) -> (FaultProxy, SocketAddr) {
    let p = FaultProxy::with_seed(42);
    let listen = p.add_route("1", "2", any(), target).unwrap();
    (p, listen)
}

fn connect(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(a).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// The proxy counts a chunk just after it passes it on, so a peer can see the bytes a moment
/// before the counter does: wait up to 5 s for `read()` to reach `want`, then compare exactly
/// (an over-count fails as well as a loss).
fn settles(want: u64, read: impl Fn() -> u64) {
    let t0 = Instant::now();
    while read() != want && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read(), want);
}

/// Nothing arrives on `s` within `within` (the connection stays open).
fn assert_silent(s: &mut TcpStream, within: Duration) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("the connection was closed"),
        Ok(n) => panic!("{n} bytes arrived"),
        Err(e) => panic!("the connection failed: {e}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

/// The connection ends (reset or closed) within 5 s.
fn assert_ends(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection is still open")
            }
            Err(_) => return,
        }
    }
}

#[test]
fn with_no_fault_bytes_pass_both_ways_unchanged() {
    let (p, listen) = proxied(echo_server());
    let mut c = connect(listen);
    let data = pattern(4 << 20, 7);
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    t.join().unwrap();
    assert!(back == data, "the echo differs from what was sent");
    settles(data.len() as u64, || p.stats("1", "2").bytes_forwarded);
    settles(data.len() as u64, || p.stats("2", "1").bytes_forwarded);
    assert_eq!(p.connections(), 1);
    drop(c);
    let t0 = Instant::now();
    while p.connections() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the proxied connection stays open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn delay_and_jitter_hold_bytes_back_but_keep_their_order() {
    let (p, listen) = proxied(echo_server());
    p.delay("1->2", Duration::from_millis(40), Duration::from_millis(20)).unwrap();
    let mut c = connect(listen);
    // Warm the connection up, then time small messages sent back to back.
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).unwrap();
    let t0 = Instant::now();
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let m = i.to_le_bytes();
        c.write_all(&m).unwrap();
        sent.extend_from_slice(&m);
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut back = vec![0u8; sent.len()];
    let mut first = None;
    let mut got = 0;
    while got < back.len() {
        let n = c.read(&mut back[got..]).unwrap();
        assert!(n > 0);
        first.get_or_insert(t0.elapsed());
        got += n;
    }
    let first = first.unwrap();
    println!(
        "first echo after {first:?} (delay 40 ms, jitter 20 ms); all after {:?}",
        t0.elapsed()
    );
    assert!(first >= Duration::from_millis(20), "bytes came back after only {first:?}");
    assert_eq!(back, sent, "the jittered link reordered bytes");
    // The other direction is not delayed.
    assert!(p.faults("2", "1").delay.is_zero());
    // Delay zero again: the link is fast again.
    p.heal("1->2").unwrap();
    let t1 = Instant::now();
    c.write_all(b"y").unwrap();
    c.read_exact(&mut one).unwrap();
    println!("after heal: round trip {:?}", t1.elapsed());
    assert_eq!(&one, b"y");
}

#[test]
fn a_delayed_link_still_pipelines() {
    // 100 messages through a 50 ms link take about 50 ms, not 100 x 50 ms.
    let (p, listen) = proxied(echo_server());
    p.command("delay 1->2 50ms").unwrap();
    let mut c = connect(listen);
    let t0 = Instant::now();
    let msg = pattern(1000, 3);
    let mut w = c.try_clone().unwrap();
    let m2 = msg.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..100 {
            w.write_all(&m2).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut back = vec![0u8; 100 * msg.len()];
    c.read_exact(&mut back).unwrap();
    t.join().unwrap();
    let took = t0.elapsed();
    println!("100 messages 1 ms apart through a 50 ms link: {took:?}");
    assert!(took >= Duration::from_millis(50));
    assert!(back.chunks(msg.len()).all(|m| m == &msg[..]));
}

#[test]
fn blackhole_discards_keeps_the_connection_and_resets_it_when_lifted() {
    let (target, accepted) = accepting_server();
    let (p, listen) = proxied(target);
    let mut c = connect(listen);
    let mut s = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    c.write_all(b"before").unwrap();
    let mut b = [0u8; 6];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"before");

    p.blackhole("1->2").unwrap();
    c.write_all(b"lost in the hole").unwrap();
    assert_silent(&mut s, Duration::from_millis(300));
    // One-way: the other direction still flows.
    s.write_all(b"back").unwrap();
    let mut b4 = [0u8; 4];
    c.read_exact(&mut b4).unwrap();
    assert_eq!(&b4, b"back");
    settles(16, || p.stats("1", "2").bytes_discarded);
    // Still connected: more writes are accepted (and discarded).
    c.write_all(b"more").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(p.connections(), 1);

    // A stream with a hole cannot go on: lifting the blackhole resets it.
    p.heal("1->2").unwrap();
    assert_ends(&mut s);
    assert_ends(&mut c);
    settles(1, || p.stats("1", "2").resets);
    // New connections work.
    let mut c2 = connect(listen);
    let mut s2 = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    c2.write_all(b"after").unwrap();
    let mut b5 = [0u8; 5];
    s2.read_exact(&mut b5).unwrap();
    assert_eq!(&b5, b"after");
}

#[test]
fn stall_holds_bytes_and_delivers_them_when_lifted() {
    let (target, accepted) = accepting_server();
    let (p, listen) = proxied(target);
    let mut c = connect(listen);
    let mut s = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    p.stall("1->2").unwrap();
    c.write_all(b"held").unwrap();
    assert_silent(&mut s, Duration::from_millis(300));
    p.heal("1->2").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"held");
    assert_eq!(p.stats("1", "2").resets, 0);
}

#[test]
fn reset_aborts_both_ends() {
    let (target, accepted) = accepting_server();
    let (p, listen) = proxied(target);
    let mut c = connect(listen);
    let mut s = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    c.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    // A reset of the reverse pattern reaches this connection too: its replies are 2->1.
    assert_eq!(p.reset("2->1").unwrap(), 1);
    assert_ends(&mut c);
    assert_ends(&mut s);
    let t0 = Instant::now();
    while p.connections() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the reset connection lingers");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_target_that_is_down_resets_the_dialler() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_p, listen) = proxied(dead);
    let mut c = connect(listen);
    assert_ends(&mut c);
}

#[test]
fn bandwidth_cap_slows_a_link() {
    let (target, accepted) = accepting_server();
    let (p, listen) = proxied(target);
    p.bandwidth("1->2", Some(1 << 20)).unwrap();
    let mut c = connect(listen);
    let mut s = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
    let data = pattern(512 << 10, 9);
    let d2 = data.clone();
    let t0 = Instant::now();
    let t = std::thread::spawn(move || c.write_all(&d2).unwrap());
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    let took = t0.elapsed();
    t.join().unwrap();
    println!("512 KiB through a 1 MiB/s link: {took:?} ({:.2} MiB/s)", 0.5 / took.as_secs_f64());
    assert!(got == data);
    // The first 16 KiB slice goes at once; the other 31 wait their turn.
    assert!(took >= Duration::from_millis(400), "a 1 MiB/s link carried 512 KiB in {took:?}");
}

#[test]
fn the_control_port_speaks_the_line_protocol() {
    let (p, _listen) = proxied(echo_server());
    let ctl = p.serve_control(any()).unwrap();
    assert_eq!(send_command(ctl, "delay 1<->2 10ms jitter 1ms").unwrap(), "ok 2 link(s)");
    assert_eq!(p.faults("2", "1").delay, Duration::from_millis(10));
    assert_eq!(send_command(ctl, "bandwidth 1->2 10MiB").unwrap(), "ok 1 link(s)");
    assert_eq!(p.faults("1", "2").bandwidth_bytes_per_sec, Some(10 << 20));
    let st = send_command(ctl, "status").unwrap();
    assert!(st.starts_with("ok route 1->2"), "{st}");
    assert!(st.contains("bandwidth=10485760B/s"), "{st}");
    assert!(send_command(ctl, "blackhole 1->7").unwrap().starts_with("err no link matches"));
    assert!(send_command(ctl, "delay 1->2 fast").unwrap().starts_with("err"));
    assert!(send_command(ctl, "explode").unwrap().starts_with("err unknown command"));
    assert_eq!(send_command(ctl, "heal").unwrap(), "ok 2 link(s)");
    assert!(p.faults("1", "2") == Default::default());
}

#[test]
fn corelog_proxy_runs_and_takes_commands() {
    let target = echo_server();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = Command::new(BIN)
        .args(["proxy", "--route", &format!("1->2={listen}={target}")])
        .args(["--control", &control.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(control).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "corelog proxy does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(BIN)
        .args(["proxy", "--control", &control.to_string(), "--send", "delay 1->2 30ms"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 1 link(s)");
    let mut c = connect(listen);
    let t1 = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert!(t1.elapsed() >= Duration::from_millis(30));
    let bad = Command::new(BIN)
        .args(["proxy", "--control", &control.to_string(), "--send", "blackhole nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "corelog proxy exited with {st}");
}

fn ping_pong(addr: SocketAddr, rounds: usize) -> Histogram<u64> {
    let mut c = connect(addr);
    let mut h = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3).unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for i in 0..rounds + 1000 {
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        if i >= 1000 {
            h.record(t.elapsed().as_nanos().max(1000) as u64).unwrap();
        }
    }
    h
}

/// The round trip of a 64-byte ping-pong, direct and through the proxy (both directions
/// proxied, no fault set). Prints the figures; `PROXY_ROUNDS` sets the number of round trips.
#[test]
fn added_latency() {
    let rounds: usize =
        std::env::var("PROXY_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let target = echo_server();
    let (_p, listen) = proxied(target);
    // Interleave, twice, so that a burst of load elsewhere does not bias one side.
    let mut direct = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3).unwrap();
    let mut proxied_h = direct.clone();
    for _ in 0..2 {
        direct.add(ping_pong(target, rounds / 2)).unwrap();
        proxied_h.add(ping_pong(listen, rounds / 2)).unwrap();
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (name, h) in [("direct", &direct), ("through the proxy", &proxied_h)] {
        println!(
            "64-byte round trip {name}: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} \
             us ({} round trips)",
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            h.len()
        );
    }
    println!(
        "added by the proxy: p50 {:.0} us, p99 {:.0} us per round trip (two crossings)",
        us(&proxied_h, 0.5) - us(&direct, 0.5),
        us(&proxied_h, 0.99) - us(&direct, 0.99)
    );
    assert_eq!(proxied_h.len(), direct.len());
}
