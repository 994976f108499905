//! The command line: `routerd [--config FILE] [--json] [COMMAND]`.
//!
//! Exit codes (stable, for scripts):
//! - 0: done
//! - 1: the operation failed (center refused or unreachable, kernel error)
//! - 2: usage or configuration error (also for a bad command line)
//! - 3: the running daemon could not be reached

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::DEFAULT_CONFIG_PATH;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_NO_DAEMON: u8 = 3;

/// `routerd --help`. Written out rather than generated: clap's parser and
/// help renderer cost routerd 173,216 bytes of its 4,000,000-byte budget
/// (4,055,472 with clap, 3,882,256 with lexopt: router/README.md), and
/// this command line is small and stable.
pub const HELP: &str = "\
The home router daemon of the VPNNAT remote maintenance system: router side of
every exchange with the maintenance center, local web page, server part for the
center's commands, and init duties when it runs as PID 1.

Usage: routerd [OPTIONS] [COMMAND]

Commands:
  run           Run the daemon (the default). As PID 1 it also does init duties.
                  --fake-datapath  keep kernel state in memory instead of
                                   programming XFRM and nftables (no root needed)
  request       Ask for maintenance (through the running daemon):
                  --name NAME --phone PHONE --content TEXT TERMINAL...
                  [--level general|administrator] [--urgency low|normal|high|emergency]
                  [--daemon ADDR]
                TERMINAL: a LAN host's name, or the router itself: server-part
                (its pages and center port) and router-part (its router part)
  button        Press the button: the preset maintenance request of [button]
                  [--daemon ADDR]
  end           End maintenance request N of this router (the site owner's end,
                through the running daemon): end N [--daemon ADDR]
  install       Send the installation notice now [--daemon ADDR]
  hosts         Show the host table: known hosts (and the router's own two
                parts) and their VPNNAT grants
  status        Show installation, gateway, grants and requests
  check-config  Check the configuration file and exit

Options (before or after the command):
  -c, --config FILE  Configuration file (TOML) [default: /etc/routerd.toml]
      --json         Print machine-readable JSON instead of text
  -h, --help         Print help
  -V, --version      Print version

--daemon ADDR: the daemon's local page address (default: web_ui.listen).

Exit codes: 0 done, 1 operation failed, 2 usage or configuration error,
3 daemon not reachable.
";

#[derive(Debug)]
pub struct Cli {
    /// Configuration file (TOML).
    pub config: PathBuf,
    /// Print machine-readable JSON instead of text.
    pub json: bool,
    pub command: Option<Command>,
}

#[derive(Debug)]
pub enum Command {
    /// Run the daemon (the default). As PID 1 it also does init duties.
    Run {
        /// Keep kernel state in memory instead of programming XFRM and
        /// nftables (for trying the daemon without root).
        fake_datapath: bool,
    },
    /// Ask for maintenance from the command line (through the running daemon).
    Request {
        /// Claimant's name.
        name: String,
        /// Claimant level: general or administrator.
        level: String,
        /// low, normal, high or emergency.
        urgency: String,
        /// Claimant's phone number.
        phone: String,
        /// What is wrong.
        content: String,
        /// Extension terminal names (one or more).
        terminals: Vec<String>,
        /// The daemon's local page address (default: web_ui.listen).
        daemon: Option<SocketAddr>,
    },
    /// Press the button: the preset maintenance request of [button].
    Button { daemon: Option<SocketAddr> },
    /// Send the installation notice now (through the running daemon).
    Install { daemon: Option<SocketAddr> },
    /// The site owner ends request `number` (issue 19, item 7; through
    /// the running daemon).
    End { number: u64, daemon: Option<SocketAddr> },
    /// Show the host table: known hosts and their VPNNAT grants.
    Hosts,
    /// Show installation, gateway, grants and requests.
    Status,
    /// Check the configuration file and exit.
    CheckConfig,
}

/// Why the command line did not give a [`Cli`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--help`: print [`HELP`] to stdout, exit 0.
    #[error("help asked for")]
    Help,
    /// `--version`: print the version to stdout, exit 0.
    #[error("version asked for")]
    Version,
    /// A usage error: print it with a hint to stderr, exit 2.
    #[error("{0}")]
    Usage(String),
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// The command's own options, gathered before they are checked.
#[derive(Default)]
struct Gathered {
    fake_datapath: bool,
    name: Option<String>,
    level: Option<String>,
    urgency: Option<String>,
    phone: Option<String>,
    content: Option<String>,
    daemon: Option<SocketAddr>,
    terminals: Vec<String>,
    number: Option<String>,
}

impl Cli {
    /// The process's command line; prints help, version or the usage error
    /// and exits (0, 0, 2) when it does not name something to do.
    pub fn parse() -> Cli {
        match Cli::try_parse_from(std::env::args_os()) {
            Ok(cli) => cli,
            Err(CliError::Help) => {
                print!("{HELP}");
                std::process::exit(i32::from(EXIT_OK));
            }
            Err(CliError::Version) => {
                println!("routerd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(i32::from(EXIT_OK));
            }
            Err(CliError::Usage(e)) => {
                eprintln!("routerd: error: {e}\n\nFor more information, try 'routerd --help'.");
                std::process::exit(i32::from(EXIT_CONFIG));
            }
        }
    }

    /// Parses `args` (the first item is the program name).
    pub fn try_parse_from<I>(args: I) -> Result<Cli, CliError>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString>,
    {
        let mut p = lexopt::Parser::from_iter(args);
        let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
        let mut json = false;
        let mut sub: Option<String> = None;
        let mut g = Gathered::default();
        while let Some(arg) = p.next()? {
            match arg {
                Short('c') | Long("config") => config = p.value()?.into(),
                Long("json") => json = true,
                Short('h') | Long("help") => return Err(CliError::Help),
                Short('V') | Long("version") => return Err(CliError::Version),
                Long("fake-datapath") if sub.as_deref() == Some("run") => g.fake_datapath = true,
                Long("daemon") if matches!(sub.as_deref(), Some("request" | "button" | "install" | "end")) => {
                    let v = p.value()?.string()?;
                    g.daemon = Some(v.parse().map_err(|_| {
                        CliError::Usage(format!(
                            "invalid value '{v}' for '--daemon <ADDR>': not an address:port"
                        ))
                    })?);
                }
                Long(o @ ("name" | "level" | "urgency" | "phone" | "content")) if sub.as_deref() == Some("request") => {
                    let o = o.to_owned();
                    let v = p.value()?.string()?;
                    let slot = match o.as_str() {
                        "name" => &mut g.name,
                        "level" => &mut g.level,
                        "urgency" => &mut g.urgency,
                        "phone" => &mut g.phone,
                        _ => &mut g.content,
                    };
                    *slot = Some(v);
                }
                Value(v) if sub.is_none() => sub = Some(v.string()?),
                Value(v) if sub.as_deref() == Some("request") => g.terminals.push(v.string()?),
                Value(v) if sub.as_deref() == Some("end") && g.number.is_none() => g.number = Some(v.string()?),
                Value(v) => {
                    return Err(CliError::Usage(format!(
                        "unexpected argument '{}'",
                        v.to_string_lossy()
                    )))
                }
                other => return Err(other.unexpected().into()),
            }
        }
        let command = match sub.as_deref() {
            None => None,
            Some(s) => Some(command(s, g)?),
        };
        Ok(Cli { config, json, command })
    }
}

/// The subcommand `name` with its gathered options, or what is missing.
fn command(name: &str, g: Gathered) -> Result<Command, CliError> {
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| CliError::Usage(format!("the following required argument was not provided: --{what}")))
    };
    Ok(match name {
        "run" => Command::Run {
            fake_datapath: g.fake_datapath,
        },
        "request" => {
            if g.terminals.is_empty() {
                return Err(CliError::Usage(
                    "the following required argument was not provided: <TERMINAL>...".into(),
                ));
            }
            Command::Request {
                name: need(g.name, "name <NAME>")?,
                level: g.level.unwrap_or_else(|| "general".into()),
                urgency: g.urgency.unwrap_or_else(|| "normal".into()),
                phone: need(g.phone, "phone <PHONE>")?,
                content: need(g.content, "content <CONTENT>")?,
                terminals: g.terminals,
                daemon: g.daemon,
            }
        }
        "button" => Command::Button { daemon: g.daemon },
        "install" => Command::Install { daemon: g.daemon },
        "end" => {
            let v = g.number.ok_or_else(|| {
                CliError::Usage("the following required argument was not provided: <N> (the acceptance number)".into())
            })?;
            let number = v
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| CliError::Usage(format!("invalid acceptance number '{v}': a positive integer")))?;
            Command::End {
                number,
                daemon: g.daemon,
            }
        }
        "hosts" => Command::Hosts,
        "status" => Command::Status,
        "check-config" => Command::CheckConfig,
        other => return Err(CliError::Usage(format!("unrecognized subcommand '{other}'"))),
    })
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

    #[test]
    fn help_and_version_are_not_commands() {
        assert!(matches!(
            Cli::try_parse_from(["routerd", "--help"]),
            Err(CliError::Help)
        ));
        assert!(matches!(
            Cli::try_parse_from(["routerd", "status", "-h"]),
            Err(CliError::Help)
        ));
        assert!(matches!(Cli::try_parse_from(["routerd", "-V"]), Err(CliError::Version)));
        for sub in [
            "run",
            "request",
            "button",
            "install",
            "end",
            "hosts",
            "status",
            "check-config",
            "--daemon",
        ] {
            assert!(HELP.contains(sub), "{sub} missing from the help");
        }
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let usage = |args: &[&str]| match Cli::try_parse_from(args.iter().copied()) {
            Err(CliError::Usage(e)) => e,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(usage(&["routerd", "frobnicate"]).contains("frobnicate"));
        assert!(usage(&["routerd", "--frobnicate"]).contains("--frobnicate"));
        assert!(usage(&["routerd", "status", "extra"]).contains("extra"));
        assert!(usage(&["routerd", "status", "--name", "x"]).contains("--name"));
        assert!(usage(&["routerd", "hosts", "--fake-datapath"]).contains("--fake-datapath"));
        assert!(usage(&["routerd", "--config"]).contains("--config"));
        assert!(usage(&["routerd", "button", "--daemon", "nowhere"]).contains("nowhere"));
        assert!(usage(&["routerd", "request", "--name", "a", "--content", "x", "pc1"]).contains("--phone"));
    }

    #[test]
    fn run_and_daemon_options() {
        let c = Cli::try_parse_from(["routerd", "run", "--fake-datapath", "--config=/x.toml"]).unwrap();
        assert_eq!(c.config, PathBuf::from("/x.toml"));
        assert!(matches!(c.command, Some(Command::Run { fake_datapath: true })));
        let c = Cli::try_parse_from(["routerd", "install", "--daemon", "127.0.0.1:8080"]).unwrap();
        assert!(matches!(c.command, Some(Command::Install { daemon: Some(a) }) if a.port() == 8080));
        let c = Cli::try_parse_from(["routerd", "check-config", "--json"]).unwrap();
        assert!(c.json && matches!(c.command, Some(Command::CheckConfig)));
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
    fn end_takes_one_acceptance_number() {
        let c = Cli::try_parse_from(["routerd", "end", "42", "--daemon", "127.0.0.1:8080"]).unwrap();
        assert!(matches!(c.command, Some(Command::End { number: 42, daemon: Some(a) }) if a.port() == 8080));
        let usage = |args: &[&str]| match Cli::try_parse_from(args.iter().copied()) {
            Err(CliError::Usage(e)) => e,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(usage(&["routerd", "end"]).contains("<N>"));
        assert!(usage(&["routerd", "end", "x"]).contains("'x'"));
        assert!(usage(&["routerd", "end", "0"]).contains("'0'"));
        assert!(usage(&["routerd", "end", "1", "2"]).contains("'2'"));
    }

    #[test]
    fn wildcard_daemon_address_becomes_loopback() {
        let a = daemon_addr("0.0.0.0:80".parse().unwrap(), None);
        assert_eq!(a, "127.0.0.1:80".parse().unwrap());
    }
}
