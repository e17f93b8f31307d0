//! One gRPC connection to etcd's v3 API (`etcdserverpb.KV/Put`), one request in flight: how
//! etcd's own clients (etcdctl, clientv3, its `benchmark` tool) talk to it, without the JSON
//! gateway's HTTP/1.1 parse, base64 and extra in-process gRPC hop.
//!
//! The two messages are declared here with `prost`'s derive, with the field numbers of etcd's
//! `rpc.proto` (`PutRequest`: key = 1, value = 2); the reply's fields are not needed and are
//! skipped by the decoder. No `.proto` file and no `protoc` at build time.
//!
//! Each connection thread owns a single-threaded tokio runtime and blocks on one put at a
//! time, so the open and closed loops in `run.rs` drive it exactly like the HTTP connection.

use std::fmt;
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

/// etcd's `PutResponse`; its header and previous value are not read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

#[derive(Debug)]
pub enum Error {
    Connect(String),
    Status(tonic::Status),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(m) => write!(f, "gRPC connect: {m}"),
            Error::Status(s) => write!(f, "gRPC status {:?}: {}", s.code(), s.message()),
        }
    }
}

pub struct Conn {
    rt: tokio::runtime::Runtime,
    client: tonic::client::Grpc<tonic::transport::Channel>,
    path: PathAndQuery,
    /// Shared by every put (a reference count, not a copy, per request).
    value: bytes::Bytes,
}

impl Conn {
    /// Connects to `addr` (host:port) over plain HTTP/2; every put carries `value`.
    pub fn connect(addr: &str, timeout: Duration, value: bytes::Bytes) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect(e.to_string()))?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Connect(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel =
            rt.block_on(endpoint.connect()).map_err(|e| Error::Connect(format!("{addr}: {e}")))?;
        Ok(Conn {
            rt,
            client: tonic::client::Grpc::new(channel),
            path: PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            value,
        })
    }

    /// Puts `key` = the connection's value and waits for etcd's reply.
    pub fn put(&mut self, key: Vec<u8>) -> Result<(), Error> {
        let req = PutRequest { key, value: self.value.clone() };
        let (client, path) = (&mut self.client, self.path.clone());
        self.rt.block_on(async move {
            client
                .ready()
                .await
                .map_err(|e| Error::Status(tonic::Status::unavailable(e.to_string())))?;
            let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
            client
                .unary(tonic::Request::new(req), path, codec)
                .await
                .map(|_| ())
                .map_err(Error::Status)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn put_request_has_etcds_field_numbers() {
        let b = PutRequest { key: b"k".to_vec(), value: bytes::Bytes::from_static(b"vv") }
            .encode_to_vec();
        // Field 1 (key), wire type 2: tag 0x0a; field 2 (value): tag 0x12.
        assert_eq!(b, [0x0a, 1, b'k', 0x12, 2, b'v', b'v']);
        // A reply with a header (field 1) and fields we do not model decodes.
        assert!(PutResponse::decode(&[0x0a, 0x02, 0x08, 0x01][..]).is_ok());
    }
}
