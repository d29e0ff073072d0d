//! A TCP proxy inside the tests: one node's traffic to NATS or PostgreSQL goes through it,
//! so a test can pass it, cut it (every connection closed, new ones refused) or black-hole
//! it (connections stay open, nothing gets through either way), at any moment.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Cut,
    BlackHole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.mode.send(Mode::Cut);
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy on a free loopback port to `target`, passing traffic.
    pub async fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                let m = *rx.borrow();
                if m == Mode::Cut {
                    continue;
                }
                tokio::spawn(serve(inbound, target, rx.clone()));
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, m: Mode) {
        let _ = self.mode.send(m);
    }
}

async fn serve(inbound: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::BlackHole {
        // Accepted, never connected: held until cut.
        hold(inbound, mode).await;
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    let a = tokio::spawn(pump(ri, wo, mode.clone()));
    let b = tokio::spawn(pump(ro, wi, mode));
    let _ = tokio::join!(a, b);
}

async fn hold(mut s: TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16384];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            c = mode.changed() => if c.is_err() || *mode.borrow() == Mode::Cut { return },
        }
    }
}

/// Copies one direction while passing; discards while black-holed; ends when cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *mode.borrow() == Mode::Pass && to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            c = mode.changed() => if c.is_err() || *mode.borrow() == Mode::Cut { return },
        }
    }
}

#[tokio::test]
async fn the_proxy_passes_cuts_and_black_holes() {
    // An echo server as the target.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let p = Proxy::start(target).await;
    let mut c = TcpStream::connect(p.addr).await.expect("connect");
    let mut b = [0u8; 4];
    c.write_all(b"ping").await.expect("write");
    c.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"ping");
    p.set(Mode::BlackHole);
    c.write_all(b"lost").await.expect("write");
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), c.read(&mut b)).await;
    assert!(quiet.is_err(), "nothing comes back while black-holed");
    p.set(Mode::Cut);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "cut: the connection is closed");
    p.set(Mode::Pass);
    let mut c = TcpStream::connect(p.addr).await.expect("connect again");
    c.write_all(b"back").await.expect("write");
    c.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"back");
}
