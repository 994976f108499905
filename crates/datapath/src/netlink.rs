//! A small synchronous netlink request engine shared by XFRM and rtnetlink.
//!
//! Kernel calls here are local and take microseconds, so the daemons call
//! them from a blocking context rather than through an async connection.
//! Requests can be pipelined: [`NlSocket::batch`] sends many requests before
//! reading their acknowledgements, which is what keeps bulk changes cheap.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// Flags for a request that changes state and wants an acknowledgement.
pub const F_CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags for creating an object that must not exist yet.
pub const F_CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags for a dump.
pub const F_DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;
/// Flags for a single get.
pub const F_GET: u16 = NLM_F_REQUEST;

/// The largest number of requests in flight before acknowledgements are
/// read; bounded so the socket's receive buffer never overflows.
const WINDOW: usize = 256;

/// A failed request: the kernel's errno (or an I/O error) for request `index`.
#[derive(Debug)]
pub struct NlError {
    pub index: usize,
    pub error: io::Error,
}

/// A netlink socket of one protocol bound to the current network namespace.
#[derive(Debug)]
pub struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket of `protocol` (e.g. `netlink_sys::protocols::NETLINK_XFRM`).
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Extended acks give the kernel's reason text on some errors; failure
        // to enable them is harmless.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(Self {
            sock,
            seq: 1,
            buf: vec![0; 1 << 20],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send<M>(&mut self, payload: M, flags: u16) -> io::Result<u32>
    where
        M: NetlinkSerializable,
        NetlinkPayload<M>: From<M>,
    {
        let seq = self.next_seq();
        let bytes = encode(payload, flags, seq);
        self.sock.send(&bytes, 0)?;
        Ok(seq)
    }

    /// Reads datagrams until `done` returns true, calling `each` for every
    /// message of a sequence number we sent.
    fn recv_loop<M, F>(&mut self, mut each: F) -> io::Result<()>
    where
        M: NetlinkDeserializable,
        F: FnMut(NetlinkMessage<M>) -> io::Result<bool>,
    {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for msg in split::<M>(self.buf.get(..n).unwrap_or_default())? {
                if each(msg)? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request<M>(&mut self, payload: M, flags: u16) -> io::Result<()>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        NetlinkPayload<M>: From<M>,
    {
        self.batch(std::iter::once((payload, flags)))
            .map(|_| ())
            .map_err(|e| e.error)
    }

    /// Sends one request and returns the first inner message of the answer
    /// (e.g. GETSA or ALLOCSPI, which answer with a NEWSA).
    pub fn query<M>(&mut self, payload: M, flags: u16) -> io::Result<M>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        NetlinkPayload<M>: From<M>,
    {
        let seq = self.send(payload, flags)?;
        let mut out = None;
        self.recv_loop::<M, _>(|msg| {
            if msg.header.sequence_number != seq {
                return Ok(false);
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => {
                    out = Some(m);
                    Ok(true)
                }
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                _ => Ok(true),
            }
        })?;
        out.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "kernel sent no answer"))
    }

    /// Dumps a table and returns all inner messages.
    pub fn dump<M>(&mut self, payload: M) -> io::Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        NetlinkPayload<M>: From<M>,
    {
        let seq = self.send(payload, F_DUMP)?;
        let mut out = Vec::new();
        self.recv_loop::<M, _>(|msg| {
            if msg.header.sequence_number != seq {
                return Ok(false);
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    Ok(false)
                }
                NetlinkPayload::Done(_) => Ok(true),
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                _ => Ok(false),
            }
        })?;
        Ok(out)
    }

    /// Sends requests pipelined (up to [`WINDOW`] in flight) and collects
    /// acknowledgements. Stops at the first failure and reports which request
    /// failed; requests before it were applied.
    pub fn batch<M, I>(&mut self, reqs: I) -> Result<usize, NlError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        NetlinkPayload<M>: From<M>,
        I: IntoIterator<Item = (M, u16)>,
    {
        let mut reqs = reqs.into_iter().peekable();
        let mut sent: std::collections::VecDeque<(u32, usize)> = std::collections::VecDeque::new();
        let mut index = 0usize;
        let mut acked = 0usize;
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            // Fill the window: several messages per datagram.
            out.clear();
            while sent.len() < WINDOW && out.len() < 60 * 1024 {
                let Some((payload, flags)) = reqs.next() else {
                    break;
                };
                let seq = self.next_seq();
                out.extend_from_slice(&encode(payload, flags | NLM_F_ACK, seq));
                sent.push_back((seq, index));
                index = index.saturating_add(1);
            }
            if !out.is_empty() {
                self.sock
                    .send(&out, 0)
                    .map_err(|error| NlError { index: acked, error })?;
                if sent.len() < WINDOW && reqs.peek().is_some() {
                    continue;
                }
            }
            if sent.is_empty() {
                return Ok(acked);
            }
            // Read at least one datagram of acks.
            let mut failure: Option<NlError> = None;
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|error| NlError { index: acked, error })?;
            let msgs =
                split::<M>(self.buf.get(..n).unwrap_or_default()).map_err(|error| NlError { index: acked, error })?;
            for msg in msgs {
                let seq = msg.header.sequence_number;
                if let NetlinkPayload::Error(e) = msg.payload {
                    if let Some(pos) = sent.iter().position(|(s, _)| *s == seq) {
                        if let Some((_, idx)) = sent.remove(pos) {
                            if e.code.is_some() && failure.is_none() {
                                failure = Some(NlError {
                                    index: idx,
                                    error: e.to_io(),
                                });
                            } else {
                                acked = acked.saturating_add(1);
                            }
                        }
                    }
                }
            }
            if let Some(f) = failure {
                // Drain the acks of requests already in flight so the socket
                // stays in step for the next caller.
                self.drain(&mut sent);
                return Err(f);
            }
        }
    }

    fn drain(&mut self, sent: &mut std::collections::VecDeque<(u32, usize)>) {
        while !sent.is_empty() {
            let Ok(n) = self.sock.recv(&mut &mut self.buf[..], 0) else {
                return;
            };
            let mut off = 0;
            while off < n {
                let Some(slice) = self.buf.get(off..n) else {
                    break;
                };
                let Ok(hdr) = netlink_packet_core::NetlinkBuffer::new_checked(slice) else {
                    return;
                };
                let len = hdr.length() as usize;
                let seq = hdr.sequence_number();
                if len == 0 {
                    return;
                }
                off = off.saturating_add(len.saturating_add(3) & !3);
                sent.retain(|(s, _)| *s != seq);
            }
        }
    }

    /// Joins a multicast group (for kernel events).
    pub fn join(&mut self, group: u32) -> io::Result<()> {
        self.sock.add_membership(group)
    }

    /// Blocks for the next datagram of events and returns its messages.
    pub fn recv_events<M: NetlinkDeserializable>(&mut self) -> io::Result<Vec<M>> {
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        Ok(split::<M>(self.buf.get(..n).unwrap_or_default())?
            .into_iter()
            .filter_map(|msg| match msg.payload {
                NetlinkPayload::InnerMessage(m) => Some(m),
                _ => None,
            })
            .collect())
    }
}

/// Splits one received datagram into its netlink messages.
fn split<M: NetlinkDeserializable>(data: &[u8]) -> io::Result<Vec<NetlinkMessage<M>>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(rest) = data.get(off..).filter(|r| !r.is_empty()) {
        let msg = NetlinkMessage::<M>::deserialize(rest).map_err(|e| invalid(e.to_string()))?;
        let len = msg.header.length as usize;
        if len == 0 {
            return Err(invalid("zero-length netlink message".to_string()));
        }
        // Messages are 4-byte aligned within a datagram.
        off = off.saturating_add(len.saturating_add(3) & !3);
        out.push(msg);
    }
    Ok(out)
}

/// Serializes one request with the given flags and sequence number.
pub fn encode<M>(payload: M, flags: u16, seq: u32) -> Vec<u8>
where
    M: NetlinkSerializable,
    NetlinkPayload<M>: From<M>,
{
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::from(payload));
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}
