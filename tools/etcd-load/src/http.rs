//! One HTTP/1.1 keep-alive connection to etcd's v3 JSON gateway, one request in flight.
//!
//! The request is always `POST /v3/kv/put` with a JSON body; the response parser reads the
//! status line, the headers and a `Content-Length` body, which is what etcd's gateway (Go's
//! net/http) sends for its small replies. Anything else (another status, a chunked or
//! length-less body, a closed connection) is an error that names what was received.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest head (status line + headers) accepted before giving up on a response.
const MAX_HEAD: usize = 16 * 1024;
/// Longest body accepted: a put's reply is ~150 bytes, an error message a few hundred.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The server answered with another status than 200.
    Status {
        code: u16,
        body: String,
    },
    /// The response could not be parsed.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Status { code, body } => write!(f, "HTTP status {code}, body: {body}"),
            Error::Protocol(m) => write!(f, "bad HTTP response: {m}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

pub struct Conn {
    stream: TcpStream,
    /// `POST ... Content-Length: ` up to the number, built once.
    prefix: Vec<u8>,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of `buf` holding received data not yet consumed.
    filled: usize,
}

impl Conn {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let prefix = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: "
        )
        .into_bytes();
        Ok(Conn { stream, prefix, out: Vec::with_capacity(4096), buf: vec![0; 4096], filled: 0 })
    }

    /// Sends one put with `body` as its JSON and waits for a 200 reply.
    pub fn put(&mut self, body: &[u8]) -> Result<(), Error> {
        self.out.clear();
        self.out.extend_from_slice(&self.prefix);
        self.out.extend_from_slice(body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out)?;
        self.read_response()
    }

    fn fill(&mut self) -> Result<(), Error> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..])?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "connection closed by the server ({} bytes of a response received)",
                self.filled
            )));
        }
        self.filled += n;
        Ok(())
    }

    fn read_response(&mut self) -> Result<(), Error> {
        let head_len = loop {
            if let Some(i) = find(&self.buf[..self.filled], b"\r\n\r\n") {
                break i + 4;
            }
            if self.filled > MAX_HEAD {
                return Err(Error::Protocol(format!("no end of headers in {MAX_HEAD} bytes")));
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_len])
            .map_err(|_| Error::Protocol("headers are not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        let code = parse_status(status)
            .ok_or_else(|| Error::Protocol(format!("bad status line {status:?}")))?;
        let mut length = None;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| Error::Protocol(format!("bad header line {line:?}")))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| Error::Protocol(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Error::Protocol(format!(
                    "Transfer-Encoding {value:?} is not supported (only Content-Length bodies)"
                )));
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                return Err(Error::Protocol("the server closes the connection".into()));
            }
        }
        let length =
            length.ok_or_else(|| Error::Protocol(format!("no Content-Length in {status:?}")))?;
        if length > MAX_BODY {
            return Err(Error::Protocol(format!("body of {length} bytes is too long")));
        }
        while self.filled < head_len + length {
            self.fill()?;
        }
        let end = head_len + length;
        let result = if code == 200 {
            Ok(())
        } else {
            let body = String::from_utf8_lossy(&self.buf[head_len..end]).into_owned();
            Err(Error::Status { code, body })
        };
        // One request in flight: anything after this response would be a protocol error, but
        // keep it for the next read rather than dropping bytes.
        self.buf.copy_within(end..self.filled, 0);
        self.filled -= end;
        result
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A server that reads one request per entry of `replies` and answers with it, split in
    /// two writes to exercise partial reads.
    fn serve(replies: Vec<&'static str>) -> (String, thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while find(&req, b"\r\n\r\n").is_none() {
                    s.read_exact(&mut byte).unwrap();
                    req.push(byte[0]);
                }
                let head = String::from_utf8(req.clone()).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let mut body = vec![0; len];
                s.read_exact(&mut body).unwrap();
                seen.push(format!("{head}{}", String::from_utf8(body).unwrap()));
                let (a, b) = reply.split_at(reply.len() / 2);
                s.write_all(a.as_bytes()).unwrap();
                s.flush().unwrap();
                thread::sleep(Duration::from_millis(2));
                s.write_all(b.as_bytes()).unwrap();
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn keep_alive_puts_and_errors() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"header\":{}}";
        let bad = "HTTP/1.1 400 Bad Request\r\ncontent-length: 19\r\n\r\n{\"error\":\"quota!\"}\n";
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (addr, server) = serve(vec![ok, ok, bad, chunked]);
        let mut c = Conn::connect(&addr, Duration::from_secs(5)).unwrap();
        c.put(br#"{"key":"a2V5","value":"dg=="}"#).unwrap();
        c.put(b"{}").unwrap();
        match c.put(b"{}") {
            Err(Error::Status { code: 400, body }) => assert!(body.contains("quota!"), "{body}"),
            other => panic!("expected a 400, got {other:?}"),
        }
        match c.put(b"{}") {
            Err(Error::Protocol(m)) => assert!(m.contains("Transfer-Encoding"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("POST /v3/kv/put HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].ends_with("\r\n\r\n{\"key\":\"a2V5\",\"value\":\"dg==\"}"), "{}", seen[0]);
        assert!(seen[0].contains(&format!("Host: {addr}\r\n")));
    }

    #[test]
    fn closed_connection_is_an_error() {
        let (addr, server) = serve(vec![]);
        let mut c = Conn::connect(&addr, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert!(c.put(b"{}").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/2 200"), None);
        assert_eq!(parse_status("HTTP/1.1 20 OK"), None);
    }
}
