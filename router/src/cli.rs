//! The command line: `routerd [--config FILE] [--json] [COMMAND]`.
//!
//! Exit codes (stable, for scripts):
//! - 0: done
//! - 1: the operation failed (center refused or unreachable, kernel error)
//! - 2: usage or configuration error (clap uses 2 for usage too)
//! - 3: the running daemon could not be reached

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_NO_DAEMON: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "routerd",
    version,
    about = "The home router daemon of the VPNNAT remote maintenance system",
    long_about = "The home router daemon of the VPNNAT remote maintenance system: router side of \
every exchange with the maintenance center, local web page, server part for the center's \
commands, and init duties when it runs as PID 1.\n\nExit codes: 0 done, 1 operation failed, \
2 usage or configuration error, 3 daemon not reachable."
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG_PATH, value_name = "FILE")]
    pub config: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default). As PID 1 it also does init duties.
    Run {
        /// Keep kernel state in memory instead of programming XFRM and
        /// nftables (for trying the daemon without root).
        #[arg(long)]
        fake_datapath: bool,
    },
    /// Ask for maintenance from the command line (through the running daemon).
    Request {
        /// Claimant's name.
        #[arg(long)]
        name: String,
        /// Claimant level: general or administrator.
        #[arg(long, default_value = "general")]
        level: String,
        /// low, normal, high or emergency.
        #[arg(long, default_value = "normal")]
        urgency: String,
        /// Claimant's phone number.
        #[arg(long)]
        phone: String,
        /// What is wrong.
        #[arg(long)]
        content: String,
        /// Extension terminal names (one or more).
        #[arg(required = true, value_name = "TERMINAL")]
        terminals: Vec<String>,
        /// The daemon's local page address (default: web_ui.listen).
        #[arg(long, value_name = "ADDR")]
        daemon: Option<SocketAddr>,
    },
    /// Press the button: the preset maintenance request of [button].
    Button {
        #[arg(long, value_name = "ADDR")]
        daemon: Option<SocketAddr>,
    },
    /// Send the installation notice now (through the running daemon).
    Install {
        #[arg(long, value_name = "ADDR")]
        daemon: Option<SocketAddr>,
    },
    /// Show the host table: known hosts and their VPNNAT grants.
    Hosts,
    /// Show installation, gateway, grants and requests.
    Status,
    /// Check the configuration file and exit.
    CheckConfig,
}

/// Where the CLI reaches the daemon: the page's address, with a wildcard
/// listen address replaced by loopback.
pub fn daemon_addr(listen: SocketAddr, overridden: Option<SocketAddr>) -> SocketAddr {
    let a = overridden.unwrap_or(listen);
    if a.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_to_run_with_the_default_config() {
        let c = Cli::try_parse_from(["routerd"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.config, PathBuf::from("/etc/routerd.toml"));
    }

    #[test]
    fn request_takes_terminals() {
        let c = Cli::try_parse_from([
            "routerd",
            "--json",
            "request",
            "--name",
            "Taro",
            "--phone",
            "123",
            "--content",
            "x",
            "pc1",
            "nas",
            "-c",
            "/tmp/r.toml",
        ])
        .unwrap();
        assert!(c.json);
        assert_eq!(c.config, PathBuf::from("/tmp/r.toml"));
        match c.command {
            Some(Command::Request { terminals, level, .. }) => {
                assert_eq!(terminals, ["pc1", "nas"]);
                assert_eq!(level, "general");
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["routerd", "request", "--name", "a", "--phone", "1", "--content", "x"]).is_err());
    }

    #[test]
    fn wildcard_daemon_address_becomes_loopback() {
        let a = daemon_addr("0.0.0.0:80".parse().unwrap(), None);
        assert_eq!(a, "127.0.0.1:80".parse().unwrap());
    }
}
