//! The client listener: accepts connections, gives each a session task with its own tracing
//! span, and on shutdown stops accepting and lets sessions finish their current command.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_proto::framing;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::client::ClientConn;
use super::session;
use crate::errors;
use crate::state::Shared;

/// Sends an ERR in place of the greeting and closes (in the background, bounded). Counted in
/// `sluice_errors_total` like every ERR Sluice sends.
fn refuse(shared: &Shared, stream: tokio::net::TcpStream, err: sluice_proto::err::ErrPacket) {
    shared.metrics.errors.record(err.code);
    tokio::spawn(async move {
        let mut out = bytes::BytesMut::new();
        framing::write_packet(&mut out, 0, &err.encode_pre_handshake());
        let mut stream = stream;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
    });
}

fn shared_abort(shared: &Shared, id: u32, h: tokio::task::AbortHandle) {
    shared.sessions.set_abort(id, h);
}

/// Accepts clients until shutdown. Each session holds a clone of `done`; the caller knows all
/// sessions ended when every clone is dropped.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
    loops: Option<Arc<crate::loops::SessionLoops>>,
) {
    let mut shutdown = shared.shutdown.clone();
    let shared_for_abort = shared.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // A connection accepted as the shutdown began is served like any other (dropping it
        // would close it under a client that a takeover promised to serve): the loop stops
        // at its next turn.
        let _ = stream.set_nodelay(true);
        // Over the limit: refused before the handshake, as MySQL does (error 1040 in place of
        // the greeting), with nothing allocated for the session.
        let routing = shared.routing();
        let config = &routing.config;
        let limit = config.proxy.max_client_connections as usize;
        let max_packet = config.proxy.max_packet_bytes as usize;
        // The firewall answers before a greeting is sent (as MySQL does for a host it does
        // not accept), and nothing is allocated for a session.
        if let Err(r) = shared
            .firewall
            .admit(peer.ip(), &config.firewall, &routing.addresses)
        {
            let ip = super::firewall::canonical(peer.ip()).to_string();
            let err = match r {
                super::firewall::Refusal::Address => errors::host_not_allowed(&ip),
                super::firewall::Refusal::Blocked { remaining_s } => {
                    errors::host_blocked(&ip, remaining_s)
                }
                super::firewall::Refusal::Rate { per_s } => errors::connection_rate(&ip, per_s),
            };
            tracing::info!(client = %peer, reason = super::firewall::Refusal::REASONS[r.index()], "connection refused by the firewall");
            refuse(&shared, stream, err);
            continue;
        }
        if shared.clients.load(Ordering::Relaxed) >= limit {
            shared
                .counters
                .rejected_too_many
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, limit, "too many client connections");
            refuse(&shared, stream, errors::too_many_connections());
            continue;
        }
        shared.clients.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(super::registry::SessionInfo::new(id, peer));
        shared.sessions.insert(info.clone());
        // Removes the session from the registry and the count when the task ends or is
        // aborted (KILL SESSION).
        let guard = super::registry::SessionGuard {
            shared: shared.clone(),
            info: info.clone(),
        };
        let shared = shared.clone();
        let done = done.clone();
        let span = tracing::info_span!("session", id, client = %peer, user = tracing::field::Empty);
        let session = move |stream: tokio::net::TcpStream| {
            crate::logging::in_session(
                async move {
                    let _guard = guard;
                    let mut client = ClientConn::new(stream, peer, max_packet);
                    client.errors = Some(shared.metrics.errors.clone());
                    match session::run(shared, client, id, info).await {
                        Ok(()) => tracing::debug!("session ended"),
                        Err(e) if e.is_normal() => tracing::debug!("session ended: {e}"),
                        Err(e) => tracing::info!("session ended: {e}"),
                    }
                    drop(done);
                },
                span,
            )
        };
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel::<()>();
        let task = match &loops {
            // The socket moves to the session's loop: registered with that loop's poller,
            // so its readiness events wake the session on its own thread.
            Some(loops) => match stream.into_std() {
                Ok(std) => loops.next().spawn(async move {
                    // The task may start at once, on another thread: it waits until its abort
                    // handle is registered, or a KILL of a session that just logged in would
                    // find nothing to abort.
                    if registered_rx.await.is_err() {
                        return;
                    }
                    match tokio::net::TcpStream::from_std(std) {
                        Ok(stream) => session(stream).await,
                        Err(e) => tracing::warn!(client = %peer, error = %e, "cannot register the client socket"),
                    }
                }),
                Err(e) => {
                    tracing::warn!(client = %peer, error = %e, "cannot hand the client socket to a session loop");
                    continue;
                }
            },
            None => tokio::spawn(async move {
                if registered_rx.await.is_ok() {
                    session(stream).await
                }
            }),
        };
        shared_abort(&shared_for_abort, id, task.abort_handle());
        let _ = registered_tx.send(());
    }
    tracing::info!("listener closed");
}
