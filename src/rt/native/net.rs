//! Sockets: non-blocking system calls first, a poll on the ring when the socket is not ready.
//!
//! A read or write that finds data or room costs one `recv`/`send` and nothing else; only
//! when the socket would block does a one-shot `POLL_ADD` go to the ring (submitted with the
//! executor's next `io_uring_enter`, which it makes anyway to sleep), and the task retries
//! when it completes. Buffers stay with the caller: the kernel never holds a pointer into
//! them past a system call, so dropping a read or write future is always safe.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use io_uring::{opcode, types};

use super::exec::{Op, check};

/// A socket's pending waits for readiness, one per direction.
#[derive(Default)]
struct Waits {
    read: Option<Op>,
    write: Option<Op>,
}

/// Polls the readiness wait in `slot` (creating it for `events`) until it completes.
fn poll_ready(
    slot: &mut Option<Op>,
    fd: RawFd,
    events: u32,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let op = slot.get_or_insert_with(|| {
        Op::submit(opcode::PollAdd::new(types::Fd(fd), events).build(), None, true)
    });
    match Pin::new(op).poll(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(r) => {
            *slot = None;
            Poll::Ready(check(r).map(|_| ()))
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Retries the non-blocking call `attempt` until it succeeds or fails for real; while the
/// socket would block, waits for `events` through the poll in `wait`.
fn poll_io(
    fd: RawFd,
    wait: &mut Option<Op>,
    events: u32,
    cx: &mut Context<'_>,
    mut attempt: impl FnMut() -> isize,
) -> Poll<io::Result<usize>> {
    loop {
        let n = attempt();
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if !would_block(&e) {
            return Poll::Ready(Err(e));
        }
        match poll_ready(wait, fd, events, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
    }
}

fn poll_recv(
    fd: RawFd,
    waits: &mut Waits,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
    poll_io(fd, &mut waits.read, events, cx, || {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) }
    })
}

fn poll_send(
    fd: RawFd,
    waits: &mut Waits,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    poll_io(fd, &mut waits.write, libc::POLLOUT as u32, cx, || {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        }
    })
}

fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor we own.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e);
        }
    }
    Ok(())
}

macro_rules! stream_io {
    ($t:ty) => {
        impl AsRawFd for $t {
            fn as_raw_fd(&self) -> RawFd {
                self.fd.as_raw_fd()
            }
        }

        impl futures_lite::AsyncRead for $t {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                let fd = self.fd.as_raw_fd();
                poll_recv(fd, &mut self.waits, cx, buf)
            }
        }

        impl futures_lite::AsyncWrite for $t {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let fd = self.fd.as_raw_fd();
                poll_send(fd, &mut self.waits, cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(shutdown_write(self.fd.as_raw_fd()))
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("fd", &self.fd.as_raw_fd()).finish()
            }
        }
    };
}

/// A listening TCP socket.
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener").field("addr", &self.inner.local_addr().ok()).finish()
    }
}

impl TcpListener {
    /// Binds `addr` with SO_REUSEADDR and SO_REUSEPORT and listens (backlog 1024).
    ///
    /// SO_REUSEPORT lets a restarted node bind its port while the killed process's socket
    /// lingers: a killed process's io_uring is torn down asynchronously, and until then a
    /// readiness poll in its ring keeps the listening socket open (`Address already in use`
    /// on restart without it).
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let fd = new_socket(&addr)?;
        let s = fd.as_raw_fd();
        set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid socket address of `len` bytes.
        if unsafe { libc::bind(s, (&storage as *const libc::sockaddr_storage).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain system call on a socket we own.
        if unsafe { libc::listen(s, 1024) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let inner = std::net::TcpListener::from(fd);
        Ok(TcpListener { inner })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let fd = self.inner.as_raw_fd();
        // This call's own wait (several tasks may accept on one listener).
        let mut wait: Option<Op> = None;
        std::future::poll_fn(|cx| {
            loop {
                // SAFETY: accept4 with null address pointers on a listening socket we own.
                let s = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if s >= 0 {
                    // SAFETY: a new descriptor that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(s) };
                    return Poll::Ready(Ok(TcpStream { waits: Waits::default(), fd }));
                }
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) {
                    continue;
                }
                if !would_block(&e) {
                    return Poll::Ready(Err(e));
                }
                match poll_ready(&mut wait, fd, libc::POLLIN as u32, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
        })
        .await
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connected TCP socket, read and written through `futures_lite`'s async I/O traits.
pub struct TcpStream {
    /// Dropped before `fd`: a pending poll is cancelled before the descriptor closes.
    waits: Waits,
    fd: OwnedFd,
}

stream_io!(TcpStream);

impl TcpStream {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let fd = new_socket(&addr)?;
        let s = fd.as_raw_fd();
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid socket address of `len` bytes.
        let r =
            unsafe { libc::connect(s, (&storage as *const libc::sockaddr_storage).cast(), len) };
        let mut stream = TcpStream { waits: Waits::default(), fd };
        if r == 0 {
            return Ok(stream);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        std::future::poll_fn(|cx| poll_ready(&mut stream.waits.write, s, libc::POLLOUT as u32, cx))
            .await?;
        let mut err: libc::c_int = 0;
        let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR into a c_int of the given length.
        let r = unsafe {
            libc::getsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut l,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(stream)
    }

    /// Connects to `addr`, failing with `TimedOut` after `timeout`.
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let timer = async {
            super::exec::sleep(timeout).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))
        };
        futures_lite::future::or(TcpStream::connect(addr), timer).await
    }

    /// Sets TCP_NODELAY.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        set_int(self.fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, on.into())
    }
}

/// A new non-blocking TCP socket for `addr`'s family.
fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket creation; the result is checked.
    let s = unsafe {
        libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// setsockopt of a c_int.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a c_int of the given length on a socket the caller owns.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}
