//! The Rust client: blocking, on `std::net`, so a program that runs its own runtime (or none)
//! can use it from any thread.
//!
//! It connects to any node, follows redirects to the leader and to the core that serves a
//! group, and retries an append with the *same* session and sequence after a timeout, a lost
//! connection or a leader change, so a retried append is committed once (the replicated
//! session table answers a retry with the original position).
//!
//! [`Client::tail`] follows the committed log from a position ([`Tail`], a blocking iterator on
//! its own connection). Any replica serves a tail with what it knows committed, so the
//! iterator starts at any node and, when that node stops answering (no entries and no
//! keepalive within the attempt timeout), moves on to the next one and resumes at the first
//! index it has not yielded: entries come in log order, each exactly once, across leader
//! changes and node failures.
//!
//! Membership: [`Client::add_learner`], [`Client::promote`], [`Client::remove_member`] propose
//! the change at the leader and return once it is committed.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes};

use crate::frame::{EntryKind, EntryRef, Frame, FrameLimits, encode_frame};
use crate::node::proto::{MemberChange, Op, READ_LOCAL, RequestMeta, ResponseMeta, Status};
use crate::wire::{self, ENVELOPE_LEN, Kind};

/// Where an entry landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Log index.
    pub index: u64,
    /// Term of the leader that appended it.
    pub term: u64,
}

/// An entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Log index.
    pub index: u64,
    /// What the entry is: client data, or an entry of the protocol's own (a new leader's
    /// no-op, a membership change) that occupies an index.
    pub kind: EntryKind,
    /// Client session.
    pub session: u64,
    /// Client sequence.
    pub seq: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Errors of the client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No node answered within the deadline.
    #[error("no answer within {0:?} (last problem: {1})")]
    Timeout(Duration, String),
    /// The cluster refused the request for good (bad request, too large, unknown group...).
    #[error("{status:?}: {message}")]
    Refused { status: Status, message: String },
    /// The answer did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client addresses (base ports) of the nodes.
    pub nodes: Vec<SocketAddr>,
    /// How long one request may take, retries included.
    pub deadline: Duration,
    /// How long to wait for one answer before retrying elsewhere.
    pub attempt_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for these nodes: 10 s per request, 2 s per attempt.
    pub fn new(nodes: Vec<SocketAddr>) -> Self {
        ClientConfig {
            nodes,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// A connection to a node: TCP, or an in-process pipe to an embedded node.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Local(crate::embed::LocalStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Local(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Local(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Local(s) => s.flush(),
        }
    }
}

/// Opens in-process connections to the addresses it knows (an embedded node's ports); `None`
/// for any other address, which is then reached over TCP.
pub(crate) type Connector = Arc<dyn Fn(SocketAddr, Duration) -> Option<Conn> + Send + Sync>;

/// Opens a connection to `addr`: in-process if `connector` knows it, else TCP.
fn open_conn(
    connector: &Option<Connector>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Conn, String> {
    if let Some(c) = connector.as_ref().and_then(|f| f(addr, timeout)) {
        return Ok(c);
    }
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    Ok(Conn::Tcp(s))
}

/// Reads one whole message (any kind) from `stream`.
fn read_one(stream: &mut Conn) -> Result<Vec<u8>, String> {
    let mut env = [0u8; ENVELOPE_LEN];
    stream.read_exact(&mut env).map_err(|e| e.to_string())?;
    let e = wire::check_envelope(&env, 1 << 30).map_err(|e| e.to_string())?;
    let total = wire::message_len(e);
    let mut buf = vec![0u8; total];
    buf[..ENVELOPE_LEN].copy_from_slice(&env);
    stream.read_exact(&mut buf[ENVELOPE_LEN..]).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A blocking client. One session: appends through it are numbered and deduplicated.
pub struct Client {
    cfg: ClientConfig,
    connector: Option<Connector>,
    session: u64,
    next_seq: u64,
    next_id: u64,
    conns: HashMap<SocketAddr, Conn>,
    /// Node (base address) believed to lead each group.
    leader: HashMap<u64, SocketAddr>,
    /// Port that serves a group, per node.
    core_port: HashMap<(SocketAddr, u64), u16>,
    rr: usize,
}

fn random_session() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x | 1
}

impl Client {
    /// A client of these nodes, with a fresh random session.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.nodes.is_empty() {
            return Err(ClientError::Protocol("no node addresses".into()));
        }
        Ok(Client {
            cfg,
            connector: None,
            session: random_session(),
            next_seq: 1,
            next_id: 1,
            conns: HashMap::new(),
            leader: HashMap::new(),
            core_port: HashMap::new(),
            rr: 0,
        })
    }

    /// A client that reaches the addresses `connector` knows in-process.
    pub(crate) fn with_connector(
        cfg: ClientConfig,
        connector: Connector,
    ) -> Result<Client, ClientError> {
        let mut c = Client::new(cfg)?;
        c.connector = Some(connector);
        Ok(c)
    }

    /// Follows the committed entries of `group` from index `from` (see [`Tail`]). The tail has
    /// its own connection; this client stays usable.
    pub fn tail(&self, group: u64, from: u64) -> Tail {
        Tail {
            cfg: self.cfg.clone(),
            connector: self.connector.clone(),
            group,
            next: from.max(1),
            conn: None,
            ready: VecDeque::new(),
            rr: self.rr,
            core_port: HashMap::new(),
            budget: 1 << 20,
        }
    }

    /// Adds node `node` (listed in every node's `members`) to `group` as a learner: it
    /// receives the log but does not vote. Returns the position of the change once committed.
    pub fn add_learner(&mut self, group: u64, node: u64) -> Result<Position, ClientError> {
        self.change_membership(group, MemberChange::AddLearner, node, 0)
    }

    /// Turns learner `node` into a voter with election `priority` (1 is the default of the
    /// initial voters; 0 a logger that campaigns only as a last resort).
    pub fn promote(
        &mut self,
        group: u64,
        node: u64,
        priority: u8,
    ) -> Result<Position, ClientError> {
        self.change_membership(group, MemberChange::Promote, node, priority)
    }

    /// Removes voter or learner `node` from `group`.
    pub fn remove_member(&mut self, group: u64, node: u64) -> Result<Position, ClientError> {
        self.change_membership(group, MemberChange::Remove, node, 0)
    }

    /// Proposes a membership change at the leader and waits until it is committed and in
    /// effect (the leader's status shows it). One change at a time: while an earlier change is
    /// uncommitted the leader answers busy and this retries until the deadline.
    pub fn change_membership(
        &mut self,
        group: u64,
        change: MemberChange,
        node: u64,
        priority: u8,
    ) -> Result<Position, ClientError> {
        let meta = RequestMeta::new(Op::Member, change as u64, node, u64::from(priority));
        let (m, _) = self.call(group, meta, &[], true)?;
        let pos = Position { index: m.a.get(), term: m.b.get() };
        let deadline = Instant::now() + self.cfg.deadline;
        loop {
            let text = self.status(group)?;
            let s: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
            let has = |k: &str| {
                s[k].as_array().is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(node)))
            };
            if s["commit_index"].as_u64().unwrap_or(0) >= pos.index {
                let in_effect = match change {
                    MemberChange::AddLearner => has("learners"),
                    MemberChange::Promote | MemberChange::AddVoter => has("voters"),
                    MemberChange::Remove => !has("voters") && !has("learners"),
                };
                if in_effect {
                    return Ok(pos);
                }
                if s["role"] == "Leader" {
                    return Err(ClientError::Refused {
                        status: Status::Retry,
                        message: format!(
                            "the change at index {} was lost in a leader change; retry",
                            pos.index
                        ),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(
                    self.cfg.deadline,
                    format!("the change at index {} did not commit", pos.index),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The session id of this client.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Appends one entry to `group`; returns its position once committed on a majority.
    pub fn append(&mut self, group: u64, data: &[u8]) -> Result<Position, ClientError> {
        Ok(self.append_many(group, &[data])?[0])
    }

    /// Appends entries to `group` as one request (one frame); returns their positions once
    /// all are committed.
    pub fn append_many(
        &mut self,
        group: u64,
        items: &[&[u8]],
    ) -> Result<Vec<Position>, ClientError> {
        let first_seq = self.next_seq;
        self.next_seq += items.len() as u64;
        let entries: Vec<EntryRef<'_>> = items
            .iter()
            .enumerate()
            .map(|(k, d)| EntryRef {
                kind: EntryKind::Normal,
                session: self.session,
                seq: first_seq + k as u64,
                data: d,
            })
            .collect();
        let mut frame = Vec::new();
        encode_frame(&mut frame, group, 0, 1, &entries, FrameLimits::default()).map_err(|e| {
            ClientError::Refused { status: Status::TooLarge, message: e.to_string() }
        })?;
        let (meta, payload) = self.call(
            group,
            RequestMeta::new(Op::Append, self.session, first_seq, 0),
            &frame,
            true,
        )?;
        let _ = meta;
        if payload.len() != items.len() * 16 {
            return Err(ClientError::Protocol(format!(
                "{} bytes of positions for {} entries",
                payload.len(),
                items.len()
            )));
        }
        Ok(payload
            .chunks_exact(16)
            .map(|c| Position {
                index: u64::from_le_bytes(c[..8].try_into().expect("8")),
                term: u64::from_le_bytes(c[8..].try_into().expect("8")),
            })
            .collect())
    }

    /// Reads committed entries `lo..=hi` of `group` (up to about `max_bytes`; at least one
    /// entry if any is committed at `lo`) from the leader, once it knows the commit index (a
    /// new leader after its first commit): every entry acknowledged before the call is
    /// covered. Returns the commit index and the entries.
    pub fn read(
        &mut self,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<(u64, Vec<ReadEntry>), ClientError> {
        let (meta, payload) =
            self.call(group, RequestMeta::new(Op::Read, lo, hi, max_bytes), &[], true)?;
        Ok((meta.a.get(), decode_entries(&payload, lo, hi)?))
    }

    /// The status of `group` as JSON text.
    pub fn status(&mut self, group: u64) -> Result<String, ClientError> {
        let (_, payload) = self.call(group, RequestMeta::new(Op::Status, 0, 0, 0), &[], false)?;
        String::from_utf8(payload).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The status of `group` as one node sees it (no redirect to the leader).
    pub fn status_of(&mut self, node: SocketAddr, group: u64) -> Result<String, ClientError> {
        let (_, p) = self.call_at(node, group, RequestMeta::new(Op::Status, 0, 0, 0))?;
        String::from_utf8(p).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Reads committed entries `lo..=hi` of `group` from one node (no redirect): what that
    /// node holds and knows committed (a follower, or a node that just restarted, may know
    /// less than the leader).
    pub fn read_from(
        &mut self,
        node: SocketAddr,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<(u64, Vec<ReadEntry>), ClientError> {
        let mut meta = RequestMeta::new(Op::Read, lo, hi, max_bytes);
        meta.flags = READ_LOCAL;
        let (meta, payload) = self.call_at(node, group, meta)?;
        Ok((meta.a.get(), decode_entries(&payload, lo, hi)?))
    }

    fn call_at(
        &mut self,
        node: SocketAddr,
        group: u64,
        meta: RequestMeta,
    ) -> Result<(ResponseMeta, Vec<u8>), ClientError> {
        let deadline = Instant::now() + self.cfg.deadline;
        loop {
            let port = self.core_port.get(&(node, group)).copied().unwrap_or(node.port());
            let mut addr = node;
            addr.set_port(port);
            match self.attempt(addr, group, meta, &[]) {
                Ok((m, _)) if Status::from_code(m.status) == Some(Status::WrongCore) => {
                    self.core_port.insert((node, group), m.a.get() as u16);
                }
                Ok((m, p)) if m.status == Status::Ok as u8 => return Ok((m, p)),
                Ok((m, p)) => {
                    return Err(ClientError::Refused {
                        status: Status::from_code(m.status).unwrap_or(Status::Failed),
                        message: String::from_utf8_lossy(&p).into_owned(),
                    });
                }
                Err(e) => {
                    self.conns.remove(&addr);
                    if Instant::now() >= deadline {
                        return Err(ClientError::Timeout(self.cfg.deadline, e));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Asks the leader of `group` to trim the prefix up to `index`.
    pub fn trim(&mut self, group: u64, index: u64) -> Result<(), ClientError> {
        self.call(group, RequestMeta::new(Op::Trim, index, 0, 0), &[], true).map(|_| ())
    }

    /// Sends a request to the leader (or any node when `to_leader` is false), following
    /// redirects and retrying until the deadline.
    fn call(
        &mut self,
        group: u64,
        meta: RequestMeta,
        payload: &[u8],
        to_leader: bool,
    ) -> Result<(ResponseMeta, Vec<u8>), ClientError> {
        let deadline = Instant::now() + self.cfg.deadline;
        let mut last = String::from("none");
        let mut pause = Duration::from_millis(10);
        while Instant::now() < deadline {
            let node = match self.leader.get(&group) {
                Some(a) => *a,
                None => {
                    self.rr = (self.rr + 1) % self.cfg.nodes.len();
                    self.cfg.nodes[self.rr]
                }
            };
            let port = self.core_port.get(&(node, group)).copied().unwrap_or(node.port());
            let mut addr = node;
            addr.set_port(port);
            match self.attempt(addr, group, meta, payload) {
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.conns.remove(&addr);
                    self.leader.remove(&group);
                }
                Ok((m, p)) => match Status::from_code(m.status) {
                    Some(Status::Ok) => {
                        if to_leader {
                            self.leader.insert(group, node);
                        }
                        return Ok((m, p));
                    }
                    Some(Status::WrongCore) => {
                        self.core_port.insert((node, group), m.a.get() as u16);
                        continue;
                    }
                    Some(Status::NotLeader) => {
                        last = format!("{addr}: not the leader");
                        let hint =
                            std::str::from_utf8(&p).ok().and_then(|s| s.parse::<SocketAddr>().ok());
                        match hint {
                            Some(h) => {
                                self.leader.insert(group, h);
                                continue;
                            }
                            None => {
                                self.leader.remove(&group);
                            }
                        }
                    }
                    Some(Status::Busy) | Some(Status::Retry) | Some(Status::Failed) => {
                        last = format!("{addr}: {}", String::from_utf8_lossy(&p));
                        if m.status != Status::Busy as u8 {
                            self.leader.remove(&group);
                        }
                    }
                    Some(s) => {
                        return Err(ClientError::Refused {
                            status: s,
                            message: String::from_utf8_lossy(&p).into_owned(),
                        });
                    }
                    None => {
                        return Err(ClientError::Protocol(format!("unknown status {}", m.status)));
                    }
                },
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(ClientError::Timeout(self.cfg.deadline, last))
    }

    fn attempt(
        &mut self,
        addr: SocketAddr,
        group: u64,
        meta: RequestMeta,
        payload: &[u8],
    ) -> Result<(ResponseMeta, Vec<u8>), String> {
        let timeout = self.cfg.attempt_timeout;
        if let std::collections::hash_map::Entry::Vacant(e) = self.conns.entry(addr) {
            e.insert(open_conn(&self.connector, addr, timeout)?);
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::with_capacity(ENVELOPE_LEN + 32 + payload.len());
        wire::encode(&mut out, Kind::Request, group, id, meta.as_bytes(), payload.len());
        out.extend_from_slice(payload);
        let stream = self.conns.get_mut(&addr).expect("inserted");
        stream.write_all(&out).map_err(|e| e.to_string())?;
        loop {
            let buf = read_one(stream)?;
            let m = wire::verify(&buf, 1 << 30).map_err(|e| e.to_string())?;
            if m.kind == Kind::Error {
                return Err(String::from_utf8_lossy(m.frames).into_owned());
            }
            if m.envelope.id.get() != id {
                continue; // an answer to an earlier, abandoned attempt
            }
            let rm = ResponseMeta::read_from_bytes(m.meta)
                .map_err(|_| "bad response meta".to_string())?;
            return Ok((rm, m.frames.to_vec()));
        }
    }
}

/// A tail: the committed entries of a group, in log order, each once, from a position on
/// (see the module docs). Blocking; an iterator of `Result<ReadEntry, ClientError>`. It ends
/// only with an error: every node unreachable for the client's deadline, or the position
/// trimmed ([`Status::Trimmed`]: the application must restart from its checkpoint).
pub struct Tail {
    cfg: ClientConfig,
    connector: Option<Connector>,
    group: u64,
    next: u64,
    conn: Option<Conn>,
    ready: VecDeque<ReadEntry>,
    rr: usize,
    core_port: HashMap<SocketAddr, u16>,
    budget: u64,
}

impl Tail {
    /// The index of the next entry the tail yields.
    pub fn position(&self) -> u64 {
        self.ready.front().map_or(self.next, |e| e.index)
    }

    /// The next committed entry; waits for it as long as it takes (and fails over between
    /// nodes).
    pub fn next_entry(&mut self) -> Result<ReadEntry, ClientError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            self.receive(None)?;
        }
    }

    /// The next committed entry, or `None` if there is none within `wait`.
    pub fn next_within(&mut self, wait: Duration) -> Result<Option<ReadEntry>, ClientError> {
        let until = Instant::now() + wait;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            self.receive(Some(until))?;
        }
    }

    /// Receives one response (entries or a keepalive), connecting first if needed.
    fn receive(&mut self, until: Option<Instant>) -> Result<(), ClientError> {
        let mut down_since: Option<Instant> = None;
        let mut last;
        // Keepalives come about every half second: a node silent for longer has stopped.
        let timeout = self.cfg.attempt_timeout.max(Duration::from_secs(2));
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(());
            }
            if self.conn.is_none() {
                let node = self.cfg.nodes[self.rr % self.cfg.nodes.len()];
                self.rr = self.rr.wrapping_add(1);
                let mut addr = node;
                addr.set_port(self.core_port.get(&node).copied().unwrap_or(node.port()));
                let opened = open_conn(&self.connector, addr, timeout).and_then(|mut c| {
                    let meta = RequestMeta::new(Op::Tail, self.next, 0, self.budget);
                    let mut out = Vec::with_capacity(ENVELOPE_LEN + 32);
                    wire::encode(&mut out, Kind::Request, self.group, 1, meta.as_bytes(), 0);
                    c.write_all(&out).map_err(|e| e.to_string())?;
                    Ok(c)
                });
                match opened {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        let since = *down_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.cfg.deadline {
                            return Err(ClientError::Timeout(self.cfg.deadline, last));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected");
            let msg = read_one(conn).and_then(|buf| {
                let m = wire::verify(&buf, 1 << 30).map_err(|e| e.to_string())?;
                if m.kind == Kind::Error {
                    return Err(String::from_utf8_lossy(m.frames).into_owned());
                }
                let rm = ResponseMeta::read_from_bytes(m.meta)
                    .map_err(|_| "bad response meta".to_string())?;
                Ok((rm, m.frames.to_vec()))
            });
            let (m, payload) = match msg {
                Ok(x) => x,
                Err(e) => {
                    // A stopped or unreachable node: resume at the next one.
                    tracing::debug!(error = %e, "tail connection lost; moving on");
                    last = e;
                    self.conn = None;
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.cfg.deadline {
                        return Err(ClientError::Timeout(self.cfg.deadline, last));
                    }
                    continue;
                }
            };
            match Status::from_code(m.status) {
                Some(Status::Ok) => {
                    let hi = m.b.get();
                    if !payload.is_empty() && hi >= self.next {
                        for e in decode_entries(&payload, self.next, hi)? {
                            if e.index != self.next {
                                return Err(ClientError::Protocol(format!(
                                    "tail expected index {}, got {}",
                                    self.next, e.index
                                )));
                            }
                            self.next += 1;
                            self.ready.push_back(e);
                        }
                    }
                    return Ok(());
                }
                Some(Status::WrongCore) => {
                    let node = self.cfg.nodes[self.rr.wrapping_sub(1) % self.cfg.nodes.len()];
                    self.core_port.insert(node, m.a.get() as u16);
                    self.rr = self.rr.wrapping_sub(1);
                    self.conn = None;
                }
                Some(s) => {
                    self.conn = None;
                    return Err(ClientError::Refused {
                        status: s,
                        message: String::from_utf8_lossy(&payload).into_owned(),
                    });
                }
                None => {
                    return Err(ClientError::Protocol(format!("unknown status {}", m.status)));
                }
            }
        }
    }
}

impl Iterator for Tail {
    type Item = Result<ReadEntry, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_entry())
    }
}

fn decode_entries(payload: &[u8], lo: u64, hi: u64) -> Result<Vec<ReadEntry>, ClientError> {
    let mut out = Vec::new();
    let mut off = 0;
    let limits = FrameLimits::default();
    while off < payload.len() {
        let f = Frame::decode(&payload[off..], &limits)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        for e in f.entries() {
            if e.index >= lo && e.index <= hi {
                out.push(ReadEntry {
                    index: e.index,
                    kind: e.kind,
                    session: e.session,
                    seq: e.seq,
                    data: e.data.to_vec(),
                });
            }
        }
        off += f.len();
    }
    Ok(out)
}
