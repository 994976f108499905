//! Pure builders of rtnetlink messages for links, addresses and routes.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::model::Ipv4Cidr;

/// RTM_GETLINK by name.
pub fn get_link(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    RouteNetlinkMessage::GetLink(m)
}

/// RTM_SETLINK that sets IFF_UP (or clears it).
pub fn set_link_up(index: u32, up: bool) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    RouteNetlinkMessage::SetLink(m)
}

fn address(index: u32, cidr: Ipv4Cidr, host: Ipv4Addr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = cidr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(IpAddr::V4(host)));
    m.attributes.push(AddressAttribute::Address(IpAddr::V4(host)));
    m
}

/// RTM_NEWADDR: `host/len` on the link.
pub fn add_address(index: u32, host: Ipv4Addr, prefix_len: u8) -> Option<RouteNetlinkMessage> {
    let net = Ipv4Cidr::new(Ipv4Addr::from(u32::from(host) & mask(prefix_len)?), prefix_len).ok()?;
    Some(RouteNetlinkMessage::NewAddress(address(index, net, host)))
}

/// RTM_DELADDR.
pub fn del_address(index: u32, host: Ipv4Addr, prefix_len: u8) -> Option<RouteNetlinkMessage> {
    let net = Ipv4Cidr::new(Ipv4Addr::from(u32::from(host) & mask(prefix_len)?), prefix_len).ok()?;
    Some(RouteNetlinkMessage::DelAddress(address(index, net, host)))
}

fn mask(len: u8) -> Option<u32> {
    match len {
        0 => Some(0),
        1..=32 => u32::MAX.checked_shl(32_u32.saturating_sub(u32::from(len))),
        _ => None,
    }
}

/// Where a route points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A next hop on a connected network.
    Gateway(Ipv4Addr),
    /// Directly out of a link (by index).
    Dev(u32),
    /// Both.
    GatewayDev(Ipv4Addr, u32),
}

fn route(dst: Ipv4Cidr, via: Via) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match via {
        Via::Dev(_) => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr())));
    }
    match via {
        Via::Gateway(g) => m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(g))),
        Via::Dev(i) => m.attributes.push(RouteAttribute::Oif(i)),
        Via::GatewayDev(g, i) => {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
            m.attributes.push(RouteAttribute::Oif(i));
        }
    }
    m
}

/// RTM_NEWROUTE in the main table.
pub fn add_route(dst: Ipv4Cidr, via: Via) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewRoute(route(dst, via))
}

/// RTM_DELROUTE in the main table.
pub fn del_route(dst: Ipv4Cidr, via: Via) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelRoute(route(dst, via))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_prefix_is_derived_from_host() {
        let RouteNetlinkMessage::NewAddress(m) = add_address(3, Ipv4Addr::new(192, 168, 1, 1), 24).unwrap() else {
            panic!()
        };
        assert_eq!((m.header.prefix_len, m.header.index), (24, 3));
        assert!(m
            .attributes
            .contains(&AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)))));
        assert!(add_address(3, Ipv4Addr::new(1, 2, 3, 4), 33).is_none());
    }

    #[test]
    fn default_route_has_no_destination() {
        let RouteNetlinkMessage::NewRoute(m) =
            add_route("0.0.0.0/0".parse().unwrap(), Via::Gateway(Ipv4Addr::new(10, 0, 0, 1)))
        else {
            panic!()
        };
        assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(m.header.scope, RouteScope::Universe);
    }

    #[test]
    fn device_route_is_link_scoped() {
        let RouteNetlinkMessage::NewRoute(m) = add_route("10.64.0.0/16".parse().unwrap(), Via::Dev(4)) else {
            panic!()
        };
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(m.attributes.contains(&RouteAttribute::Oif(4)));
    }
}
