//! A relay the test controls: open (forward), closed (refuse and cut), or blackholed
//! (accept and hold, forwarding nothing): for reconnect ordering and partitions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    Closed,
    Blackhole,
}

pub struct Proxy {
    gate: Arc<watch::Sender<Gate>>,
    pub listen: String,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    /// Unix socket at `listen` forwarding to the Unix socket `target`.
    pub fn unix(listen: PathBuf, target: PathBuf) -> Self {
        let listener = Arc::new(UnixListener::bind(&listen).unwrap());
        Self::start(format!("ipc://{}", listen.display()), move |gate| {
            let (listener, target) = (listener.clone(), target.clone());
            async move {
                let (client, _) = listener.accept().await?;
                forward(client, UnixStream::connect(target), gate);
                Ok(())
            }
        })
    }

    /// TCP on loopback (port chosen by the OS) forwarding to `target`.
    pub async fn tcp(target: String) -> Self {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let listen = format!("tcp://{}", listener.local_addr().unwrap());
        Self::start(listen, move |gate| {
            let (listener, target) = (listener.clone(), target.clone());
            async move {
                let (client, _) = listener.accept().await?;
                forward(client, tokio::net::TcpStream::connect(target), gate);
                Ok(())
            }
        })
    }

    /// Runs `accept_one` in a loop, each accepted client forwarded under the gate.
    fn start<F, Fut>(listen: String, accept_one: F) -> Self
    where
        F: Fn(watch::Receiver<Gate>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send,
    {
        let (gate, _) = watch::channel(Gate::Open);
        let gate = Arc::new(gate);
        let g = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let _ = accept_one(g.subscribe()).await;
            }
        });
        Self { gate, listen, task }
    }
}

/// Connects to the target and pipes, unless the gate is closed.
fn forward<C, S, F>(client: C, connect: F, gate: watch::Receiver<Gate>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    tokio::spawn(async move {
        if *gate.borrow() == Gate::Closed {
            return;
        }
        if let Ok(server) = connect.await {
            pipe(client, server, gate).await;
        }
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards until either side closes or the gate closes; holds without forwarding while
/// blackholed.
async fn pipe<A, B>(a: A, b: B, mut gate: watch::Receiver<Gate>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 65536];
    let mut bbuf = vec![0u8; 65536];
    loop {
        let state = *gate.borrow_and_update();
        match state {
            Gate::Closed => return,
            Gate::Blackhole => {
                if gate.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Gate::Open => {}
        }
        tokio::select! {
            r = ar.read(&mut abuf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if bw.write_all(&abuf[..n]).await.is_err() { return },
            },
            r = br.read(&mut bbuf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if aw.write_all(&bbuf[..n]).await.is_err() { return },
            },
            _ = gate.changed() => {}
        }
    }
}
