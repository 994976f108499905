//! What `centerd` and `gatewayd` share on their command line.

use std::process::ExitCode;

/// Exit status for usage and configuration errors (the systemd units do not
/// restart on it).
pub const EXIT_USAGE: u8 = 2;

/// Parses the command line; on `--help`/`--version` or a usage error prints
/// clap's text and returns the exit code to end with (0 for help and
/// version, [`EXIT_USAGE`] for an error).
pub fn parse<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}
