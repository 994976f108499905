//! `vpnnat-probe serve|connect|multi|forward`: a tiny TCP service, client
//! and relay for the VM tests. The server tells each client who it saw; the client reports whom
//! it reached. Bounded in time: the client gives up after --timeout-ms, the
//! server after --max-conns connections or --lifetime-secs.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "vpnnat-probe", version, about = "TCP probe for the VPNNAT test scenarios")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer each connection with `TOKEN <token> PEER <addr> LOCAL <addr>`.
    Serve {
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: SocketAddr,
        #[arg(long)]
        token: String,
        /// Append one line per connection (the peer address) to this file.
        #[arg(long)]
        log: Option<std::path::PathBuf>,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        lifetime_secs: u64,
    },
    /// Connect, print the server's line and the address reached.
    Connect {
        addr: SocketAddr,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Connect to every ADDR at the same time (one thread each) and keep
    /// every connection open until all have answered or failed, so the
    /// answers prove simultaneous reachability. Prints one line per ADDR:
    /// `ADDR TOKEN ...` or `ADDR NONE <why>`, then `OPEN_AT_ONCE n`. Exit
    /// status 0 whatever was reached (the caller judges the lines).
    Multi {
        addrs: Vec<SocketAddr>,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// A TCP connect is enough (`ADDR CONNECTED`): for services that
        /// say nothing first (HTTP), and to ask "does anything answer here"
        /// from one process instead of one shell per address (a loaded
        /// emulated VM starts dozens of shells slower than a timeout).
        #[arg(long)]
        connect_only: bool,
    },
    /// The host's end of a long conversation (NAT rebinding trial):
    /// echo every line, and say `tick <n>` every --tick-ms (0: never).
    Chat {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 200)]
        tick_ms: u64,
        #[arg(long, default_value_t = 600)]
        lifetime_secs: u64,
    },
    /// The operator's end: a line every --interval-ms for --secs, then up
    /// to --grace-secs for the last echoes. Prints `ECHO n sent_ms
    /// recv_ms` per echo, then `SENT n ECHOED m MAX_SILENCE_MS g
    /// SILENCE_END_MS t`. Exit status 1 if not every line came back.
    Talk {
        addr: SocketAddr,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 90)]
        grace_secs: u64,
    },
    /// Relay every TCP connection accepted on LISTEN to TO (a thread per
    /// direction), until --lifetime-secs. The end-to-end scenario runs it in
    /// the operator's namespace so that the host's Chromium (through QEMU's
    /// port forward) reaches the operator UI from the operator's address.
    Forward {
        listen: SocketAddr,
        to: SocketAddr,
        #[arg(long, default_value_t = 3600)]
        lifetime_secs: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpnnat-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve {
            listen,
            token,
            log,
            lifetime_secs,
        } => {
            let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
            l.set_nonblocking(true)?;
            let end = Instant::now() + Duration::from_secs(lifetime_secs);
            while Instant::now() < end {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let local = s.local_addr()?;
                        let _ = s.write_all(vpnnat_testkit::answer_line(&token, peer, local).as_bytes());
                        if let Some(p) = &log {
                            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
                            writeln!(f, "{peer}")?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e).context("accept"),
                }
            }
            Ok(())
        }
        Cmd::Connect { addr, timeout_ms } => {
            let t = Duration::from_millis(timeout_ms);
            let s = TcpStream::connect_timeout(&addr, t).with_context(|| format!("connect {addr}"))?;
            s.set_read_timeout(Some(t))?;
            let peer = s.peer_addr()?;
            let mut line = String::new();
            BufReader::new(&s)
                .read_line(&mut line)
                .with_context(|| format!("read from {addr}"))?;
            anyhow::ensure!(!line.is_empty(), "{addr} closed without answering");
            println!("{} CLIENT_PEER {peer}", line.trim_end());
            Ok(())
        }
        Cmd::Multi {
            addrs,
            timeout_ms,
            connect_only,
        } => {
            let t = Duration::from_millis(timeout_ms);
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(addrs.len()));
            let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let workers: Vec<_> = addrs
                .iter()
                .map(|&addr| {
                    let barrier = barrier.clone();
                    let open = open.clone();
                    std::thread::spawn(move || {
                        let res = if connect_only {
                            TcpStream::connect_timeout(&addr, t)
                                .map(|s| ("CONNECTED".to_owned(), Some(s)))
                                .with_context(|| format!("connect {addr}"))
                        } else {
                            reach(addr, t)
                        };
                        if let Ok((_, Some(_))) = &res {
                            open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // Hold the connection until every other one is done.
                        barrier.wait();
                        match res {
                            Ok((line, _stream)) => format!("{addr} {line}"),
                            Err(e) => format!("{addr} NONE {e:#}"),
                        }
                    })
                })
                .collect();
            for w in workers {
                let line = w.join().map_err(|_| anyhow::anyhow!("worker thread panicked"))?;
                println!("{line}");
            }
            println!("OPEN_AT_ONCE {}", open.load(std::sync::atomic::Ordering::SeqCst));
            Ok(())
        }
        Cmd::Forward {
            listen,
            to,
            lifetime_secs,
        } => forward(listen, to, Duration::from_secs(lifetime_secs)),
        Cmd::Chat {
            listen,
            tick_ms,
            lifetime_secs,
        } => vpnnat_testkit::chatter::serve(
            listen,
            (tick_ms > 0).then(|| Duration::from_millis(tick_ms)),
            Duration::from_secs(lifetime_secs),
        ),
        Cmd::Talk {
            addr,
            interval_ms,
            secs,
            grace_secs,
        } => {
            let t = vpnnat_testkit::chatter::talk(
                addr,
                Duration::from_millis(interval_ms),
                Duration::from_secs(secs),
                Duration::from_secs(grace_secs),
            )?;
            for (n, sent, at) in &t.echo_at {
                println!("ECHO {n} {sent} {at}");
            }
            println!(
                "SENT {} ECHOED {} MAX_SILENCE_MS {} SILENCE_END_MS {}",
                t.sent, t.echoed, t.max_silence_ms, t.silence_end
            );
            anyhow::ensure!(t.echoed == t.sent, "{} of {} lines came back", t.echoed, t.sent);
            Ok(())
        }
    }
}

/// Accepts on `listen` and relays each connection to `to` until `lifetime`
/// has passed (connections still open then are cut with the process).
fn forward(listen: SocketAddr, to: SocketAddr, lifetime: Duration) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + lifetime;
    while Instant::now() < end {
        match l.accept() {
            Ok((client, peer)) => {
                client.set_nonblocking(false)?;
                std::thread::spawn(move || {
                    if let Err(e) = relay(client, to) {
                        eprintln!("vpnnat-probe forward: {peer} -> {to}: {e:#}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(())
}

/// Copies both directions between `client` and a new connection to `to`;
/// each side's end of stream is passed on as a half close.
fn relay(client: TcpStream, to: SocketAddr) -> Result<()> {
    let server = TcpStream::connect_timeout(&to, Duration::from_secs(10)).with_context(|| format!("connect {to}"))?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
    upstream.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))?;
    Ok(())
}

/// Connects, reads the server's line and returns it with the still-open
/// stream (a server that already closed gives `None`).
fn reach(addr: SocketAddr, t: Duration) -> Result<(String, Option<TcpStream>)> {
    let s = TcpStream::connect_timeout(&addr, t).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(t))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .with_context(|| format!("read from {addr}"))?;
    anyhow::ensure!(!line.is_empty(), "{addr} closed without answering");
    Ok((line.trim_end().to_owned(), Some(s)))
}
