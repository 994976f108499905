//! A long-lived TCP conversation for the NAT rebinding trial (issue 17
//! item 4): the operator's side sends a numbered line at a fixed interval
//! and the host echoes each one, while the host also speaks on its own (a
//! "tick" per interval, like a remote desktop that keeps drawing). The
//! client times every echo, so the scenario sees how long the tunnel was
//! silent around the moment the NAT forgot its mapping, and whether every
//! line came back over the same connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Milliseconds since the epoch (the scenario compares with `date`).
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Serves conversations on `listen` until `lifetime` has passed: echoes
/// every line, and writes `tick <n>` every `tick` if set.
pub fn serve(listen: SocketAddr, tick: Option<Duration>, lifetime: Duration) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + lifetime;
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                std::thread::spawn(move || {
                    let _ = converse(s, tick);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(())
}

fn converse(s: TcpStream, tick: Option<Duration>) -> Result<()> {
    if let Some(every) = tick {
        let mut w = s.try_clone()?;
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                std::thread::sleep(every);
                n += 1;
                if w.write_all(format!("tick {n}\n").as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    let mut w = s.try_clone()?;
    for line in BufReader::new(s).lines() {
        let line = line?;
        w.write_all(format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// What [`talk`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Talk {
    pub sent: u64,
    pub echoed: u64,
    /// Receive time (unix ms) of each echo, in order.
    pub echo_at: Vec<(u64, u128, u128)>,
    /// The longest time without any line from the host (ms).
    pub max_silence_ms: u128,
    /// When that silence ended (unix ms).
    pub silence_end: u128,
}

/// Talks to `addr` for `duration`: a line `seq <n> <unix ms>` every
/// `interval`, then waits up to `grace` for the remaining echoes.
pub fn talk(addr: SocketAddr, interval: Duration, duration: Duration, grace: Duration) -> Result<Talk> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect {addr}"))?;
    let (tx, rx) = mpsc::channel::<(String, u128)>();
    let r = s.try_clone()?;
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send((line, unix_ms())).is_err() {
                return;
            }
        }
    });
    let mut w = s;
    let mut t = Talk::default();
    let mut last_heard = unix_ms();
    let mut hear = |t: &mut Talk, line: &str, at: u128| {
        let silence = at.saturating_sub(last_heard);
        if silence > t.max_silence_ms {
            t.max_silence_ms = silence;
            t.silence_end = at;
        }
        last_heard = at;
        let mut it = line.split_whitespace();
        if it.next() == Some("seq") {
            let n = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let sent = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            t.echoed += 1;
            t.echo_at.push((n, sent, at));
        }
    };
    let end = Instant::now() + duration;
    while Instant::now() < end {
        t.sent += 1;
        w.write_all(format!("seq {} {}\n", t.sent, unix_ms()).as_bytes())
            .context("send")?;
        let next = Instant::now() + interval;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((line, at)) => hear(&mut t, &line, at),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("{addr} closed the connection"),
            }
        }
    }
    let until = Instant::now() + grace;
    while t.echoed < t.sent {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok((line, at)) => hear(&mut t, &line, at),
            Err(_) => break,
        }
    }
    Ok(t)
}
