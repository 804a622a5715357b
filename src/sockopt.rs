//! Socket options that neither std nor tokio expose.

#![allow(unsafe_code)]

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use tokio::net::TcpSocket;

/// A TCP socket of `addr`'s family with `TCP_NODELAY` on: how wsgate opens both its
/// listeners (accepted sockets inherit it) and its backend sockets, since a relayed
/// frame must never wait for Nagle.
pub(crate) fn tcp_socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Sets `TCP_DEFER_ACCEPT` on a socket that will listen: connections are handed to
/// `accept` only once data has arrived, or after about `secs` seconds.
#[cfg(target_os = "linux")]
pub(crate) fn defer_accept(socket: &impl AsRawFd, secs: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    set_tcp_option(socket, libc::TCP_DEFER_ACCEPT, value)
}

/// Turns off `TCP_QUICKACK`, so the ACK of what the peer sent waits (up to the kernel's
/// delayed-ACK time) to ride on wsgate's answer instead of leaving as a segment of its own.
///
/// On a listener the setting is inherited by accepted sockets: the client's request is
/// then acknowledged by the 101 (HAProxy's `tcp-smart-accept`, on by default in its HTTP
/// mode). On a socket about to connect, the ACK of the SYN-ACK rides on the request
/// (HAProxy's `tcp-smart-connect`). The kernel leaves this mode by itself the first time
/// a delayed ACK has to be sent alone, so it shapes the handshake, not the relay.
#[cfg(target_os = "linux")]
pub(crate) fn delay_acks(socket: &impl AsRawFd) -> io::Result<()> {
    set_tcp_option(socket, libc::TCP_QUICKACK, 0)
}

#[cfg(target_os = "linux")]
fn set_tcp_option(socket: &impl AsRawFd, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `socket` is an open descriptor for the duration of the call, and the option
    // value points to a live `c_int` whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel would acknowledge at once (`TCP_QUICKACK` as read back: off while
/// in delayed-ACK mode).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn quickack(socket: &impl AsRawFd) -> io::Result<bool> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as in `set_tcp_option`; `len` holds the size of the live `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value != 0)
    } else {
        Err(io::Error::last_os_error())
    }
}
