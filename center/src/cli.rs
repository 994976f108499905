//! centerd's command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::password::DEFAULT_ITERATIONS;

pub use vpnnat_service::cli::{parse, EXIT_USAGE};

/// `centerd [--config FILE] [--json] [SUBCOMMAND]`.
#[derive(Debug, Parser)]
#[command(
    name = "centerd",
    version,
    about = "vpnnat maintenance server: router API, operator UI, databases, gateway commands",
    after_help = "Exit status: 0 done, 1 failed, 2 usage or configuration error."
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/vpnnat/centerd.toml")]
    pub config: PathBuf,
    /// Machine-readable output (JSON) for the tool subcommands.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// centerd's subcommands: the server and the tools (see [`crate::admin`]).
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Serve the router API and the operator UI (the default).
    Run,
    /// Validate the configuration and the database, then exit.
    CheckConfig,
    /// List maintenance requests, newest first.
    ListRequests {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only requests in this state.
        #[arg(long, value_parser = ["waiting", "in_progress", "ended"])]
        state: Option<String>,
        /// Only requests of this router.
        #[arg(long)]
        terminal: Option<String>,
    },
    /// Show one router: addresses, gateway slot, requests, failures.
    ShowRouter { terminal_id: String },
    /// Mark a request "in progress" (the UI's start button).
    StartRequest { acceptance_number: u64 },
    /// End a request (the UI's end button): router end command, the three
    /// judgments, VPNNAT release, VPN end.
    EndRequest {
        acceptance_number: u64,
        /// Why (stored with the request, shown in the UI's list, written
        /// in the audit row): 1-200 characters, no control characters.
        /// Optional here (scripts, and root's way out); the UI requires it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Limit a request's time (the UI's "set limit"): it ends by itself
    /// MINUTES from now. Refused beyond `[center] max_grant_lifetime_secs`
    /// counted from its reception. Audited.
    LimitRequest {
        acceptance_number: u64,
        #[arg(long)]
        minutes: u64,
    },
    /// Reconcile every gateway (or one) with the database now.
    Reconcile { gateway: Option<String> },
    /// List the gateways: heartbeat state (up/down, since when), slots,
    /// tunnels up, draining.
    Gateways,
    /// Stop giving new tunnels to a gateway (existing ones stay).
    DrainGateway {
        name: String,
        /// Accept new tunnels again (same as undrain-gateway).
        #[arg(long)]
        undo: bool,
    },
    /// Let a drained gateway take new tunnels again.
    UndrainGateway { name: String },
    /// List re-installations waiting for an operator's approval (routers
    /// that asked to be installed again without proof of Secret(ID2)).
    Reinstalls,
    /// Approve the pending re-installation of a router (the UI's approve
    /// button; audited): its next installation notice without proof is
    /// accepted and hands it new keys.
    ApproveReinstall { terminal_id: String },
    /// Print a router's own maintenance password (it is a secret; each
    /// reading is in the audit log).
    MaintenancePassword { terminal_id: String },
    /// Print the audit log, newest first (filters combine).
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        terminal: Option<String>,
        /// Only events at or after this Unix time.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Print a router's factory Secret(ID) (hex) for its `routerd.toml`
    /// `factory_secret`: HMAC-SHA256(factory master key, terminal ID). For
    /// the factory that provisions routers; it is a secret.
    FactorySecret { terminal_id: String },
    /// Print a fresh random 32-byte key (64 hex digits, from the system's
    /// random generator) for `master_key` or an `api_key`. Needs no
    /// configuration.
    GenSecret,
    /// Print an OpenAPI document generated from the protocol types:
    /// centerd's router/gateway API (what it serves at /openapi.json), or
    /// with --router-commands routerd's command API that centerd calls.
    Openapi {
        #[arg(long)]
        router_commands: bool,
    },
    /// Replace every placeholder `@SECRET:NAME@` in the files with a fresh
    /// key, the same one for the same NAME in every file (the center image's
    /// first boot runs it on centerd.toml, gatewayd.toml and the maintenance
    /// password file). Prints the names filled, never the keys. Needs no
    /// configuration.
    FillSecrets {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Manage the operator UI's named accounts and their roles (admin,
    /// operator, viewer). Changes are audited under the user running it.
    Operator {
        #[command(subcommand)]
        cmd: OperatorCmd,
    },
    /// Read a password from standard input and print its hash for
    /// `operators.password_hashes`.
    HashPassword {
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

/// `centerd operator ...`: see [`crate::admin::operator`].
#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Add an account. The password is the first line of standard input
    /// or of --password-file (never an argument: argv is visible to every
    /// user of the machine); at least 10 characters.
    Add {
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PBKDF2 iterations of the password's hash.
        #[arg(long, default_value_t = DEFAULT_ITERATIONS, hide = true)]
        iterations: u32,
    },
    /// List the accounts: name, role, state, creation time.
    List,
    /// Disable an account: it cannot log in, its sessions end at once.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
    /// Change an account's role (its sessions get it at their next request).
    SetRole { name: String, role: String },
    /// Remove an account's second factor (TOTP and recovery codes), for a
    /// lost phone: its next login enrols afresh if its role requires one.
    TotpReset { name: String },
}
