//! Tests of the crate as a whole (the daemon's shell over real sockets, the
//! LAN page in a browser); each module's own tests sit next to it.

mod browser;
mod grant_limits;
mod idle_limit;
mod lan_security;
mod request_states;
mod router_itself;
mod shell;
mod site_end;
