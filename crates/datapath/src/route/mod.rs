//! Links, addresses and routes over rtnetlink (NETLINK_ROUTE), with the same
//! synchronous request engine as XFRM.

pub mod msg;

use std::net::Ipv4Addr;

use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::error::DatapathError;
use crate::model::{Ipv4Cidr, ModelError};
use crate::netlink::{NlSocket, F_CHANGE, F_CREATE, F_GET};
pub use msg::Via;

/// A handle on links, addresses and routes of the current namespace.
#[derive(Debug)]
pub struct Route {
    nl: NlSocket,
}

fn err(op: &'static str, object: impl ToString) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |reason| DatapathError::Route {
        op,
        object: object.to_string(),
        reason,
    }
}

/// A link as seen by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub up: bool,
}

impl Route {
    pub fn open() -> Result<Self, DatapathError> {
        let nl = NlSocket::open(NETLINK_ROUTE).map_err(|reason| DatapathError::Socket {
            family: "route",
            reason,
        })?;
        Ok(Self { nl })
    }

    pub fn link(&mut self, name: &str) -> Result<LinkInfo, DatapathError> {
        let what = format!("link {name}");
        match self.nl.query(msg::get_link(name), F_GET).map_err(err("get", &what))? {
            RouteNetlinkMessage::NewLink(l) => Ok(LinkInfo {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
            }),
            _ => Err(err("get", &what)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected answer",
            ))),
        }
    }

    pub fn set_up(&mut self, name: &str, up: bool) -> Result<(), DatapathError> {
        let index = self.link(name)?.index;
        self.nl
            .request(msg::set_link_up(index, up), F_CHANGE)
            .map_err(err("set", format!("link {name} {}", if up { "up" } else { "down" })))
    }

    pub fn add_address(&mut self, dev: &str, host: Ipv4Addr, prefix_len: u8) -> Result<(), DatapathError> {
        let index = self.link(dev)?.index;
        let m = msg::add_address(index, host, prefix_len).ok_or_else(|| ModelError::Invalid {
            what: "prefix length",
            input: prefix_len.to_string(),
        })?;
        self.nl
            .request(m, F_CREATE)
            .map_err(err("add", format!("address {host}/{prefix_len} on {dev}")))
    }

    pub fn del_address(&mut self, dev: &str, host: Ipv4Addr, prefix_len: u8) -> Result<(), DatapathError> {
        let index = self.link(dev)?.index;
        let m = msg::del_address(index, host, prefix_len).ok_or_else(|| ModelError::Invalid {
            what: "prefix length",
            input: prefix_len.to_string(),
        })?;
        self.nl
            .request(m, F_CHANGE)
            .map_err(err("delete", format!("address {host}/{prefix_len} on {dev}")))
    }

    fn via(&mut self, gw: Option<Ipv4Addr>, dev: Option<&str>) -> Result<Via, DatapathError> {
        let idx = match dev {
            Some(d) => Some(self.link(d)?.index),
            None => None,
        };
        match (gw, idx) {
            (Some(g), Some(i)) => Ok(Via::GatewayDev(g, i)),
            (Some(g), None) => Ok(Via::Gateway(g)),
            (None, Some(i)) => Ok(Via::Dev(i)),
            (None, None) => Err(ModelError::Invalid {
                what: "route (needs a gateway or a device)",
                input: String::new(),
            }
            .into()),
        }
    }

    pub fn add_route(&mut self, dst: Ipv4Cidr, gw: Option<Ipv4Addr>, dev: Option<&str>) -> Result<(), DatapathError> {
        let via = self.via(gw, dev)?;
        self.nl
            .request(msg::add_route(dst, via), F_CREATE)
            .map_err(err("add", format!("route {dst}")))
    }

    pub fn del_route(&mut self, dst: Ipv4Cidr, gw: Option<Ipv4Addr>, dev: Option<&str>) -> Result<(), DatapathError> {
        let via = self.via(gw, dev)?;
        self.nl
            .request(msg::del_route(dst, via), F_CHANGE)
            .map_err(err("delete", format!("route {dst}")))
    }
}
