//! The Rust client: blocking, on `std::net`, so a program that runs its own runtime (or none)
//! can use it from any thread.
//!
//! It connects to any node, follows redirects to the leader and to the core that serves a
//! group, and retries an append with the *same* session and sequence after a timeout, a lost
//! connection or a leader change, so a retried append is committed once (the replicated
//! session table answers a retry with the original position).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes};

use crate::frame::{EntryKind, EntryRef, Frame, FrameLimits, encode_frame};
use crate::node::proto::{Op, RequestMeta, ResponseMeta, Status};
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

/// A blocking client. One session: appends through it are numbered and deduplicated.
pub struct Client {
    cfg: ClientConfig,
    session: u64,
    next_seq: u64,
    next_id: u64,
    conns: HashMap<SocketAddr, TcpStream>,
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
            session: random_session(),
            next_seq: 1,
            next_id: 1,
            conns: HashMap::new(),
            leader: HashMap::new(),
            core_port: HashMap::new(),
            rr: 0,
        })
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
    /// entry if any is committed at `lo`). Returns the commit index and the entries.
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
    /// node holds and knows committed.
    pub fn read_from(
        &mut self,
        node: SocketAddr,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<(u64, Vec<ReadEntry>), ClientError> {
        let (meta, payload) =
            self.call_at(node, group, RequestMeta::new(Op::Read, lo, hi, max_bytes))?;
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
            let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            e.insert(s);
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::with_capacity(ENVELOPE_LEN + 32 + payload.len());
        wire::encode(&mut out, Kind::Request, group, id, meta.as_bytes(), payload.len());
        out.extend_from_slice(payload);
        let stream = self.conns.get_mut(&addr).expect("inserted");
        stream.write_all(&out).map_err(|e| e.to_string())?;
        loop {
            let mut env = [0u8; ENVELOPE_LEN];
            stream.read_exact(&mut env).map_err(|e| e.to_string())?;
            let e = wire::check_envelope(&env, 1 << 30).map_err(|e| e.to_string())?;
            let total = wire::message_len(e);
            let mut buf = vec![0u8; total];
            buf[..ENVELOPE_LEN].copy_from_slice(&env);
            stream.read_exact(&mut buf[ENVELOPE_LEN..]).map_err(|e| e.to_string())?;
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
