//! Socket options that neither std nor tokio expose.

#![allow(unsafe_code)]

use std::{io, os::fd::AsRawFd};

/// Sets `TCP_DEFER_ACCEPT` on a socket that will listen: connections are handed to
/// `accept` only once data has arrived, or after about `secs` seconds.
#[cfg(target_os = "linux")]
pub(crate) fn defer_accept(socket: &impl AsRawFd, secs: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: `socket` is an open descriptor for the duration of the call, and the option
    // value points to a live `c_int` whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
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
