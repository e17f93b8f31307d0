//! Bad input and misbehaving connections against a running 3-node cluster (in-process, real
//! TCP on loopback, real files): garbage, an oversized length prefix, requests for groups that
//! do not exist or live on another core, broken appends, a peer of another cluster, silent
//! connections, a client that never reads, too many connections. Each gets a clear error or a
//! bounded wait and a close; the node keeps serving a normal client, and the log holds exactly
//! the acknowledged entries.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig};
use corelog::consensus::{Body, Message};
use corelog::frame::{EntryKind, EntryRef, FrameLimits, encode_frame};
use corelog::node::proto::{Op, RequestMeta, ResponseMeta, Status};
use corelog::node::{self, NodeConfig, NodeHandle, PeerConfig};
use corelog::wire::{self, ENVELOPE_LEN, Kind};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The clusters of these tests share two cores with everything else: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn free_port_pair() -> u16 {
    // Core i listens on base + i.
    common::free_ports(std::net::IpAddr::from([127, 0, 0, 1]), 2)
}

struct Cluster {
    _dir: tempfile::TempDir,
    cfgs: Vec<NodeConfig>,
    nodes: Vec<NodeHandle>,
    client: Client,
    /// Every entry a normal client had acknowledged, per group, in log order.
    acked: Vec<Vec<(u64, Vec<u8>)>>,
}

impl Cluster {
    fn start(tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<PeerConfig> = (1..=3)
            .map(|id| PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port_pair())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port_pair())),
            })
            .collect();
        let cfgs: Vec<NodeConfig> = (1..=3)
            .map(|id| {
                let mut c = NodeConfig {
                    node_id: id,
                    data_dir: dir.path().join(format!("n{id}")),
                    members: members.clone(),
                    segment_bytes: 4 << 20,
                    read_timeout_secs: 1,
                    ..NodeConfig::default()
                };
                tweak(&mut c);
                c
            })
            .collect();
        let nodes = cfgs.iter().cloned().map(|c| node::start(c).expect("start node")).collect();
        let addrs = members.iter().map(|m| m.client_addr).collect();
        let client = Client::new(ClientConfig::new(addrs)).unwrap();
        let groups = cfgs[0].groups as usize;
        let mut c = Cluster { _dir: dir, cfgs, nodes, client, acked: vec![Vec::new(); groups] };
        for g in 0..groups as u64 {
            c.append(g, b"before");
        }
        c
    }

    fn client_addr(&self, node: usize) -> SocketAddr {
        self.cfgs[0].members[node].client_addr
    }

    fn peer_addr(&self, node: usize) -> SocketAddr {
        self.cfgs[0].members[node].peer_addr
    }

    /// The node (index) that leads `group`, once there is one.
    fn leader(&mut self, group: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for i in 0..3 {
                let a = self.client_addr(i);
                if let Ok(s) = self.client.status_of(a, group)
                    && s.contains("\"role\":\"Leader\"")
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader for group {group}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every node but `group`'s leader (its index, returned); `nodes` keeps it alone.
    fn leave_only_the_leader(&mut self, group: u64) -> usize {
        let leader = self.leader(group);
        let nodes = std::mem::take(&mut self.nodes);
        for (i, n) in nodes.into_iter().enumerate() {
            if i == leader {
                self.nodes.push(n);
            } else {
                n.shutdown().unwrap();
            }
        }
        leader
    }

    /// A normal client's append, which must succeed.
    fn append(&mut self, group: u64, data: &[u8]) {
        let p = self.client.append(group, data).expect("a normal client's append");
        self.acked[group as usize].push((p.index, data.to_vec()));
    }

    /// The node still serves a normal client, and every node's log holds exactly the
    /// acknowledged client entries: nothing from the bad input.
    fn check_healthy(&mut self) {
        for g in 0..self.acked.len() as u64 {
            self.append(g, b"after");
            let expected = &self.acked[g as usize];
            let last = expected.last().unwrap().0;
            for i in 0..3 {
                let addr = self.client_addr(i);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let (commit, _) =
                        self.client.read_from(addr, g, 1, 1, 1).expect("read the commit index");
                    if commit >= last {
                        // Page through the log: a read returns at most about
                        // message_bytes_max / 2 (and at least one entry).
                        let mut entries = Vec::new();
                        let mut lo = 1;
                        while lo <= commit {
                            let (_, page) =
                                self.client.read_from(addr, g, lo, commit, 16 << 20).expect("read");
                            lo = page.last().expect("an entry per read").index + 1;
                            entries.extend(page);
                        }
                        // (index, length, checksum): short messages when they differ.
                        let summary = |d: &[u8]| (d.len(), crc32c::crc32c(d));
                        let client_entries: Vec<_> = entries
                            .into_iter()
                            .filter(|e| e.kind == EntryKind::Normal)
                            .map(|e| (e.index, summary(&e.data)))
                            .collect();
                        let expected: Vec<_> =
                            expected.iter().map(|(i, d)| (*i, summary(d))).collect();
                        assert_eq!(
                            client_entries, expected,
                            "node {i} group {g} holds exactly the acknowledged entries"
                        );
                        break;
                    }
                    assert!(Instant::now() < deadline, "node {i} never caught up");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn stop(self) {
        for n in self.nodes {
            n.shutdown().unwrap();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One decoded message from the node.
#[derive(Debug)]
struct Reply {
    kind: Kind,
    group: u64,
    id: u64,
    meta: Vec<u8>,
    payload: Vec<u8>,
}

impl Reply {
    fn response(&self) -> (Status, ResponseMeta, String) {
        assert_eq!(self.kind, Kind::Response, "{self:?}");
        let m = ResponseMeta::read_from_bytes(&self.meta).expect("response meta");
        (Status::from_code(m.status).expect("status"), m, self.text())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// A connection-level error: its text.
    fn error(&self) -> String {
        assert_eq!(self.kind, Kind::Error, "expected a connection-level error: {self:?}");
        self.text()
    }
}

/// Reads one message (the node's envelope must be valid).
fn read_reply(s: &mut TcpStream) -> std::io::Result<Reply> {
    let mut env = [0u8; ENVELOPE_LEN];
    s.read_exact(&mut env)?;
    let e = wire::check_envelope(&env, 64 << 20).expect("the node sends valid envelopes");
    let mut buf = vec![0u8; wire::message_len(e)];
    buf[..ENVELOPE_LEN].copy_from_slice(&env);
    s.read_exact(&mut buf[ENVELOPE_LEN..])?;
    let m = wire::verify(&buf, 64 << 20).expect("the node sends valid messages");
    Ok(Reply {
        kind: m.kind,
        group: m.envelope.group.get(),
        id: m.envelope.id.get(),
        meta: m.meta.to_vec(),
        payload: m.frames.to_vec(),
    })
}

/// Waits until the node closes `s` (EOF or reset), discarding what it sends; returns how long
/// that took. Panics if it is still open after `within`.
fn expect_closed(s: &mut TcpStream, within: Duration) -> Duration {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return t0.elapsed(), // reset
        }
        assert!(t0.elapsed() < within, "the node did not close the connection within {within:?}");
    }
}

/// Shrinks the socket's receive buffer, so that a node writing to it blocks soon.
fn small_receive_buffer(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket, a pointer to a c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt");
}

fn request(group: u64, id: u64, meta: RequestMeta, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(&mut out, Kind::Request, group, id, meta.as_bytes(), payload.len());
    out.extend_from_slice(payload);
    out
}

fn status_request(group: u64, id: u64) -> Vec<u8> {
    request(group, id, RequestMeta::new(Op::Status, 0, 0, 0), &[])
}

fn append_frame(group: u64, session: u64, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let e = EntryRef { kind: EntryKind::Normal, session, seq, data };
    encode_frame(&mut frame, group, 0, 1, &[e], FrameLimits::default()).unwrap();
    frame
}

fn append_request(group: u64, id: u64, frame: &[u8]) -> Vec<u8> {
    request(group, id, RequestMeta::new(Op::Append, 0, 0, 0), frame)
}

/// Sends `req` on `s` and reads the one reply.
fn call(s: &mut TcpStream, req: &[u8]) -> Reply {
    s.write_all(req).unwrap();
    read_reply(s).expect("a reply")
}

/// Meta of a peer `Hello` (as the node encodes it).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
struct HelloMeta {
    cluster_id: U64,
    node_id: U64,
    core: U32,
    /// The sender's election_ticks (high 16 bits) and tick_ms (low 16); 0: not stated.
    timing: U32,
}

/// The timing of these tests' nodes (the defaults), as a hello states it.
fn timing(election_ticks: u32, tick_ms: u32) -> u32 {
    election_ticks << 16 | tick_ms
}

fn default_timing() -> u32 {
    let d = NodeConfig::default();
    timing(d.election_ticks, d.tick_ms as u32)
}

fn hello(cluster_id: u64, node_id: u64, core: u32) -> Vec<u8> {
    hello_timed(cluster_id, node_id, core, default_timing())
}

fn hello_timed(cluster_id: u64, node_id: u64, core: u32, timing: u32) -> Vec<u8> {
    let meta = HelloMeta {
        cluster_id: U64::new(cluster_id),
        node_id: U64::new(node_id),
        core: U32::new(core),
        timing: U32::new(timing),
    };
    let mut out = Vec::new();
    wire::encode(&mut out, Kind::Hello, 0, node_id, meta.as_bytes(), 0);
    out
}

fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

const HTTP: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n";

#[test]
fn garbage_gets_a_clear_error_and_a_close() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    for (what, bytes) in [("http", HTTP.to_vec()), ("random", random_bytes(4096, 0x9E37_79B9))] {
        // At a client port.
        let mut s = connect(c.client_addr(leader));
        s.write_all(&bytes).unwrap();
        let r = read_reply(&mut s).unwrap_or_else(|e| panic!("{what}: no error reply: {e}"));
        let text = r.error();
        assert!(text.contains("magic"), "{what} at the client port: {text}");
        expect_closed(&mut s, Duration::from_secs(2));
        // At a peer port.
        let mut s = connect(c.peer_addr(leader));
        s.write_all(&bytes).unwrap();
        let r = read_reply(&mut s).unwrap_or_else(|e| panic!("{what}: no error reply: {e}"));
        let text = r.error();
        assert!(text.contains("magic"), "{what} at the peer port: {text}");
        expect_closed(&mut s, Duration::from_secs(2));
        c.check_healthy();
    }
    // Fewer bytes than an envelope, then silence: a bounded wait and a close.
    for addr in [c.client_addr(leader), c.peer_addr(leader)] {
        let mut s = connect(addr);
        s.write_all(b"HELO\r\n").unwrap();
        let took = expect_closed(&mut s, Duration::from_secs(4));
        assert!(took >= Duration::from_millis(500), "closed after {took:?}");
    }
    c.check_healthy();
    c.stop();
}

#[test]
fn a_4_gib_length_prefix_is_refused_before_the_body() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    let huge = |kind: Kind| {
        let mut out = Vec::new();
        wire::encode(&mut out, kind, 0, 1, RequestMeta::new(Op::Append, 0, 0, 0).as_bytes(), 0);
        out.truncate(ENVELOPE_LEN);
        out[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // body_len: 4 GiB - 1
        out
    };
    // At the client port: a clear error, at once (not after a read timeout).
    let mut s = connect(c.client_addr(leader));
    let t0 = Instant::now();
    s.write_all(&huge(Kind::Request)).unwrap();
    let r = read_reply(&mut s).unwrap();
    let (st, _, text) = r.response();
    assert_eq!((st, r.id), (Status::TooLarge, 1), "{text}");
    assert!(text.contains("exceeds the maximum"), "{text}");
    expect_closed(&mut s, Duration::from_millis(500));
    assert!(t0.elapsed() < Duration::from_millis(900), "{:?}", t0.elapsed());
    // At a peer port, as the first message.
    let mut s = connect(c.peer_addr(leader));
    s.write_all(&huge(Kind::Hello)).unwrap();
    let text = read_reply(&mut s).unwrap().error();
    assert!(text.contains("exceeds the maximum"), "{text}");
    expect_closed(&mut s, Duration::from_millis(500));
    // At a peer port after a valid handshake (as node 2 would): closed at once.
    let me = c.cfgs[leader].node_id;
    let other = if me == 1 { 2 } else { 1 };
    let mut s = connect(c.peer_addr(leader));
    let r = call(&mut s, &hello(1, other, 0));
    assert_eq!(r.kind, Kind::HelloOk, "{r:?}");
    s.write_all(&huge(Kind::Raft)).unwrap();
    expect_closed(&mut s, Duration::from_millis(500));
    c.check_healthy();
    c.stop();
}

#[test]
fn a_request_over_message_bytes_max_is_refused_as_too_large() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|cfg| cfg.message_bytes_max = 64 << 10);
    let leader = c.leader(0);
    // Raw: a final answer to that request, then the close.
    let mut s = connect(c.client_addr(leader));
    let big = vec![1u8; 100 << 10];
    let r = call(&mut s, &append_request(0, 9, &append_frame(0, 99, 1, &big)));
    let (st, _, text) = r.response();
    assert_eq!((st, r.id), (Status::TooLarge, 9), "{text}");
    assert!(text.contains("exceeds the maximum of 65536"), "{text}");
    expect_closed(&mut s, Duration::from_millis(500));
    // The client gives up at once instead of retrying until its deadline.
    let t0 = Instant::now();
    match c.client.append(0, &big) {
        Err(corelog::client::ClientError::Refused { status: Status::TooLarge, .. }) => {}
        other => panic!("expected TooLarge: {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Just under the bound is fine.
    c.append(0, &vec![2u8; 60 << 10]);
    c.check_healthy();
    c.stop();
}

#[test]
fn requests_for_unknown_groups_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    let mut s = connect(c.client_addr(leader));
    let r = call(&mut s, &status_request(7, 11));
    let (st, _, text) = r.response();
    assert_eq!((st, r.id, r.group), (Status::UnknownGroup, 11, 7), "{text}");
    assert!(text.contains("no group 7"), "{text}");
    let r = call(&mut s, &append_request(7, 12, &append_frame(7, 99, 1, b"bad: unknown group")));
    assert_eq!((r.response().0, r.id), (Status::UnknownGroup, 12));
    let r = call(&mut s, &append_request(u64::MAX, 13, &append_frame(0, 99, 1, b"bad")));
    assert_eq!((r.response().0, r.id), (Status::UnknownGroup, 13));
    // The same connection still works.
    let r = call(&mut s, &status_request(0, 14));
    assert_eq!((r.response().0, r.id), (Status::Ok, 14));
    // A consensus message for an unknown group from a peer: dropped, the link stays up.
    let me = c.cfgs[leader].node_id;
    let other = if me == 1 { 2 } else { 1 };
    let mut p = connect(c.peer_addr(leader));
    assert_eq!(call(&mut p, &hello(1, other, 0)).kind, Kind::HelloOk);
    let m = Message {
        from: other,
        to: me,
        term: 1,
        body: Body::HeartbeatResponse { round: 1, sent_tick: 1 },
    };
    let mut out = Vec::new();
    corelog::node::codec::encode(&mut out, 99, &m);
    p.write_all(&out).unwrap();
    p.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    match p.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the peer link should stay up: {other:?}"),
    }
    drop(p);
    c.check_healthy();
    c.stop();
}

#[test]
fn a_request_at_the_wrong_core_is_redirected() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|cfg| {
        cfg.cores = 2;
        cfg.groups = 2;
    });
    let leader = c.leader(1);
    let base = c.client_addr(leader);
    let mut s = connect(base); // core 0
    let r = call(&mut s, &status_request(1, 5));
    let (st, m, text) = r.response();
    assert_eq!((st, r.id), (Status::WrongCore, 5), "{text}");
    assert_eq!(m.a.get(), u64::from(base.port() + 1), "{text}");
    let r = call(&mut s, &append_request(1, 6, &append_frame(1, 99, 1, b"bad: wrong core")));
    assert_eq!((r.response().0, r.id), (Status::WrongCore, 6));
    // At the right port it is served.
    let mut right = base;
    right.set_port(m.a.get() as u16);
    let mut s1 = connect(right);
    let r = call(&mut s1, &status_request(1, 7));
    assert_eq!((r.response().0, r.id), (Status::Ok, 7));
    // A peer core dialing the wrong core is refused at the handshake.
    let me = c.cfgs[leader].node_id;
    let other = if me == 1 { 2 } else { 1 };
    let mut p = connect(c.peer_addr(leader));
    let text = call(&mut p, &hello(1, other, 1)).error();
    assert!(text.contains("core 1 dialed core 0"), "{text}");
    expect_closed(&mut p, Duration::from_millis(500));
    c.check_healthy();
    c.stop();
}

#[test]
fn broken_appends_are_refused_and_never_logged() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    let mut s = connect(c.client_addr(leader));
    let mut id = 100;
    let mut refused = |s: &mut TcpStream, frame: &[u8], want: &str| {
        id += 1;
        let r = call(s, &append_request(0, id, frame));
        let (st, _, text) = r.response();
        assert_eq!((st, r.id), (Status::BadRequest, id), "{text}");
        assert!(text.contains(want), "wanted {want:?}: {text}");
    };
    // A flipped bit in the data: the frame's checksum does not match.
    let mut f = append_frame(0, 99, 1, b"bad: flipped bit");
    let n = f.len();
    f[n - 3] ^= 0x10;
    refused(&mut s, &f, "checksum");
    // A flipped bit in the frame header.
    let mut f = append_frame(0, 99, 1, b"bad: header");
    f[9] ^= 0x01;
    refused(&mut s, &f, "frame");
    // Session 0, sequence 0.
    refused(&mut s, &append_frame(0, 0, 1, b"bad: session 0"), "session");
    refused(&mut s, &append_frame(0, 99, 0, b"bad: seq 0"), "sequence");
    // A frame for another group, two frames, a truncated frame, no frame.
    refused(&mut s, &append_frame(1, 99, 1, b"bad: other group"), "group");
    let mut two = append_frame(0, 99, 1, b"bad: two");
    two.extend_from_slice(&append_frame(0, 99, 2, b"bad: frames"));
    refused(&mut s, &two, "exactly one frame");
    let f = append_frame(0, 99, 1, b"bad: truncated");
    refused(&mut s, &f[..f.len() - 1], "frame");
    refused(&mut s, &[], "frame");
    // The connection still serves.
    id += 1;
    let r = call(&mut s, &status_request(0, id));
    assert_eq!(r.response().0, Status::Ok);
    // A broken envelope checksum: a connection-level error and a close.
    let mut req = append_request(0, 500, &append_frame(0, 99, 1, b"bad: envelope"));
    req[ENVELOPE_LEN + 1] ^= 0x01; // in the meta
    let text = call(&mut s, &req).error();
    assert!(text.contains("checksum"), "{text}");
    expect_closed(&mut s, Duration::from_millis(500));
    c.check_healthy();
    c.stop();
}

#[test]
fn a_peer_of_another_cluster_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    let me = c.cfgs[leader].node_id;
    let other = if me == 1 { 2 } else { 1 };
    for (hello, want) in [
        (hello(42, other, 0), "cluster id 42 does not match this node's 1".to_string()),
        (hello(1, 77, 0), "node 77 is not a member".to_string()),
        (hello(1, me, 0), format!("node {me} is not a member")),
        // Other timing, even with the same election timeout in ms: leases would not be safe.
        (
            hello_timed(1, other, 0, timing(60, 5)),
            format!("node {other} has election_ticks 60 and tick_ms 5, this node 30 and 10"),
        ),
    ] {
        let mut p = connect(c.peer_addr(leader));
        let text = call(&mut p, &hello).error();
        assert!(text.contains(&want), "wanted {want:?}: {text}");
        expect_closed(&mut p, Duration::from_millis(500));
    }
    // A hello that does not state its timing (an older build) is accepted.
    let mut p = connect(c.peer_addr(leader));
    assert_eq!(call(&mut p, &hello_timed(1, other, 0, 0)).kind, Kind::HelloOk);
    drop(p);
    // A client request at the peer port.
    let mut p = connect(c.peer_addr(leader));
    let text = call(&mut p, &status_request(0, 1)).error();
    assert!(text.contains("hello"), "{text}");
    expect_closed(&mut p, Duration::from_millis(500));
    c.check_healthy();
    c.stop();
}

#[test]
fn silent_connections_are_closed_within_the_timeout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|_| {});
    let leader = c.leader(0);
    // read_timeout_secs = 1: connect and send nothing.
    let mut silent_client = connect(c.client_addr(leader));
    let mut silent_peer = connect(c.peer_addr(leader));
    // Half a message, then nothing.
    let mut half = connect(c.client_addr(leader));
    half.write_all(&status_request(0, 1)[..20]).unwrap();
    let mut half_body = connect(c.client_addr(leader));
    let f = append_frame(0, 99, 1, b"bad: never finished");
    let req = append_request(0, 2, &f);
    half_body.write_all(&req[..req.len() - 5]).unwrap();
    // Meanwhile the node serves.
    c.append(0, b"while silent");
    for s in [&mut silent_client, &mut silent_peer, &mut half, &mut half_body] {
        let took = expect_closed(s, Duration::from_secs(4));
        assert!(took < Duration::from_secs(4));
    }
    c.check_healthy();
    c.stop();
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_queue_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|cfg| {
        cfg.client_queue_bytes_max = 2 << 20;
        cfg.client_connections_max = 4;
        cfg.read_timeout_secs = 30; // the queue bound, not the timeout, closes it
    });
    let leader = c.leader(0);
    let big = vec![7u8; 32 << 10];
    for _ in 0..8 {
        c.append(0, &big);
    }
    // Reads of ~256 KiB each, never read back.
    let mut s = connect(c.client_addr(leader));
    s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    small_receive_buffer(&s);
    let t0 = Instant::now();
    let mut closed = false;
    let mut id = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        id += 1;
        let req = request(0, id, RequestMeta::new(Op::Read, 1, u64::MAX, 1 << 20), &[]);
        match s.write_all(&req) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                ) =>
            {
                closed = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
        // Paced, so that the node's writes first fill the socket buffers (a writer stuck in
        // a write is the hard case), then its queue.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed, "a client that never reads was not closed ({id} requests sent)");
    eprintln!("never-reader closed after {id} requests, {:?}", t0.elapsed());
    // Its connection slot is free again: with the normal client's connection, the node serves
    // client_connections_max connections.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect(c.client_addr(leader))).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let r = call(s, &status_request(0, i as u64));
        assert_eq!(r.response().0, Status::Ok);
    }
    drop(conns);
    c.check_healthy();
    c.stop();
}

#[test]
fn too_many_connections_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|cfg| {
        cfg.client_connections_max = 3;
        cfg.read_timeout_secs = 5;
    });
    let leader = c.leader(0);
    let addr = c.client_addr(leader);
    // The normal client may hold one connection there: fill what is left, then one more.
    let mut held = Vec::new();
    let refused = loop {
        let mut s = connect(addr);
        s.write_all(&status_request(0, 1)).unwrap();
        let r = read_reply(&mut s).expect("a reply");
        if r.kind == Kind::Error {
            break (s, r);
        }
        assert_eq!(r.response().0, Status::Ok);
        held.push(s);
        assert!(held.len() <= 3, "more than client_connections_max connections accepted");
    };
    let (mut s, r) = refused;
    assert!(r.error().contains("too many client connections"));
    expect_closed(&mut s, Duration::from_millis(500));
    // The held connections still work; once they close, new ones are accepted.
    for s in &mut held {
        let r = call(s, &status_request(0, 2));
        assert_eq!(r.response().0, Status::Ok);
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut s = connect(addr);
        s.write_all(&status_request(0, 3)).unwrap();
        if read_reply(&mut s).map(|r| r.kind == Kind::Response).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slots were not reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.check_healthy();
    c.stop();
}

#[test]
fn a_client_waiting_for_a_commit_is_not_cut_off_as_idle() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // read_timeout_secs = 1; a leader that lost its followers keeps its role for about an
    // election timeout (2 s here), so an append stays in flight for longer than the timeout.
    let mut c = Cluster::start(|cfg| cfg.election_ticks = 200);
    // Stop both followers: the leader cannot commit any more.
    let leader = c.leave_only_the_leader(0);
    let mut s = connect(c.client_addr(leader));
    s.write_all(&append_request(0, 3, &append_frame(0, 99, 1, b"not committed"))).unwrap();
    // Silent for longer than the read timeout, but waiting for an answer: not closed as idle.
    s.set_read_timeout(Some(Duration::from_millis(2500))).unwrap();
    match read_reply(&mut s) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        // The leader may step down and say so.
        Ok(r) => {
            assert_eq!((r.kind, r.id), (Kind::Response, 3), "{r:?} ({})", r.text());
            eprintln!("answered after the leader lost its followers: {:?}", r.response().0);
        }
        Err(e) => panic!("closed while waiting for its answer: {e}"),
    }
    c.stop();
}

/// A client that gave up a connection resends its append on another; the first attempt, read
/// later or still waiting, must not leave either unanswered: the attempt displaced from the
/// commit's waiting list is answered `Retry` at once (a retry then finds the entry committed
/// or waiting). Without that, the displaced one waited for an answer that never came.
#[test]
fn two_attempts_of_one_append_are_both_answered() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Commits stop (followers gone) while the leader keeps its role for about 2 s.
    let mut c = Cluster::start(|cfg| cfg.election_ticks = 200);
    let leader = c.leave_only_the_leader(0);
    let append = append_frame(0, 4242, 1, b"sent twice");
    let mut first = connect(c.client_addr(leader));
    first.write_all(&append_request(0, 1, &append)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut second = connect(c.client_addr(leader));
    second.write_all(&append_request(0, 2, &append)).unwrap();
    first.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let r = read_reply(&mut first).expect("the first attempt was never answered");
    let (status, _, text) = r.response();
    assert_eq!((r.id, status), (1, Status::Retry), "{text}");
    c.stop();
}

#[test]
fn peer_connections_in_their_handshake_are_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(|cfg| {
        cfg.peer_handshakes_max = 3;
        cfg.read_timeout_secs = 5;
    });
    let leader = c.leader(0);
    let addr = c.peer_addr(leader);
    // Three connections that never say hello hold every handshake slot...
    let silent: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so one more is refused at once, with the reason.
    let mut s = connect(addr);
    let r = read_reply(&mut s).expect("a refusal");
    assert!(r.error().contains("too many peer connections in their handshake"), "{r:?}");
    expect_closed(&mut s, Duration::from_millis(500));
    // The peers' own links, past their handshakes, are not affected.
    c.append(0, b"while the handshake slots are full");
    // Slots free when the silent connections go: a hello is read and judged again.
    drop(silent);
    let me = c.cfgs[leader].node_id;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut p = connect(addr);
        let text = call(&mut p, &hello(42, if me == 1 { 2 } else { 1 }, 0)).error();
        if text.contains("cluster id 42 does not match") {
            break;
        }
        assert!(text.contains("too many peer connections"), "{text}");
        assert!(Instant::now() < deadline, "the freed handshake slots were not reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.check_healthy();
    c.stop();
}
