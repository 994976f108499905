//! The two UDP sockets and the mapping between the ports the protocol core
//! reasons about (500/4500) and the ports actually used.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;

use tokio::net::UdpSocket;
use vpnnat_ike::event::{IKE_PORT, NAT_T_PORT};

use crate::DriverError;

/// `UDP_ENCAP_ESPINUDP` from `<linux/udp.h>` (RFC 3948 encapsulation with
/// the non-ESP marker for IKE); not exported by the `libc` crate.
const UDP_ENCAP_ESPINUDP: libc::c_int = 2;

/// The UDP ports of the IKE endpoints. The protocol core always reasons
/// in terms of 500 and 4500 (it adds and strips the non-ESP marker on
/// 4500); the driver maps those to these ports, for both ends. Other ports
/// are only useful for tests without privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Plain IKE (500).
    pub ike: u16,
    /// NAT traversal: IKE with the non-ESP marker and ESP-in-UDP (4500).
    pub natt: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            ike: IKE_PORT,
            natt: NAT_T_PORT,
        }
    }
}

impl Ports {
    /// Wire port -> the core's port.
    pub(crate) fn to_core(self, port: u16) -> u16 {
        if port == self.ike {
            IKE_PORT
        } else if port == self.natt {
            NAT_T_PORT
        } else {
            port
        }
    }

    /// The core's port -> wire port.
    pub(crate) fn to_wire(self, port: u16) -> u16 {
        match port {
            IKE_PORT => self.ike,
            NAT_T_PORT => self.natt,
            p => p,
        }
    }

    pub(crate) fn addr_to_core(self, a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip(), self.to_core(a.port()))
    }

    pub(crate) fn addr_to_wire(self, a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip(), self.to_wire(a.port()))
    }
}

/// Both sockets, open for the life of the driver (the kernel decapsulates
/// ESP-in-UDP only while the encap socket exists).
#[derive(Debug)]
pub(crate) struct Sockets {
    pub ike: UdpSocket,
    pub natt: UdpSocket,
}

impl Sockets {
    pub(crate) fn bind(local: Ipv4Addr, ports: Ports) -> Result<Self, DriverError> {
        let ike = bind_one(local, ports.ike)?;
        let natt = bind_one(local, ports.natt)?;
        set_espinudp(&natt).map_err(|e| DriverError::Bind {
            addr: SocketAddr::V4(SocketAddrV4::new(local, ports.natt)),
            source: e,
        })?;
        Ok(Self {
            ike: UdpSocket::from_std(ike).map_err(DriverError::Io)?,
            natt: UdpSocket::from_std(natt).map_err(DriverError::Io)?,
        })
    }
}

fn bind_one(local: Ipv4Addr, port: u16) -> Result<StdUdpSocket, DriverError> {
    let addr = SocketAddr::V4(SocketAddrV4::new(local, port));
    let s = StdUdpSocket::bind(addr).map_err(|source| DriverError::Bind { addr, source })?;
    s.set_nonblocking(true)
        .map_err(|source| DriverError::Bind { addr, source })?;
    Ok(s)
}

/// Marks the socket as an ESP-in-UDP endpoint: the kernel takes datagrams
/// not starting with the 4-byte zero marker as ESP, and passes IKE (with
/// the marker) to us. NAT-T keepalives (`0xff`) are eaten by the kernel.
fn set_espinudp(sock: &StdUdpSocket) -> std::io::Result<()> {
    let val: libc::c_int = UDP_ENCAP_ESPINUDP;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the fd is a valid, open UDP socket owned by `sock` for the
    // duration of the call; `val` is a live c_int and `len` its size, as
    // setsockopt(SOL_UDP, UDP_ENCAP) expects. No memory is retained.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_ENCAP,
            std::ptr::addr_of!(val).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mapping_is_identity_by_default_and_symmetric() {
        let p = Ports::default();
        assert_eq!(p.to_core(500), 500);
        assert_eq!(p.to_wire(4500), 4500);
        let q = Ports {
            ike: 20500,
            natt: 24500,
        };
        assert_eq!(q.to_core(20500), 500);
        assert_eq!(q.to_core(24500), 4500);
        assert_eq!(q.to_core(33333), 33333);
        assert_eq!(q.to_wire(500), 20500);
        assert_eq!(q.to_wire(4500), 24500);
        assert_eq!(q.to_wire(33333), 33333);
    }

    #[tokio::test]
    async fn encap_socket_binds_without_privileges() {
        // UDP_ENCAP needs no privilege (port 0: two ephemeral ports).
        let s = Sockets::bind(Ipv4Addr::LOCALHOST, Ports { ike: 0, natt: 0 });
        assert!(s.is_ok(), "{s:?}");
    }
}
