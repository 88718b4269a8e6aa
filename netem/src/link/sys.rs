//! Checked wrappers over the Linux calls the link emulator makes: packet
//! sockets, interface ioctls, eventfd, ppoll, setns.
//!
//! Every `unsafe` of the link module that is not a batch syscall lives
//! here; each wrapper returns a [`SysError`] naming the syscall, which the
//! caller completes with the interface it was working on.

use std::ffi::c_int;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

// From include/uapi/linux/if_packet.h and include/linux/socket.h, stable
// kernel ABI. Kept here rather than taken from libc so the crate does not
// depend on which libc release exports them.
const SOL_PACKET: c_int = 263;
const PACKET_STATISTICS: c_int = 6;
const PACKET_QDISC_BYPASS: c_int = 20;
const PACKET_IGNORE_OUTGOING: c_int = 23;
/// `sll_pkttype` of a frame this host sent (if_packet.h).
pub(crate) const PACKET_OUTGOING: u8 = 4;
/// Every protocol (if_ether.h).
const ETH_P_ALL: u16 = 0x0003;

/// A failed syscall, before the caller says on which interface.
#[derive(Debug)]
pub(crate) struct SysError {
    pub(crate) syscall: &'static str,
    pub(crate) source: io::Error,
}

pub(crate) type SysResult<T> = Result<T, SysError>;

fn last_error(syscall: &'static str) -> SysError {
    SysError {
        syscall,
        source: io::Error::last_os_error(),
    }
}

/// Turns a -1 return into the errno it set.
fn check(rc: c_int, syscall: &'static str) -> SysResult<c_int> {
    if rc < 0 {
        Err(last_error(syscall))
    } else {
        Ok(rc)
    }
}

/// A new `AF_PACKET`/`SOCK_RAW` socket that receives nothing until bound.
///
/// Protocol 0 at creation matters: a socket created with `ETH_P_ALL`
/// would see every interface's frames until `bind` narrows it.
pub(crate) fn packet_socket() -> SysResult<OwnedFd> {
    // SAFETY: socket(2) takes only integers; a non-negative return is a
    // new descriptor that nothing else owns, so OwnedFd may take it.
    let fd = check(
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
        "socket(AF_PACKET, SOCK_RAW)",
    )?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies `name` into an `ifreq`, which the caller has checked is
/// 1..IFNAMSIZ bytes without NUL.
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of
    // integers, arrays and a pointer); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Checks an interface name the way the kernel will read it.
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['\0', '/'])
        && !name.trim().is_empty()
}

/// Runs an `ifreq` ioctl on `fd` (any socket of the namespace the
/// interface lives in) and returns the filled request.
fn ifreq_ioctl(
    fd: BorrowedFd<'_>,
    name: &str,
    request: libc::c_ulong,
    syscall: &'static str,
) -> SysResult<libc::ifreq> {
    let mut req = ifreq_for(name);
    check(
        // SAFETY: `req` is a valid, initialized ifreq that outlives the call;
        // the SIOCGIF* requests used here only write into its union.
        unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut req as *mut libc::ifreq) },
        syscall,
    )?;
    Ok(req)
}

/// The interface's index in the socket's namespace.
pub(crate) fn ifindex(fd: BorrowedFd<'_>, name: &str) -> SysResult<c_int> {
    let req = ifreq_ioctl(fd, name, libc::SIOCGIFINDEX, "ioctl(SIOCGIFINDEX)")?;
    // SAFETY: SIOCGIFINDEX succeeded, so the kernel wrote ifru_ifindex.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// The interface's MTU.
pub(crate) fn mtu(fd: BorrowedFd<'_>, name: &str) -> SysResult<c_int> {
    let req = ifreq_ioctl(fd, name, libc::SIOCGIFMTU, "ioctl(SIOCGIFMTU)")?;
    // SAFETY: SIOCGIFMTU succeeded, so the kernel wrote ifru_mtu.
    Ok(unsafe { req.ifr_ifru.ifru_mtu })
}

/// Whether the interface is administratively up.
pub(crate) fn is_up(fd: BorrowedFd<'_>, name: &str) -> SysResult<bool> {
    let req = ifreq_ioctl(fd, name, libc::SIOCGIFFLAGS, "ioctl(SIOCGIFFLAGS)")?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(flags as c_int & libc::IFF_UP != 0)
}

/// Runs `SIOCETHTOOL` with `data` (a `struct ethtool_value`) on `name`.
pub(crate) fn ethtool(
    fd: BorrowedFd<'_>,
    name: &str,
    data: &mut EthtoolValue,
    syscall: &'static str,
) -> SysResult<()> {
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_data = (data as *mut EthtoolValue).cast();
    check(
        // SAFETY: `req` names the interface and points at `data`, a live
        // ethtool_value the kernel reads (cmd) and, for a get, writes (data);
        // both outlive the call.
        unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::SIOCETHTOOL as _,
                &mut req as *mut libc::ifreq,
            )
        },
        syscall,
    )?;
    Ok(())
}

/// `struct ethtool_value` from include/uapi/linux/ethtool.h.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct EthtoolValue {
    pub(crate) cmd: u32,
    pub(crate) data: u32,
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
    syscall: &'static str,
) -> SysResult<()> {
    check(
        // SAFETY: the option value is a live c_int and the length passed is
        // its size; the kernel only reads it.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&value as *const c_int).cast(),
                size_of::<c_int>() as libc::socklen_t,
            )
        },
        syscall,
    )?;
    Ok(())
}

/// Binds a packet socket to one interface and protocol (0: send only).
pub(crate) fn bind_packet(fd: BorrowedFd<'_>, ifindex: c_int, protocol: u16) -> SysResult<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    check(
        // SAFETY: `addr` is an initialized sockaddr_ll and the length passed
        // is its size; bind(2) only reads it.
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        },
        "bind(AF_PACKET)",
    )?;
    Ok(())
}

/// Binds `fd` to receive every protocol on `ifindex`.
pub(crate) fn bind_receive_all(fd: BorrowedFd<'_>, ifindex: c_int) -> SysResult<()> {
    bind_packet(fd, ifindex, ETH_P_ALL)
}

/// Asks the kernel not to hand this socket the frames its own host sends
/// (Linux 4.20+). Returns false if the kernel does not know the option,
/// in which case the relay filters on `sll_pkttype` alone.
pub(crate) fn ignore_outgoing(fd: BorrowedFd<'_>) -> SysResult<bool> {
    match setsockopt_int(
        fd,
        SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        1,
        "setsockopt(PACKET_IGNORE_OUTGOING)",
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.source.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends straight to the driver, skipping the qdisc layer (3.14+). The
/// relay is the link's only queue; a veth has no qdisc worth keeping.
pub(crate) fn qdisc_bypass(fd: BorrowedFd<'_>) -> SysResult<()> {
    setsockopt_int(
        fd,
        SOL_PACKET,
        PACKET_QDISC_BYPASS,
        1,
        "setsockopt(PACKET_QDISC_BYPASS)",
    )
}

/// Sets the receive (`receive` = true) or send buffer, forcing past
/// `net.core.[rw]mem_max` when allowed (CAP_NET_ADMIN), else asking
/// within the limit.
pub(crate) fn socket_buffer(fd: BorrowedFd<'_>, receive: bool, bytes: usize) -> SysResult<()> {
    let (force, plain, syscall) = if receive {
        (
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            "setsockopt(SO_RCVBUF)",
        )
    } else {
        (
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            "setsockopt(SO_SNDBUF)",
        )
    };
    // The config validation bounds `bytes` to i32::MAX.
    let value = c_int::try_from(bytes).unwrap_or(c_int::MAX);
    if setsockopt_int(fd, libc::SOL_SOCKET, force, value, syscall).is_ok() {
        return Ok(());
    }
    setsockopt_int(fd, libc::SOL_SOCKET, plain, value, syscall)
}

/// Frames the kernel dropped because this socket's receive buffer was
/// full, since the last call (reading resets the kernel's counters).
pub(crate) fn take_kernel_drops(fd: BorrowedFd<'_>) -> SysResult<u64> {
    // struct tpacket_stats from if_packet.h: { tp_packets, tp_drops }.
    let mut stats = [0u32; 2];
    let mut len = size_of::<[u32; 2]>() as libc::socklen_t;
    check(
        // SAFETY: `stats` and `len` are live and `len` is the size of `stats`;
        // the kernel writes at most `len` bytes and updates `len`.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                stats.as_mut_ptr().cast(),
                &mut len,
            )
        },
        "getsockopt(PACKET_STATISTICS)",
    )?;
    Ok(u64::from(stats[1]))
}

/// A non-blocking, close-on-exec eventfd that starts at 0.
pub(crate) fn eventfd() -> SysResult<OwnedFd> {
    // SAFETY: eventfd(2) takes only integers; a non-negative return is a
    // new descriptor owned by no one else.
    let fd = check(
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
        "eventfd",
    )?;
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the eventfd readable (for good: nobody reads it back).
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> SysResult<()> {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of a live u64, the size an eventfd takes.
    let rc = unsafe {
        libc::write(
            fd.as_raw_fd(),
            (&one as *const u64).cast(),
            size_of::<u64>(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // EAGAIN: the counter is at its maximum, so already readable.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(SysError {
                syscall: "write(eventfd)",
                source: err,
            });
        }
    }
    Ok(())
}

/// What [`wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The data socket is readable (or has an error to report).
    Data,
    /// The shutdown eventfd was signalled.
    Shutdown,
    /// The timeout passed (or a signal interrupted the wait).
    Timeout,
}

/// Blocks until `data` is readable, `shutdown` is signalled, or `timeout`
/// passes (`None`: no timeout). `ppoll` rather than `poll` for its
/// nanosecond timeout; the thread's timer slack decides the real
/// precision.
pub(crate) fn wait_readable(
    data: BorrowedFd<'_>,
    shutdown: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> SysResult<Wake> {
    let mut fds = [
        libc::pollfd {
            fd: shutdown.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: data.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live array of two pollfd and its length is
    // passed; `ts_ptr` is null or points at `ts`, alive for the call; a
    // null sigmask keeps the thread's signal mask.
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(Wake::Timeout);
        }
        return Err(SysError {
            syscall: "ppoll",
            source: err,
        });
    }
    if fds[0].revents != 0 {
        Ok(Wake::Shutdown)
    } else if fds[1].revents != 0 {
        Ok(Wake::Data)
    } else {
        Ok(Wake::Timeout)
    }
}

/// Moves the calling thread into the network namespace `netns` refers to.
pub(crate) fn setns_net(netns: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: setns(2) takes a descriptor, valid for the call because it
    // is borrowed, and a flag; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(rc, "setns(CLONE_NEWNET)")?;
    Ok(())
}

/// Cuts the calling thread's timer slack from the default 50 us to 1 ns,
/// so `ppoll` timeouts end closer to when asked (the spin does the rest).
pub(crate) fn reduce_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only the
    // calling thread's timer slack; no memory is passed or kept.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not reduce the relay thread's timer slack");
    }
}

/// 64 random bits from the kernel, for an unseeded link; falls back to the
/// clock and the process id (loss draws need variety, not secrecy).
pub(crate) fn random_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: getrandom(2) writes at most the 8 bytes of the live `seed`.
    let rc = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), size_of::<u64>(), 0) };
    if rc == size_of::<u64>() as isize {
        return seed;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (u64::from(std::process::id()) << 32)
}
