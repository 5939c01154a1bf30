//! A fault-injecting TCP proxy for the fault tests: one loopback port in
//! front of a daemon, whose behaviour a test changes at runtime.
//!
//! - [`Proxy::pass`]: forward every byte as it comes (the start state).
//! - [`Proxy::delay`]: forward, but hold every chunk read (either
//!   direction) for a while first.
//! - [`Proxy::cut`]: stop accepting (new connections are refused: the port
//!   is closed) and close every open connection (FIN) — a daemon going away
//!   cleanly. [`Proxy::pass`] opens the same port again.
//! - [`Proxy::reset`]: abort every open connection with a TCP RST
//!   (`SO_LINGER` 0, then close) on both sides; new connections are still
//!   accepted.
//! - [`Proxy::black_hole`]: new connections are accepted and never
//!   forwarded; open ones stop carrying bytes. What a client sends is read
//!   and discarded, nothing ever comes back, nothing is closed — a network
//!   that silently drops packets, or a firewall/NAT that forgot the flow. A
//!   black-holed connection stays so even after [`Proxy::pass`] (its flow
//!   is gone); only new connections are forwarded again.
//!
//! Dropping the `Proxy` closes its port and every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    BlackHole,
}

/// The proxy's state; every task follows it through a `watch` channel.
/// The counters are "events": a connection acts when one moves past the
/// value it saw when it opened.
#[derive(Clone, Copy, Debug)]
struct Control {
    mode: Mode,
    delay: Duration,
    cuts: u64,
    resets: u64,
    holes: u64,
}

/// A running proxy (see the module docs).
pub struct Proxy {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    forwarded: AtomicU64,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::start_on(listener, upstream)
    }

    /// Forwards what `listener` accepts to `upstream`.
    pub fn start_on(listener: TcpListener, upstream: SocketAddr) -> Proxy {
        let addr = listener.local_addr().expect("bound");
        let (control, rx) = watch::channel(Control {
            mode: Mode::Pass,
            delay: Duration::ZERO,
            cuts: 0,
            resets: 0,
            holes: 0,
        });
        let stats = Arc::new(Stats::default());
        tokio::spawn(accept_loop(listener, addr, upstream, rx, stats.clone()));
        Proxy {
            addr,
            control,
            stats,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards without delay (and accepts again after a cut).
    pub fn pass(&self) {
        self.control.send_modify(|c| {
            c.mode = Mode::Pass;
            c.delay = Duration::ZERO;
        });
    }

    /// Forwards, holding each chunk `d` first (and accepts again after a cut).
    pub fn delay(&self, d: Duration) {
        self.control.send_modify(|c| {
            c.mode = Mode::Pass;
            c.delay = d;
        });
    }

    /// Refuses new connections and closes the open ones (FIN).
    pub fn cut(&self) {
        self.control.send_modify(|c| {
            c.mode = Mode::Cut;
            c.cuts += 1;
        });
    }

    /// Aborts every open connection with a RST, both ways.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.resets += 1);
    }

    /// Accepts and never forwards; open connections go silent for good.
    pub fn black_hole(&self) {
        self.control.send_modify(|c| {
            c.mode = Mode::BlackHole;
            c.holes += 1;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now (forwarding or black-holed).
    pub fn open(&self) -> u64 {
        self.stats.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both ways.
    pub fn forwarded(&self) -> u64 {
        self.stats.forwarded.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    stats: Arc<Stats>,
) {
    let mut listener = Some(listener);
    loop {
        let mode = control.borrow_and_update().mode;
        match (mode, &listener) {
            // Cut: close the port, so connecting is refused.
            (Mode::Cut, Some(_)) => listener = None,
            (Mode::Pass | Mode::BlackHole, None) => {
                // Open the same port again (a just-closed loopback port is
                // free again at once; retry briefly all the same).
                for _ in 0..100 {
                    if let Ok(l) = TcpListener::bind(addr).await {
                        listener = Some(l);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(listener.is_some(), "proxy cannot reopen {addr}");
            }
            _ => {}
        }
        match &listener {
            None => {
                if control.changed().await.is_err() {
                    return;
                }
            }
            Some(l) => tokio::select! {
                changed = control.changed() => if changed.is_err() {
                    return;
                },
                accepted = l.accept() => if let Ok((client, _)) = accepted {
                    let _ = client.set_nodelay(true);
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(client, upstream, control.clone(), stats.clone()));
                },
            },
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    stats: Arc<Stats>,
) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(stats.clone());
    let seen = *control.borrow_and_update();
    if seen.mode == Mode::BlackHole {
        return swallow(client, control).await;
    }
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        // Nothing behind the proxy: the client sees its connection reset,
        // as it would connecting to a closed port.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let action = {
        let (up, down) = (control.clone(), control.clone());
        let forward = async {
            tokio::join!(
                pump(&mut cr, &mut uw, up, &stats),
                pump(&mut ur, &mut cw, down, &stats)
            )
        };
        let event = async {
            loop {
                if control.changed().await.is_err() {
                    return None; // the proxy was dropped
                }
                let now = *control.borrow_and_update();
                if now.resets != seen.resets {
                    return Some(Action::Reset);
                }
                if now.cuts != seen.cuts {
                    return Some(Action::Cut);
                }
                if now.holes != seen.holes {
                    return Some(Action::Hole);
                }
            }
        };
        tokio::select! {
            _ = forward => return, // both directions ended
            a = event => a,
        }
    };
    let client = cr.reunite(cw).expect("same stream");
    let upstream = ur.reunite(uw).expect("same stream");
    match action {
        None | Some(Action::Cut) => {
            // FIN both ways (a peer with unread bytes may still see a RST:
            // that is the kernel's rule on close).
            for mut s in [client, upstream] {
                let _ = s.shutdown().await;
            }
        }
        Some(Action::Reset) => {
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
        }
        Some(Action::Hole) => {
            // The daemon behind loses the flow (it sees a clean close); the
            // client is left talking to nobody.
            drop(upstream);
            swallow(client, control).await;
        }
    }
}

enum Action {
    Cut,
    Reset,
    Hole,
}

/// Reads and discards what the client sends until it closes, the proxy
/// is dropped, or a reset/cut closes it.
async fn swallow(client: TcpStream, mut control: watch::Receiver<Control>) {
    let seen = *control.borrow_and_update();
    let (mut r, w) = client.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let action = loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *control.borrow_and_update();
                if now.resets != seen.resets {
                    break Action::Reset;
                }
                if now.cuts != seen.cuts {
                    break Action::Cut;
                }
            }
        }
    };
    let client = r.reunite(w).expect("same stream");
    if let Action::Reset = action {
        let _ = client.set_zero_linger();
    }
}

/// Copies `from` to `to`, each chunk held for the current delay; on EOF
/// passes the half-close on.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    control: watch::Receiver<Control>,
    stats: &Stats,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = control.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        stats.forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::time::Instant;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut out = vec![0u8; msg.len()];
        s.read_exact(&mut out).await?;
        Ok(out)
    }

    /// Reads until the peer closes: Ok(()) for a FIN, the error for a RST.
    async fn closed(s: &mut TcpStream) -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Err(_) => panic!("the connection was not closed within 5 s"),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        let p = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        for i in 0..10u8 {
            let msg = vec![i; 1000 * (i as usize + 1)];
            assert_eq!(round_trip(&mut s, &msg).await.unwrap(), msg);
        }
        assert_eq!((p.accepted(), p.open()), (1, 1));
        assert_eq!(p.forwarded(), 2 * (1..=10).sum::<u64>() * 1000);
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), async {
            while p.open() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a closed client closes its proxied connection");
    }

    #[tokio::test]
    async fn delays_each_chunk_then_passes_again() {
        let p = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        p.delay(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").await.unwrap(), b"slow");
        // Held once each way.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        p.pass();
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, b"fast").await.unwrap(), b"fast");
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn cut_closes_connections_and_refuses_new_ones_until_pass() {
        let p = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s, b"hi").await.unwrap();
        p.cut();
        closed(&mut s).await.expect("a clean close (FIN)");
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match TcpStream::connect(p.addr()).await {
                    Err(e) => break e,
                    // The listener may close a moment after the cut.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("connecting is refused after a cut");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        p.pass();
        let mut s = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(s) = TcpStream::connect(p.addr()).await {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the same port accepts again after pass");
        assert_eq!(round_trip(&mut s, b"back").await.unwrap(), b"back");
    }

    #[tokio::test]
    async fn reset_aborts_open_connections_and_keeps_accepting() {
        let p = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s, b"hi").await.unwrap();
        p.reset();
        let e = closed(&mut s).await.expect_err("a RST, not a clean close");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn black_hole_swallows_for_good_and_only_new_connections_recover() {
        let p = Proxy::start(echo().await).await;
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut old, b"hi").await.unwrap();
        p.black_hole();
        let mut new = TcpStream::connect(p.addr()).await.expect("still accepted");
        for s in [&mut old, &mut new] {
            let r = tokio::time::timeout(Duration::from_millis(300), round_trip(s, b"lost")).await;
            assert!(r.is_err(), "nothing comes back through a black hole");
        }
        p.pass();
        let r = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut old, b"x")).await;
        assert!(r.is_err(), "a black-holed connection stays dead after pass");
        let mut fresh = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"ok").await.unwrap(), b"ok");
        // The dead ones are still open (nobody told the client) until reset.
        assert_eq!(p.open(), 3);
        p.reset();
        let e = closed(&mut old).await.expect_err("reset");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn nothing_behind_the_proxy_resets_the_client() {
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let p = Proxy::start(gone).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed(&mut s).await.is_err());
    }
}
