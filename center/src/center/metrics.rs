//! The Prometheus exposition of the center's state.

use crate::storage::RequestState;

use super::{Center, CenterError, GatewayCommands, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// The Prometheus exposition: requests by state, pool used/free, slots
    /// used/free and tunnels up per gateway, draining gateways, command
    /// latency histograms. Read from the database (shared by every centerd)
    /// at scrape time; the command metrics are this process's.
    pub fn render_metrics(&self) -> Result<String, CenterError> {
        use crate::metrics::family;
        let (counts, pool, gws) = {
            let st = self.reads()?;
            (st.request_counts()?, st.pool_usage()?, st.gateway_usage()?)
        };
        #[allow(clippy::cast_precision_loss)] // counts far below 2^53
        let f = |v: u64| v as f64;
        let mut out = String::new();
        let states = [RequestState::Waiting, RequestState::InProgress, RequestState::Ended];
        family(
            &mut out,
            "vpnnat_center_requests",
            "gauge",
            "Maintenance requests by state.",
            &states
                .iter()
                .map(|st| {
                    let n = counts.iter().find(|(s, _)| s == st).map_or(0, |(_, n)| *n);
                    (vec![("state", st.as_str().to_owned())], f(n))
                })
                .collect::<Vec<_>>(),
        );
        family(
            &mut out,
            "vpnnat_center_pool_addresses",
            "gauge",
            "VPNNAT pool addresses by state.",
            &[
                (vec![("state", "used".to_owned())], f(pool.allocated)),
                (vec![("state", "free".to_owned())], f(pool.free)),
            ],
        );
        let mut slots = Vec::new();
        let mut up = Vec::new();
        let mut draining = Vec::new();
        let mut alive = Vec::new();
        for g in &gws {
            alive.push((vec![("gateway", g.name.clone())], if g.alive { 1.0 } else { 0.0 }));
            slots.push((
                vec![("gateway", g.name.clone()), ("state", "used".to_owned())],
                f(g.used),
            ));
            slots.push((
                vec![("gateway", g.name.clone()), ("state", "free".to_owned())],
                f(g.free),
            ));
            up.push((vec![("gateway", g.name.clone())], f(g.up)));
            draining.push((vec![("gateway", g.name.clone())], if g.draining { 1.0 } else { 0.0 }));
        }
        family(
            &mut out,
            "vpnnat_center_gateway_slots",
            "gauge",
            "Tunnel slots per gateway by state.",
            &slots,
        );
        family(
            &mut out,
            "vpnnat_center_tunnels_up",
            "gauge",
            "Tunnels up per gateway (as last reported by the gateway).",
            &up,
        );
        family(
            &mut out,
            "vpnnat_center_gateway_draining",
            "gauge",
            "1 if the gateway takes no new tunnels.",
            &draining,
        );
        family(
            &mut out,
            "vpnnat_center_gateway_up",
            "gauge",
            "1 if the gateway answers centerd's heartbeat, 0 if it was marked down.",
            &alive,
        );
        self.metrics.render("vpnnat_center", "router/gateway API", &mut out);
        Ok(out)
    }
}
