//! `vpnnat-ike tool ...`: small helpers for the VM tests and the benchmark
//! (raw UDP, a capture of IKE datagrams on the wire, a long TCP transfer,
//! and an observer of SAs appearing in the kernel). Test scaffolding: each
//! one is bounded in time and fails with a message instead of panicking.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use netlink_packet_xfrm::{XfrmMessage, IPPROTO_ESP, XFRMNLGRP_SA};
use vpnnat_datapath::netlink::NlSocket;

#[derive(Subcommand, Debug)]
pub enum Tool {
    /// Send the bytes of a file (optionally cut to --truncate bytes) as one
    /// UDP datagram from --src (ephemeral port unless --sport) to --dst.
    UdpSend {
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long, default_value_t = 0)]
        sport: u16,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        /// Send only the first N bytes.
        #[arg(long)]
        truncate: Option<usize>,
    },
    /// Capture the UDP payloads of --count IPv4 datagrams --src -> --dst
    /// with destination port --dport on --iface (AF_PACKET), into
    /// PREFIX.1, PREFIX.2, ... Prints READY once listening.
    Capture {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long, default_value_t = 500)]
        dport: u16,
        #[arg(long, default_value_t = 2)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Accept one TCP connection, read until EOF, answer `RECEIVED <n>`.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// One TCP connection sending --rate-kbps for --secs, then half-close
    /// and wait for the sink's count. Prints `SENT <n> RECEIVED <m>`; exit
    /// status 0 only if the connection survived and m == n.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 20)]
        secs: u64,
        #[arg(long, default_value_t = 256)]
        rate_kbps: u64,
    },
    /// Wait until an ESP SA --local -> --peer and one --peer -> --local
    /// have been added to the kernel (XFRM NEWSA/UPDSA events of this
    /// namespace); print `READY` once subscribed, then `INSTALLED <unix
    /// time in µs> in=<spi> out=<spi>`.
    SaWait {
        #[arg(long)]
        local: Ipv4Addr,
        #[arg(long)]
        peer: Ipv4Addr,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn epoch_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Exits the process with a failure once `secs` have passed.
fn watchdog(secs: u64, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        say(&format!("TIMEOUT {what} after {secs} s"));
        std::process::exit(1);
    });
}

pub fn run(t: Tool) -> Result<()> {
    match t {
        Tool::UdpSend {
            src,
            sport,
            dst,
            file,
            truncate,
        } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let n = truncate.map_or(bytes.len(), |t| t.min(bytes.len()));
            let data = bytes.get(..n).unwrap_or_default();
            let sock =
                UdpSocket::bind(SocketAddrV4::new(src, sport)).with_context(|| format!("binding {src}:{sport}"))?;
            sock.send_to(data, dst).with_context(|| format!("sending to {dst}"))?;
            say(&format!("SENT {n} of {} bytes to {dst}", bytes.len()));
            Ok(())
        }
        Tool::Capture {
            iface,
            src,
            dst,
            dport,
            count,
            out,
            timeout_secs,
        } => capture(&iface, src, dst, dport, count, &out, timeout_secs),
        Tool::TcpSink { listen, timeout_secs } => tcp_sink(listen, timeout_secs),
        Tool::TcpSend { to, secs, rate_kbps } => tcp_send(to, secs, rate_kbps),
        Tool::SaWait {
            local,
            peer,
            timeout_secs,
        } => sa_wait(local, peer, timeout_secs),
    }
}

/// An AF_PACKET socket receiving the packets of one interface, both
/// directions (link header removed).
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn open(iface: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: plain libc calls with valid arguments; the fd is owned
        // right after a successful socket().
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!("no interface {iface}");
        }
        // ETH_P_ALL: only such taps see the packets the host transmits
        // (forwarded ones included); non-IPv4 is filtered afterwards.
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: as above.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(proto)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let sock = Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = proto;
        ll.sll_ifindex = i32::try_from(index).context("interface index")?;
        use std::os::fd::AsRawFd;
        // SAFETY: ll lives across the call and its size is passed.
        let rc = unsafe {
            libc::bind(
                sock.0.as_raw_fd(),
                std::ptr::addr_of!(ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
        }
        Ok(sock)
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n)
            .map_err(|_| std::io::Error::last_os_error())
            .context("receiving")
    }
}

/// The UDP payload of an IPv4 packet if it is `src -> dst:dport`.
fn udp_payload(p: &[u8], src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Option<&[u8]> {
    let vihl = *p.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || *p.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
    let s = Ipv4Addr::new(*p.get(12)?, *p.get(13)?, *p.get(14)?, *p.get(15)?);
    let d = Ipv4Addr::new(*p.get(16)?, *p.get(17)?, *p.get(18)?, *p.get(19)?);
    let udp = p.get(ihl..total)?;
    let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    (s == src && d == dst && port == dport).then(|| udp.get(8..)).flatten()
}

fn capture(
    iface: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    count: usize,
    out: &std::path::Path,
    timeout_secs: u64,
) -> Result<()> {
    let sock = PacketSocket::open(iface)?;
    watchdog(timeout_secs, "capture");
    say("READY");
    let mut buf = vec![0u8; 65_536];
    let mut got = 0;
    while got < count {
        let n = sock.recv(&mut buf)?;
        let Some(payload) = udp_payload(buf.get(..n).unwrap_or_default(), src, dst, dport) else {
            continue;
        };
        got += 1;
        let mut name = out.as_os_str().to_owned();
        name.push(format!(".{got}"));
        std::fs::write(&name, payload).with_context(|| format!("writing {}", PathBuf::from(&name).display()))?;
        say(&format!("CAPTURED {got} {} bytes", payload.len()));
    }
    Ok(())
}

fn tcp_sink(listen: SocketAddr, timeout_secs: u64) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    watchdog(timeout_secs, "tcp-sink");
    say("LISTENING");
    let (mut s, peer) = l.accept().context("accept")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .context("read timeout")?;
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 65_536];
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    loop {
        let n = s.read(&mut buf).context("reading (connection lost or stalled 30 s)")?;
        if n == 0 {
            break;
        }
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
        total += n as u64;
    }
    s.write_all(format!("RECEIVED {total}\n").as_bytes())
        .context("answering")?;
    say(&format!(
        "RECEIVED {total} from {peer} (longest pause between reads {} ms)",
        max_gap.as_millis()
    ));
    Ok(())
}

fn tcp_send(to: SocketAddr, secs: u64, rate_kbps: u64) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connecting {to}"))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .context("write timeout")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .context("read timeout")?;
    say(&format!("CONNECTED {to}"));
    let chunk = vec![0x5au8; 1024];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let per_sec = rate_kbps.max(1) * 1024;
    let mut sent: u64 = 0;
    let mut next_report = 1;
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as u64;
        if sent < due {
            s.write_all(&chunk)
                .context("sending (connection lost or stalled 20 s)")?;
            sent += chunk.len() as u64;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        if start.elapsed().as_secs() >= next_report {
            say(&format!("PROGRESS {next_report}s {sent}"));
            next_report += 1;
        }
    }
    s.shutdown(std::net::Shutdown::Write).context("half-close")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("waiting for the sink's count")?;
    let received: u64 = line
        .trim()
        .strip_prefix("RECEIVED ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected answer {line:?}"))?;
    say(&format!("SENT {sent} RECEIVED {received}"));
    if received != sent {
        bail!("the sink received {received} bytes of {sent}");
    }
    Ok(())
}

fn sa_wait(local: Ipv4Addr, peer: Ipv4Addr, timeout_secs: u64) -> Result<()> {
    let mut nl = NlSocket::open(libc::NETLINK_XFRM as isize).context("XFRM netlink socket")?;
    nl.join(XFRMNLGRP_SA).context("joining the XFRM SA group")?;
    watchdog(timeout_secs, "sa-wait");
    say("READY");
    let (mut inb, mut outb) = (None, None);
    loop {
        for m in nl.recv_events::<XfrmMessage>().context("XFRM events")? {
            let (XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m)) = m else {
                continue;
            };
            let i = &m.user_sa_info;
            if i.id.proto != IPPROTO_ESP {
                continue;
            }
            let (s, d) = (i.saddr.to_ipv4(), i.id.daddr.to_ipv4());
            if s == local && d == peer {
                outb = Some(i.id.spi);
            } else if s == peer && d == local {
                inb = Some(i.id.spi);
            }
        }
        if let (Some(i), Some(o)) = (inb, outb) {
            say(&format!("INSTALLED {} in={i:#010x} out={o:#010x}", epoch_us()));
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4], proto: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x01, 0xf4]);
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn udp_payload_matches_only_the_asked_flow() {
        let (a, b) = (Ipv4Addr::new(198, 51, 100, 21), Ipv4Addr::new(203, 0, 113, 101));
        let p = packet(a.octets(), b.octets(), 17, 500, b"ike bytes");
        assert_eq!(udp_payload(&p, a, b, 500), Some(&b"ike bytes"[..]));
        assert_eq!(udp_payload(&p, b, a, 500), None);
        assert_eq!(udp_payload(&p, a, b, 4500), None);
        let esp = packet(a.octets(), b.octets(), 50, 500, b"x");
        assert_eq!(udp_payload(&esp, a, b, 500), None);
        // Trailing link padding is not payload; a cut packet is no match.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(udp_payload(&padded, a, b, 500), Some(&b"ike bytes"[..]));
        assert_eq!(udp_payload(p.get(..30).unwrap_or_default(), a, b, 500), None);
        assert_eq!(udp_payload(&[], a, b, 500), None);
        assert_eq!(udp_payload(&[0x60; 40], a, b, 500), None);
    }
}
