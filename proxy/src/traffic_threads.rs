//! Thread-per-core traffic serving: N threads, each running its own single-threaded event
//! loop that accepts on the traffic port (one listening socket, shared: an idle thread takes
//! the next connection) and its own upstream connection pool. A request is parsed, forwarded and
//! answered on one thread, with no hand-off between worker threads; this is what nginx's
//! worker processes do. Config, health checks, the admin port and the control-plane stream
//! stay on the caller's runtime and are shared through the [`Dataplane`].

use crate::dataplane::Dataplane;
use crate::http::Forwarder;
use crate::http::gate::{TrafficGate, serve_traffic};
use crate::{Settings, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Binds the traffic address and starts `settings.traffic_threads` threads accepting on it.
/// The returned task ends when every thread has drained and stopped.
pub(crate) async fn start(
    settings: &Settings,
    dataplane: &Arc<Dataplane>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gate: Arc<TrafficGate>,
    shutdown: watch::Receiver<bool>,
    limit_state: crate::http::server::LimitState,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let n = settings.traffic_threads.max(1);
    let bind_err = |source| StartError::Bind {
        addr: settings.listen,
        source,
    };
    // Bound here, so a port in use fails the start; each thread registers its own handle of
    // the same socket with its own event loop.
    let listener = TcpListener::bind(settings.listen)
        .await
        .and_then(TcpListener::into_std)
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(anyhow::Error::from)?;
    let mut listeners = Vec::with_capacity(n);
    for _ in 1..n {
        listeners.push(listener.try_clone().map_err(bind_err)?);
    }
    listeners.push(listener);
    let mut done = Vec::with_capacity(n);
    for (i, listener) in listeners.into_iter().enumerate() {
        let forwarder = Arc::new(Forwarder::new(
            dataplane.clone(),
            settings.forwarder.clone(),
        )?);
        let acceptor = acceptor.clone();
        let gate = gate.clone();
        let shutdown = shutdown.clone();
        let drain = settings.drain_timeout;
        // One connection budget across every thread.
        let limit_state = limit_state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("keyway-traffic-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(error) => {
                        tracing::error!(%error, thread = i, "cannot start a traffic thread's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            serve_traffic(
                                l,
                                acceptor,
                                forwarder,
                                gate,
                                shutdown,
                                drain,
                                limit_state,
                            )
                            .await
                        }
                        Err(error) => {
                            tracing::error!(%error, thread = i, "cannot register the traffic listener");
                        }
                    }
                });
                let _ = tx.send(());
            })
            .map_err(anyhow::Error::from)?;
        done.push(rx);
    }
    tracing::info!(%addr, threads = n, "traffic threads serving");
    let task = tokio::spawn(async move {
        for rx in done {
            // A thread that died without reporting ends the wait as well.
            let _ = rx.await;
        }
    });
    Ok((addr, task))
}
