//! The whole center on loopback for the integration tests, every hop real
//! HTTP: gatewayd (policy driver over the recording datapath) pushing its
//! tunnel events to centerd, centerd's router API in front of an in-memory
//! database, and a router installed by the test. Shared by full_stack.rs
//! and log_lines.rs (each test file is its own crate: `mod common;`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_center::api::ApiSettings;
use vpnnat_center::center::{Center, CenterSettings, GatewayEntry};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::config::HttpEndpoint;
use vpnnat_center::http::call;
use vpnnat_center::storage::Storage;
use vpnnat_datapath::RecordingDatapath;
use vpnnat_gatewayd::driver::PolicyDriver;
use vpnnat_gatewayd::{self as gateway, Gatewayd};
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword, SecretBytes, SecretId};
use vpnnat_proto::messages::{GatewayAddressRequest, GatewayInfo, InstallRequest, InstallSecrets};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{BoundedSet, GatewayName, IkeIdentity, TerminalId, UnicastAddr};

pub const T: Duration = Duration::from_secs(5);

/// The gateway's address on the "internet", as routers are told it.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);

pub async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

pub struct Stack {
    pub master: FactoryMasterKey,
    pub gw_key: GatewayApiKey,
    pub gw_name: GatewayName,
    pub center_addr: String,
    pub gw_addr: String,
    pub center: Arc<Center<HttpGateways, HttpRouters>>,
    pub gwd: Arc<Gatewayd>,
}

impl Stack {
    /// gatewayd gw1 (4 slots) and centerd (pool 10.64.0.0/16, center
    /// network 172.16.0.0/24), both serving on loopback.
    pub async fn start() -> Stack {
        let master = FactoryMasterKey::from_array([3; 32]);
        let gw_key = GatewayApiKey::from_array([4; 32]);
        let gw_name = GatewayName::new("gw1").unwrap();
        let (center_l, center_addr) = bind().await;
        let (gw_l, gw_addr) = bind().await;

        // gatewayd, pushing events to centerd.
        let (tx, rx) = unbounded_channel();
        let driver = PolicyDriver::new(
            RecordingDatapath::new(),
            GATEWAY_IP,
            vec!["172.16.0.0/24".parse().unwrap()],
            1000,
            tx,
        );
        let gwd = Arc::new(Gatewayd::new(gw_name.clone(), gw_key.clone(), Box::new(driver)).unwrap());
        tokio::spawn(gateway::run(gw_l, std::future::pending(), gwd.clone()));
        tokio::spawn(gateway::forward_events(
            rx,
            HttpEndpoint::parse(&format!("http://{center_addr}")).unwrap(),
            gw_name.clone(),
            gw_key.clone(),
            T,
        ));

        // centerd.
        let mut st = Storage::open_in_memory().unwrap();
        st.init_pool(&"10.64.0.0/16".parse().unwrap()).unwrap();
        let settings = CenterSettings {
            factory_master_key: master.clone(),
            maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
            maintenance_password_hash: "x".into(),
            center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
            gateways: vec![GatewayEntry {
                name: gw_name.clone(),
                global_ip: UnicastAddr::new(GATEWAY_IP).unwrap(),
                ike_id: IkeIdentity::new("gw1.center.example").unwrap(),
                api_key: gw_key.clone(),
                slots: 4,
                next_hop: None,
            }],
            replay: ReplayConfig::default(),
            // Simulated routers run no IKE: answered without waiting for a tunnel.
            tunnel_up_timeout: Duration::ZERO,
            max_open_requests: vpnnat_center::center::DEFAULT_MAX_OPEN_REQUESTS,
            max_grant_lifetime_secs: vpnnat_center::limits::DEFAULT_MAX_LIFETIME_SECS,
            idle_timeout_secs: None,
        };
        let gws = HttpGateways::new(vec![(gw_name.clone(), gw_addr.clone(), gw_key.clone())], T);
        let center = Arc::new(Center::new(st, settings, gws, HttpRouters::new(8080, T)).unwrap());
        // Loopback stands in for a proxy: the router's address comes from
        // X-Forwarded-For (a loopback address cannot be a tunnel endpoint).
        let api = ApiSettings {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        };
        tokio::spawn(vpnnat_center::api::run_with(
            center_l,
            std::future::pending(),
            center.clone(),
            api,
        ));
        Stack {
            master,
            gw_key,
            gw_name,
            center_addr,
            gw_addr,
            center,
            gwd,
        }
    }

    /// Router `id`'s installation and gateway-address exchanges, as routerd
    /// does them; checks that the router is told gw1's address.
    pub async fn install(&self, id: &TerminalId, rng: &SystemRandom) -> (InstallSecrets, GatewayInfo) {
        let kp = ReplyKeyPair::generate(rng).unwrap();
        let sid = SecretId::derive(&self.master, id).mac_key();
        let request = InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        };
        let secrets = call(&self.center_addr, id, &sid, &request, T, rng)
            .await
            .unwrap()
            .open(kp, id)
            .unwrap();
        let kp = ReplyKeyPair::generate(rng).unwrap();
        let request = GatewayAddressRequest {
            reply_key: kp.public_key(),
            initiation: Default::default(),
            wan: None,
        };
        let info = call(&self.center_addr, id, &secrets.secret_id2().mac_key(), &request, T, rng)
            .await
            .unwrap()
            .open(kp, id)
            .unwrap();
        assert_eq!(info.gateway_ip.get(), GATEWAY_IP);
        (secrets, info)
    }
}
