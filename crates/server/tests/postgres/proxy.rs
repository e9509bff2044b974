//! A TCP proxy in front of PostgreSQL that a test can cut and restore: the database "goes
//! away" for Ferry without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    down: AtomicBool,
    /// Cancelled to close every connection piped so far.
    links: Mutex<CancellationToken>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            down: AtomicBool::new(false),
            links: Mutex::new(CancellationToken::new()),
        });
        let task = tokio::spawn(accept(listener, upstream, state.clone()));
        Proxy { addr, state, task }
    }

    /// Closes every connection and refuses new ones, as a stopped database would.
    pub(crate) fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        let mut links = self.state.links.lock().unwrap();
        links.cancel();
        *links = CancellationToken::new();
    }

    /// Lets connections through again.
    pub(crate) fn restore(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.links.lock().unwrap().cancel();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if state.down.load(Ordering::SeqCst) {
            continue; // Dropping the socket closes it at once.
        }
        let closed = state.links.lock().unwrap().clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                () = closed.cancelled() => {}
            }
        });
    }
}
