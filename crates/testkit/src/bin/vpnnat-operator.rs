//! `vpnnat-operator`: the maintenance operator's steps in the center's web
//! UI, done in a real headless Chromium through chromedriver (WebDriver).
//! The end-to-end scenario in the test VM uses it so that at least one
//! request is started and ended the way a person would: log in, find the
//! request's row, press the button, watch the state change.
//!
//! It starts chromedriver itself (optionally inside a chroot), or with
//! `--webdriver ADDR` uses one that already runs: in the test VM that is the
//! host's chromedriver, which `scripts/vm-test` forwards in, so Chromium runs
//! at the host's speed instead of under emulation. It talks WebDriver over
//! plain HTTP/1.1 and prints one `ok   - ...` / `FAIL - ...` line
//! per step, so a shell scenario can count them. Exit status 0 when every
//! step passed.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vpnnat_testkit::webdriver::{Browser, BrowserOptions};

/// chromedriver's log (inside the chroot when there is one).
const CHROMEDRIVER_LOG: &str = "/tmp/vpnnat-chromedriver.log";

#[derive(Parser, Debug)]
#[command(
    name = "vpnnat-operator",
    version,
    about = "The operator's steps in the center's web UI, in headless Chromium via chromedriver"
)]
struct Cli {
    /// Base URL of the operator UI, e.g. http://172.16.0.10:8443
    #[arg(long)]
    ui: String,
    /// Read the operator password from this file (first line).
    #[arg(long)]
    password_file: PathBuf,
    /// chromedriver binary (inside --chroot when given).
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    chromedriver: String,
    /// Chromium binary (inside --chroot when given).
    #[arg(long, default_value = "/usr/lib/chromium/chromium")]
    chromium: String,
    /// Run chromedriver (and so Chromium) chrooted into this directory.
    #[arg(long)]
    chroot: Option<PathBuf>,
    /// Use the chromedriver that already listens at this address (e.g.
    /// the host's, forwarded into the test VM by scripts/vm-test) instead
    /// of starting one; --chromium is then a path on that machine.
    #[arg(long, conflicts_with = "chroot")]
    webdriver: Option<std::net::SocketAddr>,
    /// TCP port for chromedriver on 127.0.0.1.
    #[arg(long, default_value_t = 9515)]
    port: u16,
    /// How long to wait for any one thing (page, element, state).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Log in (a wrong password first must be refused), check the request
    /// list shows, log out.
    Login,
    /// Log in and press "start" on request N; wait for "in progress".
    Start {
        acceptance_number: u64,
        /// Then, in the same browser session, wait until this file exists
        /// and press "end" on request N (Chromium starts slowly under
        /// emulation: one session for both steps).
        #[arg(long)]
        end_when: Option<PathBuf>,
    },
    /// Log in and press "end" on request N; wait for "ended".
    End { acceptance_number: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("FAIL - browser: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let password = std::fs::read_to_string(&cli.password_file)
        .with_context(|| format!("reading {}", cli.password_file.display()))?;
    let password = password.lines().next().unwrap_or_default().to_owned();
    let timeout = Duration::from_secs(cli.timeout_secs);
    let started = Instant::now();
    let mut options = BrowserOptions {
        chromedriver: PathBuf::from(&cli.chromedriver),
        chromium: Some(PathBuf::from(&cli.chromium)),
        chroot: cli.chroot.clone(),
        port: Some(cli.port),
        profile: Some(PathBuf::from("/tmp/vpnnat-operator-profile")),
        log: Some(PathBuf::from(CHROMEDRIVER_LOG)),
        timeout,
    };
    let b = match cli.webdriver {
        Some(driver) => {
            // A fixed profile path on a shared driver would collide with a
            // second session: the driver's own temporary profile instead.
            options.profile = None;
            Browser::attach(driver, &options)?
        }
        None => Browser::start(&options)?,
    };
    println!(
        "# browser: chromium session up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut report = Report::default();
    let base = cli.ui.trim_end_matches('/');
    b.goto(&format!("{base}/"))?;
    match &cli.step {
        Step::Login => {
            b.type_into("#password", "not the password")?;
            b.press("#login")?;
            let msg = b.text("#message")?;
            report.check("UI refuses a wrong operator password", msg == "Wrong password.", &msg);
            login(&b, &password, &mut report)?;
            b.press("#logout")?;
            let back = b.wait_for("#login").is_ok();
            report.check("UI logs the operator out", back, "no login form after logout");
        }
        Step::Start {
            acceptance_number: n,
            end_when,
        } => {
            login(&b, &password, &mut report)?;
            let row = format!("#request-{n}");
            b.wait_for(&row)?;
            let state = b.text(&format!("{row} .state"))?;
            report.check(&format!("UI shows request {n} as waiting"), state == "waiting", &state);
            b.press(&format!("#start-{n}"))?;
            let got = b.wait_text(&format!("{row} .state"), "in progress");
            report.check(
                &format!("UI start button puts request {n} in progress"),
                got.is_ok(),
                &format!("{got:?}"),
            );
            if let Some(go) = end_when {
                // Flushed so that a caller waiting for the start line sees it.
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                while !go.exists() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                end(&b, *n, &mut report)?;
            }
        }
        Step::End { acceptance_number: n } => {
            login(&b, &password, &mut report)?;
            end(&b, *n, &mut report)?;
        }
    }
    drop(b);
    Ok(report.failed == 0)
}

/// The reason the tool gives when it ends a request (the center requires
/// one, issue 20 item 6); the scenario finds it in the list.
const END_REASON: &str = "end-to-end scenario: maintenance done";

fn end(b: &Browser, n: u64, report: &mut Report) -> Result<()> {
    let row = format!("#request-{n}");
    // The end button opens the request's end form: the reason, then end.
    b.press(&format!("#end-{n}"))?;
    b.wait_for("#reason")?;
    b.type_into("#reason", END_REASON)?;
    b.press("#end-confirm")?;
    let got = b.wait_text(&format!("{row} .state"), "ended");
    report.check(
        &format!("UI end button ends request {n}"),
        got.is_ok(),
        &format!("{got:?}"),
    );
    let msg = b.text("#message").unwrap_or_default();
    println!("# browser: UI message after end: {msg}");
    let why = b.text(&format!("#end-reason-{n}")).unwrap_or_default();
    report.check(
        &format!("UI lists the reason request {n} was ended with"),
        why == format!("reason: {END_REASON}"),
        &why,
    );
    Ok(())
}

fn login(b: &Browser, password: &str, report: &mut Report) -> Result<()> {
    b.type_into("#password", password)?;
    b.press("#login")?;
    let ok = b.wait_for("#requests").is_ok();
    report.check("UI logs the operator in", ok, "no request list after login");
    if !ok {
        bail!("login failed");
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            println!("ok   - {name}");
        } else {
            self.failed += 1;
            println!("FAIL - {name}");
            println!("       | {detail}");
        }
    }
}
