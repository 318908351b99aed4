//! The few socket operations no safe crate offers: binding a packet socket
//! to one interface and EtherType, ignoring outgoing frames on it, the
//! ICMPv6 type filter, receiving into an initialised buffer, and receiving
//! with the kernel's timestamp. Everything else goes through socket2.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

/// A raw packet socket that receives only frames of `ethertype` arriving on
/// interface `ifindex`, and sends whole Ethernet frames out of it.
pub fn packet_socket(ethertype: u16, ifindex: u32) -> io::Result<Socket> {
    // The protocol of a packet socket is the EtherType in network order.
    let protocol = i32::from(ethertype.to_be());
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(protocol)))?;
    let mut storage = SockAddrStorage::zeroed();
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage is zeroed and large enough for any address
    // family; we fill in a sockaddr_ll, the type AF_PACKET expects.
    let address = unsafe {
        let ll = storage.view_as::<libc::sockaddr_ll>();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ethertype.to_be();
        ll.sll_ifindex = ifindex as i32;
        SockAddr::new(storage, len)
    };
    socket.bind(&address)?;
    // Our own gratuitous ARP and replies would otherwise come back to us.
    set_int_option(&socket, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
    // The kernel stamps every frame when it arrives (CLOCK_REALTIME, in a
    // control message): a request that waited in the queue, e.g. while the
    // process was stopped, can be told from a fresh one (see
    // [`recv_stamped`]).
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Receives one frame into `buf`, with the time the kernel received it
/// (`SO_TIMESTAMPNS`, which [`packet_socket`] turns on; `None` if the
/// kernel attached no timestamp).
pub fn recv_stamped(
    socket: &Socket,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::time::SystemTime>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a few control messages; u64 keeps it aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is a plain C struct for which all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at `iov` (which points at `buf`) and `control`,
    // all alive and writable for the duration of the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* functions walk the control buffer the kernel just
    // filled, within msg_controllen; the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if ts.tv_sec > 0 {
                    stamp = Some(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

/// A packet socket on interface `ifindex` that the kernel hands only
/// Ethernet frames carrying IPv6 directly carrying an ICMPv6 Neighbor
/// Solicitation (a classic BPF filter on EtherType, next header 58 and
/// ICMPv6 type 135), so that the node's data traffic never reaches the
/// speaker. Unlike an ICMPv6 socket it also sees unicast solicitations for
/// addresses not assigned to the node, which the kernel's IPv6 input drops.
pub fn ndp_socket(ifindex: u32) -> io::Result<Socket> {
    const ETHERTYPE_IPV6: u16 = 0x86dd;
    let socket = packet_socket(ETHERTYPE_IPV6, ifindex)?;
    let filter = [
        // A: EtherType
        bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, 12),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, u32::from(ETHERTYPE_IPV6)),
        // A: IPv6 next header
        bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, 14 + 6),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, 58),
        // A: ICMPv6 type, right after the 40-byte IPv6 header
        bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, 14 + 40),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 135),
        bpf(BPF_RET | BPF_K, 0, 0, 0xffff),
        bpf(BPF_RET | BPF_K, 0, 0, 0),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: sock_fprog points at `filter`, which outlives the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Frames queued before the filter was attached: drop them.
    let mut scratch = [0u8; 1600];
    while recv_from(&socket, &mut scratch).is_ok() {}
    Ok(socket)
}

const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;

fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// An ICMPv6 raw socket on interface `name` that the kernel hands only the
/// ICMPv6 types in `types` (ICMP6_FILTER, RFC 3542 section 3.2), so that no
/// other traffic reaches the speaker. The kernel verifies the checksum of
/// what it delivers and fills in the checksum of what we send.
pub fn icmpv6_socket(name: &str, types: &[u8]) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(name.as_bytes()))?;
    // struct icmp6_filter: 256 bits, a set bit blocks that type.
    let mut filter = [u32::MAX; 8];
    for t in types {
        filter[usize::from(*t >> 5)] &= !(1u32 << (t & 31));
    }
    // SAFETY: the option value is a 32-byte struct icmp6_filter, passed
    // with its size; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // NDP must leave with hop limit 255 or receivers drop it (RFC 4861 7.1).
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    // Lets advertisements leave from the (unassigned) target address.
    socket.set_freebind_v6(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// `ICMP6_FILTER` from <netinet/icmp6.h>.
const ICMP6_FILTER: libc::c_int = 1;

fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option, passed by pointer with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
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

/// `recv_from` into an ordinary, initialised buffer.
pub fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: viewing initialised bytes as MaybeUninit is sound; the kernel
    // only writes bytes into it.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    socket.recv_from(uninit)
}

/// Registers `socket` with tokio's reactor.
pub fn async_socket(socket: Socket) -> io::Result<tokio::io::unix::AsyncFd<Socket>> {
    // SAFETY: a socket2::Socket owns its descriptor: it stays open, and
    // as_raw_fd returns the same one, until the Socket (moved into the
    // AsyncFd) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(socket) }.map_err(io::Error::from)
}

/// Sends `message` on an ICMPv6 raw socket to `destination` with IPv6
/// source `source` and out of interface `ifindex`, via an IPV6_PKTINFO
/// control message. `source` need not be assigned to the node: the socket
/// has IPV6_FREEBIND set (see [`icmpv6_socket`]). Neighbor Advertisements
/// go out from the target address itself, as the Linux kernel sends its own;
/// some receivers (ndisc6) ignore advertisements from any other source.
pub fn send_icmpv6_from(
    socket: &Socket,
    message: &[u8],
    source: std::net::Ipv6Addr,
    destination: std::net::SocketAddrV6,
    ifindex: u32,
) -> io::Result<usize> {
    // struct cmsghdr (len: usize, level: i32, type: i32) then struct
    // in6_pktinfo (addr: [u8; 16], ifindex: u32), padded to 8 bytes.
    const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();
    const DATA: usize = std::mem::size_of::<libc::in6_pktinfo>();
    const SPACE: usize = HEADER + DATA.div_ceil(8) * 8;
    let mut control = [0u8; SPACE];
    let header = libc::cmsghdr {
        cmsg_len: (HEADER + DATA) as _,
        cmsg_level: libc::IPPROTO_IPV6,
        cmsg_type: libc::IPV6_PKTINFO,
    };
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: source.octets(),
        },
        ipi6_ifindex: ifindex,
    };
    // SAFETY: both are plain C structs; we copy their bytes into `control`,
    // which is large enough for both (SPACE).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&header as *const libc::cmsghdr).cast::<u8>(),
            control.as_mut_ptr(),
            HEADER,
        );
        std::ptr::copy_nonoverlapping(
            (&info as *const libc::in6_pktinfo).cast::<u8>(),
            control.as_mut_ptr().add(HEADER),
            DATA,
        );
    }
    let to = SockAddr::from(destination);
    let bufs = [io::IoSlice::new(message)];
    let msg = socket2::MsgHdr::new()
        .with_addr(&to)
        .with_buffers(&bufs)
        .with_control(&control);
    socket.sendmsg(&msg, 0)
}
