//! Socket options std does not offer, for the test server and the fault
//! proxy: an abortive close (SO_LINGER 0, so that close sends an RST) and a
//! listen backlog above std's 128. Owns no state; each call changes only the
//! socket it is given.

use std::net::{TcpListener, TcpStream};

/// Whether `Cut::Reset` / `Reply::reset()` really send an RST on this platform.
pub fn reset_supported() -> bool {
    cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "x86",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))
}

/// Makes closing `s` abortive (an RST) where [`reset_supported`]; elsewhere
/// its close stays a FIN.
pub(crate) fn set_linger_zero(s: &TcpStream) {
    if reset_supported() {
        linger_zero(s);
    }
}

/// SO_LINGER on, 0 s. The option's numbers are Linux's on the architectures
/// [`reset_supported`] lists (alpha, mips, parisc and sparc use others), so
/// it is called there only; that list is the one place naming them.
#[cfg(unix)]
fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open fd, a pointer to a live `struct linger` and its size.
    unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &linger,
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

#[cfg(not(unix))]
fn linger_zero(_s: &TcpStream) {}

/// Raises the listen backlog from std's 128 (tests open hundreds of connections
/// at once; an overflowing backlog drops SYNs and costs a 1 s retransmit).
#[cfg(unix)]
pub(crate) fn raise_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn listen(fd: i32, backlog: i32) -> i32;
    }
    // SAFETY: a valid listening fd; listen() again only updates the backlog.
    unsafe {
        listen(listener.as_raw_fd(), 4096);
    }
}

#[cfg(not(unix))]
pub(crate) fn raise_backlog(_listener: &TcpListener) {}

/// Bytes `s` has sent that the peer has not acknowledged yet (and bytes not
/// sent at all): Linux's `SIOCOUTQ`. `None` where it is not known here, as
/// [`reset_supported`] lists. A server that closes abortively waits for 0
/// first, so that what it answered reached the peer before the reset.
pub fn unacknowledged(s: &TcpStream) -> Option<usize> {
    if !reset_supported() {
        return None;
    }
    outq(s)
}

#[cfg(unix)]
fn outq(s: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn ioctl(fd: i32, request: u64, value: *mut i32) -> i32;
    }
    // TIOCOUTQ, which is SIOCOUTQ for a TCP socket, on the architectures
    // `reset_supported` lists.
    const SIOCOUTQ: u64 = 0x5411;
    let mut queued: i32 = 0;
    // SAFETY: a valid open fd and a pointer to a live int, as SIOCOUTQ takes.
    let done = unsafe { ioctl(s.as_raw_fd(), SIOCOUTQ, &mut queued) };
    (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
}

#[cfg(not(unix))]
fn outq(_s: &TcpStream) -> Option<usize> {
    None
}
