//! Mapping elements straight to nf_tables: the batch of [`super::setelem`]
//! on a `NETLINK_NETFILTER` socket, in-process. The table, its chains and
//! sets stay with the `nft` process ([`super::Nft`]); a grant or revoke
//! only adds or deletes elements, and this is the path that keeps it in
//! microseconds (an `nft` process costs milliseconds to start and to read
//! the kernel's cache before it sends the same batch).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::counters::{self, HostCounter};
use super::setelem::{self, ElemBatch, ElemOp, Refusal};
use crate::error::DatapathError;
use crate::model::Mapping;

/// The most mappings one netlink batch carries (~240 bytes each, well
/// inside the socket's send buffer); larger changes (reconciles of a whole
/// population) go through the `nft` process, which is cheaper per element
/// at that size anyway.
pub const MAX_MAPPINGS: usize = 1024;

/// Send buffer: a batch of [`MAX_MAPPINGS`] is ~250 KiB.
const SND_BYTES: libc::c_int = 1 << 20;
/// Receive buffer: 3 acknowledgements per mapping, each its own datagram
/// (~1 KiB of buffer accounting apiece, not its 36 bytes): 1,024 mappings
/// overflowed 1 MiB (ENOBUFS); this holds them with room to spare.
const RCV_BYTES: libc::c_int = 8 << 20;

/// A `NETLINK_NETFILTER` socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct NftElements {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn set_buf(fd: &OwnedFd, force: libc::c_int, plain: libc::c_int, v: libc::c_int) {
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for opt in [force, plain] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                size,
            )
        };
        // The forcing variant needs CAP_NET_ADMIN (which nf_tables needs
        // too); the plain one is capped by net.core.*mem_max.
        if r == 0 {
            return;
        }
    }
}

impl NftElements {
    pub fn open() -> Result<Self, DatapathError> {
        let socket_err = |reason| DatapathError::Socket {
            family: "netfilter",
            reason,
        };
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(socket_err(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_buf(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SND_BYTES);
        set_buf(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RCV_BYTES);
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Adds (or deletes) the three elements of each of `mappings` in table
    /// `table` as one transaction: all or nothing. A refusal names the
    /// element; nothing of the transaction is then applied.
    pub fn apply(&mut self, table: &str, op: ElemOp, mappings: &[Mapping]) -> Result<(), DatapathError> {
        if mappings.is_empty() {
            return Ok(());
        }
        let elems = setelem::mapping_elems(mappings);
        let count = u32::try_from(elems.len()).unwrap_or(u32::MAX);
        let b = setelem::batch(table, op, &elems, self.seq.wrapping_add(1), true);
        // Batch begin, the elements, batch end.
        self.seq = self.seq.wrapping_add(count).wrapping_add(2);
        let verb = match op {
            ElemOp::Add => "add",
            ElemOp::Delete => "delete",
        };
        let fail = |elem: String, reason: io::Error| DatapathError::NftElement { op: verb, elem, reason };
        let whole = || format!("{} mapping(s) in table {table}", mappings.len());
        let acks = self.exchange(&b).map_err(|e| fail(whole(), e))?;
        setelem::verdict(&b, &acks).map_err(|r| match r {
            Refusal::Batch(errno) => fail(whole(), io::Error::from_raw_os_error(errno)),
            Refusal::Elem(i, errno) => fail(
                elems.get(i).map(|e| format!("element {e}")).unwrap_or_else(whole),
                io::Error::from_raw_os_error(errno),
            ),
            Refusal::Unanswered(i) => fail(
                elems.get(i).map(|e| format!("element {e}")).unwrap_or_else(whole),
                io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
            ),
        })
    }

    /// The traffic counters of the granted hosts of table `table` (the
    /// elements of its `granted` set, [`counters`]). A missing table reads
    /// as no hosts (routerd before its first grant).
    pub fn host_counters(&mut self, table: &str) -> Result<Vec<HostCounter>, DatapathError> {
        let fail = |reason: io::Error| DatapathError::NftElement {
            op: "read",
            elem: format!("the counters of table {table}"),
            reason,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = counters::dump_request(table, super::ruleset::GRANTED_SET, seq);
        let fd = self.fd.as_raw_fd();
        // SAFETY: req is a valid buffer of req.len() bytes.
        let sent = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut p, 1, 1000) };
            if ready == 0 {
                return Err(fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel",
                )));
            }
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    _ => return Err(fail(e)),
                }
            }
            let got = self.buf.get(..n as usize).unwrap_or_default();
            let part =
                counters::parse_dump(got, seq).map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            out.extend(part.counters);
            match part.error {
                Some(libc::ENOENT) => return Ok(Vec::new()),
                Some(errno) => return Err(fail(io::Error::from_raw_os_error(errno))),
                None if part.done => return Ok(out),
                None => {}
            }
        }
    }

    /// Sends the batch and collects every acknowledgement. The kernel
    /// processes a netlink batch inside the send call, so its answers are
    /// queued when send returns; a short wait covers anything else.
    fn exchange(&mut self, b: &ElemBatch) -> io::Result<Vec<(u32, i32)>> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: bytes is a valid buffer of bytes.len() bytes; the kernel
        // is the default destination of an unconnected netlink socket.
        let sent = unsafe { libc::send(fd, b.bytes.as_ptr().cast(), b.bytes.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut acks = Vec::with_capacity(b.elem_seqs.len());
        let mut waited = false;
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        let done = !matches!(setelem::verdict(b, &acks), Err(Refusal::Unanswered(_)));
                        if done || waited {
                            return Ok(acks);
                        }
                        waited = true;
                        let mut p = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, 1000) };
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            let got = self.buf.get(..n as usize).unwrap_or_default();
            let new = setelem::acks(got).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Answers to an earlier batch of ours (only after an error cut
            // its reading short) have other sequence numbers.
            let span = b.elem_seqs.len();
            acks.extend(
                new.into_iter()
                    .filter(|(s, _)| s.wrapping_sub(b.begin_seq) as usize <= span),
            );
        }
    }
}
