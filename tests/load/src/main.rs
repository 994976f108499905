//! vpnnat-load: the load test of issue 8 ("Load"). N simulated routers do
//! full maintenance cycles (installation, gateway address, maintenance
//! request, the operator's start and end in the UI, the center's end,
//! release and VPN end) concurrently against real daemons, several rounds,
//! printing cycles/s, errors and the daemons' peak RSS per round and
//! checking at the end that the VPNNAT pool and the gateway slots are free.
//!
//! Two modes:
//! - host (default, [`host`]): this tool starts one `centerd` and G
//!   `gatewayd` on loopback; gatewayd has no IKE and an in-memory
//!   datapath, so no tunnel ever comes up (`scripts/bench-load.sh`).
//! - `--tunnels` ([`tunnels`], in the test VM): `tests/vm/load-tunnels.sh`
//!   starts centerd and gatewayd with the kernel datapath and IKE in their
//!   namespaces; this tool runs the N routers in one "homes" namespace,
//!   each a routerd core with its own WAN address, real IKE responder, real
//!   XFRM SAs and policies, and its server part answering the center
//!   through the real ESP tunnel (`scripts/bench-load.sh --vm`).

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]
// A test tool: a broken setup should stop it loudly at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod host;
mod tunnels;

#[tokio::main]
async fn main() {
    // The simulated routers log through routerd's code; RUST_LOG picks how
    // much (errors only by default: N routers are many lines).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    if std::env::args().any(|a| a == "--tunnels") {
        tunnels::run().await;
    } else {
        host::run().await;
    }
}
