//! The router's durable data (PROTOCOL.md "Databases", router side): what the
//! installation notice delivered (PSK, Secret(ID2), the PBKDF2 hash of the
//! router's own maintenance password, never the password itself,
//! the server-part and router-part VPNNAT addresses), the gateway, the host
//! table with its grants, and the maintenance requests.
//!
//! Stored as one JSON file written atomically (temporary file, fsync, rename,
//! fsync of the directory) with mode 0600, so a power cut leaves either the
//! old or the new file, never a torn one. Secrets are hex inside the file
//! only; in memory they are the proto crate's zeroizing, redacting types.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vpnnat_proto::keys::{MaintenancePassword, Psk, SecretBytes, SecretId2};
use vpnnat_proto::password::{PasswordError, PasswordHash};
use vpnnat_proto::types::{AcceptanceNumber, ClaimantLevel, FailureCode, Ipv4Cidr, TerminalName, Urgency};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// The state file could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What the installation notice delivered.
#[derive(Clone)]
pub struct Installation {
    pub psk: Psk,
    pub secret_id2: SecretId2,
    /// PBKDF2 hash of this router's maintenance password (issue 18, item
    /// 3: the clear password is not stored, so a copied SD card does not
    /// open the maintenance page).
    pub maintenance_password_hash: PasswordHash,
    pub server_part_vpnnat: Ipv4Addr,
    pub router_part_vpnnat: Ipv4Addr,
}

impl std::fmt::Debug for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installation")
            .field("psk", &"<redacted>")
            .field("secret_id2", &"<redacted>")
            .field("maintenance_password_hash", &"<redacted>")
            .field("server_part_vpnnat", &self.server_part_vpnnat)
            .field("router_part_vpnnat", &self.router_part_vpnnat)
            .finish()
    }
}

/// The VPN gateway the center assigned (exchange 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub ip: Ipv4Addr,
    pub ike_id: String,
    pub center_networks: Vec<Ipv4Cidr>,
    /// Who starts the tunnel, as the center answered (absent in state
    /// files from before issue 17: the seed's gateway).
    #[serde(
        default,
        skip_serializing_if = "vpnnat_proto::initiation::InitiationMode::is_gateway"
    )]
    pub initiation: vpnnat_proto::initiation::InitiationMode,
}

/// One row of the host table: an extension terminal with a granted VPNNAT
/// address (rows exist only while granted, seed [0115]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGrant {
    pub real: Ipv4Addr,
    pub vpnnat: Ipv4Addr,
    /// Acceptance numbers of the requests that asked for this terminal.
    pub requests: BTreeSet<u64>,
}

/// A request's state as the router knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Accepted by the center; maintenance not ended.
    Waiting,
    /// The center sent the end command.
    Ended,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Waiting => "waiting",
            RequestState::Ended => "ended",
        }
    }
}

/// One maintenance request this router made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRecord {
    pub claimant_name: String,
    pub claimant_level: ClaimantLevel,
    pub urgency: Urgency,
    pub terminals: Vec<TerminalName>,
    /// Unix seconds when the center accepted it.
    pub accepted_at: u64,
    pub state: RequestState,
    /// The failing part (its [`crate::health::Problem`] key: `ike`,
    /// `datapath`, `helper:NAME`, ...) this request was made for
    /// automatically after a failure notice; `None` for a person's request
    /// (LAN page, `routerd request`, the button). A later failure of the
    /// same part asks for no second request while this one is open
    /// ([`crate::logic::failure_request`]). Absent in files from before
    /// issue 19.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// When the center ends it by itself (Unix seconds; issue 19, item 8),
    /// as its acceptance answer said. Absent: the center did not say (an
    /// older center), no limit shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// The center's idle limit (seconds; issue 19, item 8): it ends the
    /// request once the tunnel carried no packet for this long, by its
    /// gateway's count. Absent: not told (an older center, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// The site owner ended it here (issue 19, item 7: LAN page, `routerd
    /// end N`) and the center has not acknowledged that end yet: the
    /// router sends it again on later exchanges until it does. Absent:
    /// nothing to tell the center.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_unsent: bool,
}

/// The last failure the router reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRecord {
    pub code: FailureCode,
    pub detail: String,
    pub at: u64,
    pub reported: bool,
}

/// Everything the router must not forget across a restart or power loss.
#[derive(Debug, Clone, Default)]
pub struct RouterState {
    pub installation: Option<Installation>,
    pub gateway: Option<Gateway>,
    /// The host table: granted extension terminals.
    pub hosts: BTreeMap<TerminalName, HostGrant>,
    /// Requests by acceptance number.
    pub requests: BTreeMap<u64, RequestRecord>,
    pub last_failure: Option<FailureRecord>,
}

impl RouterState {
    pub fn request(&self, n: AcceptanceNumber) -> Option<&RequestRecord> {
        self.requests.get(&n.get())
    }

    /// Every (VPNNAT, real) pair that must be in the NAT table: the
    /// server part and router part (from installation) and the host table.
    pub fn granted_vpnnat(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let own = self
            .installation
            .iter()
            .flat_map(|i| [i.server_part_vpnnat, i.router_part_vpnnat]);
        own.chain(self.hosts.values().map(|h| h.vpnnat))
    }
}

// ---------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------

const FORMAT_VERSION: u32 = 1;

/// PBKDF2 iterations for the maintenance password's hash. The password is
/// random (the center generates it, ~120 bits), so stretching is defence in
/// depth, not what keeps it from being guessed; a modest count keeps the
/// router's small CPU responsive (the check is cached after a success).
pub const MAINTENANCE_HASH_ITERATIONS: u32 = 10_000;

/// The stored form of a maintenance password.
pub fn hash_maintenance_password(
    p: &MaintenancePassword,
    rng: &dyn SecureRandom,
) -> Result<PasswordHash, PasswordError> {
    PasswordHash::create(p.expose_secret(), MAINTENANCE_HASH_ITERATIONS, rng)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstallation {
    psk: SecretString,
    secret_id2: SecretString,
    /// Files written before issue 18 hold the clear password: read only,
    /// hashed on load and the file rewritten without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maintenance_password: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maintenance_password_hash: Option<String>,
    server_part_vpnnat: Ipv4Addr,
    router_part_vpnnat: Ipv4Addr,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    installation: Option<FileInstallation>,
    gateway: Option<Gateway>,
    hosts: BTreeMap<TerminalName, HostGrant>,
    requests: BTreeMap<u64, RequestRecord>,
    last_failure: Option<FailureRecord>,
}

impl RouterState {
    /// The file's bytes (pretty JSON). The buffer holds secrets and is
    /// zeroized when dropped.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, StateError> {
        let file = StateFile {
            version: FORMAT_VERSION,
            installation: self.installation.as_ref().map(|i| FileInstallation {
                psk: SecretString::new(i.psk.to_hex()),
                secret_id2: SecretString::new(i.secret_id2.to_hex()),
                maintenance_password: None,
                maintenance_password_hash: Some(i.maintenance_password_hash.to_string()),
                server_part_vpnnat: i.server_part_vpnnat,
                router_part_vpnnat: i.router_part_vpnnat,
            }),
            gateway: self.gateway.clone(),
            hosts: self.hosts.clone(),
            requests: self.requests.clone(),
            last_failure: self.last_failure.clone(),
        };
        serde_json::to_vec_pretty(&file)
            .map(Zeroizing::new)
            .map_err(|e| StateError::Corrupt {
                path: PathBuf::new(),
                reason: e.to_string(),
            })
    }

    /// Parses the file's bytes; `path` is for messages only.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<RouterState, StateError> {
        Self::from_bytes_migrating(bytes, path, &ring::rand::SystemRandom::new()).map(|(s, _)| s)
    }

    /// [`RouterState::from_bytes`], and whether the file held a clear
    /// maintenance password (now hashed: the caller rewrites the file).
    pub fn from_bytes_migrating(
        bytes: &[u8],
        path: &Path,
        rng: &dyn SecureRandom,
    ) -> Result<(RouterState, bool), StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        // serde_json's messages quote at most a type name and a position,
        // never the value, so they cannot leak a secret.
        let f: StateFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if f.version != FORMAT_VERSION {
            return Err(corrupt(format!("unsupported version {}", f.version)));
        }
        let mut migrated = false;
        let installation = match f.installation {
            None => None,
            Some(i) => {
                let hash = match (&i.maintenance_password_hash, &i.maintenance_password) {
                    (Some(h), _) => PasswordHash::parse(h).map_err(|e| corrupt(e.to_string()))?,
                    (None, Some(clear)) => {
                        migrated = true;
                        let p = MaintenancePassword::new(clear.expose()).map_err(|e| corrupt(e.to_string()))?;
                        hash_maintenance_password(&p, rng).map_err(|e| corrupt(e.to_string()))?
                    }
                    (None, None) => return Err(corrupt("the installation has no maintenance password hash".into())),
                };
                // Both present: a crash between writes cannot produce it,
                // but if it did the clear one goes on the next save.
                migrated |= i.maintenance_password.is_some();
                Some(Installation {
                    psk: Psk::from_hex(i.psk.expose()).map_err(|e| corrupt(e.to_string()))?,
                    secret_id2: SecretId2::from_hex(i.secret_id2.expose()).map_err(|e| corrupt(e.to_string()))?,
                    maintenance_password_hash: hash,
                    server_part_vpnnat: i.server_part_vpnnat,
                    router_part_vpnnat: i.router_part_vpnnat,
                })
            }
        };
        Ok((
            RouterState {
                installation,
                gateway: f.gateway,
                hosts: f.hosts,
                requests: f.requests,
                last_failure: f.last_failure,
            },
            migrated,
        ))
    }
}

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        StateStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is the empty state of a router that
    /// never installed. A file from before issue 18 that holds the clear
    /// maintenance password is rewritten with its hash only.
    pub fn load(&self) -> Result<RouterState, StateError> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let (state, migrated) =
                    RouterState::from_bytes_migrating(&bytes, &self.path, &ring::rand::SystemRandom::new())?;
                if migrated {
                    // A reader without write access (`routerd status` as
                    // another user) still gets the state; the daemon's
                    // load rewrites it.
                    match self.save(&state) {
                        Ok(()) => log::info!(
                            "{}: clear maintenance password replaced by its PBKDF2 hash",
                            self.path.display()
                        ),
                        Err(e) => log::warn!("clear maintenance password not yet removed: {e}"),
                    }
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RouterState::default()),
            Err(source) => Err(self.io("read", source)),
        }
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> StateError {
        StateError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Writes the state atomically: a reader (or the next boot) sees the old
    /// file or the new one, whole.
    pub fn save(&self, state: &RouterState) -> Result<(), StateError> {
        let bytes = state.to_bytes()?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|e| self.io("create the directory of", e))?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        {
            // mode(0o600) applies on creation; set_permissions below covers a
            // stale temporary file left by a crash with other bits.
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| self.io("create", e))?;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| self.io("chmod", e))?;
            f.write_all(&bytes).map_err(|e| self.io("write", e))?;
            f.sync_all().map_err(|e| self.io("fsync", e))?;
        }
        fs::rename(&tmp, &self.path).map_err(|e| self.io("rename into", e))?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("fsync the directory of", e))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn installed() -> RouterState {
        RouterState {
            installation: Some(Installation {
                psk: Psk::from_array([0xaa; 32]),
                secret_id2: SecretId2::from_array([0xbb; 32]),
                maintenance_password_hash: PasswordHash::create(
                    "maint-pass-123",
                    1000,
                    &ring::rand::SystemRandom::new(),
                )
                .unwrap(),
                server_part_vpnnat: Ipv4Addr::new(10, 64, 0, 1),
                router_part_vpnnat: Ipv4Addr::new(10, 64, 0, 2),
            }),
            ..RouterState::default()
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("routerd-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_mode() {
        let dir = tmpdir("rt");
        let store = StateStore::new(dir.join("sub/state.json"));
        assert!(store.load().unwrap().installation.is_none());
        let mut s = installed();
        s.hosts.insert(
            TerminalName::new("pc1").unwrap(),
            HostGrant {
                real: Ipv4Addr::new(192, 168, 1, 10),
                vpnnat: Ipv4Addr::new(10, 64, 0, 9),
                requests: [7].into(),
            },
        );
        s.requests.insert(
            7,
            RequestRecord {
                claimant_name: "A".into(),
                claimant_level: ClaimantLevel::General,
                urgency: Urgency::Low,
                terminals: vec![TerminalName::new("pc1").unwrap()],
                accepted_at: 1,
                state: RequestState::Waiting,
                failure: Some("ike".into()),
                ends_at: None,
                idle_timeout_secs: Some(1800),
                end_unsent: false,
            },
        );
        store.save(&s).unwrap();
        store.save(&s).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = store.load().unwrap();
        assert_eq!(back.hosts, s.hosts);
        assert_eq!(back.requests, s.requests);
        let i = back.installation.unwrap();
        assert_eq!(i.psk.expose_secret(), &[0xaa; 32]);
        assert!(i.maintenance_password_hash.verify("maint-pass-123"));
        assert!(!dir.join("sub/state.json.tmp").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 18, item 3: the file holds the hash, never the password.
    #[test]
    fn state_file_holds_no_clear_maintenance_password() {
        let bytes = installed().to_bytes().unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains("maint-pass-123"), "{text}");
        assert!(
            text.contains("\"maintenance_password_hash\": \"pbkdf2-sha256$"),
            "{text}"
        );
        assert!(!text.contains("\"maintenance_password\""), "{text}");
    }

    /// A state file written before issue 18 (clear password) is hashed on
    /// load and rewritten without it.
    #[test]
    fn old_state_file_with_a_clear_password_is_migrated() {
        let dir = tmpdir("migrate");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let old = format!(
            r#"{{"version":1,"installation":{{"psk":"{}","secret_id2":"{}","maintenance_password":"old-shared-pw",
            "server_part_vpnnat":"10.64.0.1","router_part_vpnnat":"10.64.0.2"}},"gateway":null,"hosts":{{}},
            "requests":{{}},"last_failure":null}}"#,
            "aa".repeat(32),
            "bb".repeat(32)
        );
        fs::write(&path, old).unwrap();
        let store = StateStore::new(path.clone());
        let s = store.load().unwrap();
        let i = s.installation.unwrap();
        assert!(i.maintenance_password_hash.verify("old-shared-pw"));
        assert!(!i.maintenance_password_hash.verify("another"));
        let now = fs::read_to_string(&path).unwrap();
        assert!(!now.contains("old-shared-pw"), "{now}");
        assert!(now.contains("maintenance_password_hash"), "{now}");
        let again = store.load().unwrap().installation.unwrap();
        assert!(again.maintenance_password_hash.verify("old-shared-pw"));
        fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 19, item 8: the idle limit the center told is kept with the
    /// request; a file from before it (no such key) loads as "not told".
    #[test]
    fn a_request_from_before_the_idle_limit_loads_without_one() {
        let mut s = installed();
        s.requests.insert(
            7,
            RequestRecord {
                claimant_name: "A".into(),
                claimant_level: ClaimantLevel::General,
                urgency: Urgency::Low,
                terminals: vec![TerminalName::new("pc1").unwrap()],
                accepted_at: 1,
                state: RequestState::Waiting,
                failure: None,
                ends_at: Some(99),
                idle_timeout_secs: Some(1800),
                end_unsent: false,
            },
        );
        let p = Path::new("s.json");
        let mut v: serde_json::Value = serde_json::from_slice(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(v["requests"]["7"]["idle_timeout_secs"], serde_json::json!(1800));
        let back = RouterState::from_bytes(&serde_json::to_vec(&v).unwrap(), p).unwrap();
        assert_eq!(back.requests[&7].idle_timeout_secs, Some(1800));
        v["requests"]["7"].as_object_mut().unwrap().remove("idle_timeout_secs");
        let old = RouterState::from_bytes(&serde_json::to_vec(&v).unwrap(), p).unwrap();
        assert_eq!(old.requests[&7].idle_timeout_secs, None);
        assert_eq!(old.requests[&7].ends_at, Some(99));
        // "Not told" is written as no key at all, as before.
        assert!(!String::from_utf8(old.to_bytes().unwrap().to_vec())
            .unwrap()
            .contains("idle_timeout"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let d = format!("{:?}", installed());
        assert!(
            !d.contains("aaaa") && !d.contains("170") && !d.contains("maint-pass"),
            "{d}"
        );
    }

    #[test]
    fn corrupt_files_are_refused_without_echoing_secrets() {
        let p = Path::new("s.json");
        assert!(RouterState::from_bytes(b"{", p).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&installed().to_bytes().unwrap()).unwrap();
        v["installation"]["psk"] = "zz".repeat(32).into();
        let e = RouterState::from_bytes(&serde_json::to_vec(&v).unwrap(), p).unwrap_err();
        assert!(!e.to_string().contains("zzzz"), "{e}");
        v["version"] = 9.into();
        assert!(RouterState::from_bytes(&serde_json::to_vec(&v).unwrap(), p).is_err());
    }
}
