//! The Prometheus exposition of the center's state (`prometheus-client`,
//! OpenMetrics text).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::metrics::{Labels, ProcessCollector};
use crate::storage::RequestState;

use super::{Center, CenterError, GatewayCommands, RouterCommands};

/// A family of gauges with the given samples.
fn gauges(samples: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in samples {
        f.get_or_create(&labels).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    f
}

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// The Prometheus exposition: requests by state, pool used/free, slots
    /// used/free and tunnels up per gateway, draining gateways, command
    /// latency histograms, `vpnnat_center_build_info` and the `process_*`
    /// families. Read from the database (shared by every centerd) at scrape
    /// time, into a registry made for this scrape; the command metrics are
    /// this process's.
    pub fn render_metrics(&self) -> Result<String, CenterError> {
        let (counts, pool, gws) = {
            let st = self.reads()?;
            (st.request_counts()?, st.pool_usage()?, st.gateway_usage()?)
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let ours = registry.sub_registry_with_prefix("vpnnat_center");
        ours.register(
            "build",
            "The centerd build: its version.",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let states = [RequestState::Waiting, RequestState::InProgress, RequestState::Ended];
        ours.register(
            "requests",
            "Maintenance requests by state.",
            gauges(states.iter().map(|st| {
                let n = counts.iter().find(|(s, _)| s == st).map_or(0, |(_, n)| *n);
                (vec![("state", st.as_str().to_owned())], n)
            })),
        );
        ours.register(
            "pool_addresses",
            "VPNNAT pool addresses by state.",
            gauges([
                (vec![("state", "used".to_owned())], pool.allocated),
                (vec![("state", "free".to_owned())], pool.free),
            ]),
        );
        let per_gateway = |v: &dyn Fn(&crate::storage::GatewayUsage) -> u64| {
            gauges(gws.iter().map(|g| (vec![("gateway", g.name.clone())], v(g))))
        };
        ours.register(
            "gateway_slots",
            "Tunnel slots per gateway by state.",
            gauges(gws.iter().flat_map(|g| {
                [("used", g.used), ("free", g.free)]
                    .map(|(state, n)| (vec![("gateway", g.name.clone()), ("state", state.to_owned())], n))
            })),
        );
        ours.register(
            "tunnels_up",
            "Tunnels up per gateway (as last reported by the gateway).",
            per_gateway(&|g| g.up),
        );
        ours.register(
            "gateway_draining",
            "1 if the gateway takes no new tunnels.",
            per_gateway(&|g| u64::from(g.draining)),
        );
        ours.register(
            "gateway_up",
            "1 if the gateway answers centerd's heartbeat, 0 if it was marked down.",
            per_gateway(&|g| u64::from(g.alive)),
        );
        self.metrics.register(ours, "router/gateway API");
        let mut out = String::new();
        // Writing to a String cannot fail; a family that refused to encode
        // would leave the text cut short, which the scraper then rejects.
        if encode(&mut out, &registry).is_err() {
            log::error!("metrics: cannot encode the exposition");
        }
        Ok(out)
    }
}
