//! Links, addresses and routes over rtnetlink (NETLINK_ROUTE).
pub mod msg;
