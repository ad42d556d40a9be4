//! The JSON-RPC session over whole text messages the caller brings (an application that owns
//! its WebSocket layer, stdin lines, an IPC pipe).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_core::Stream;
use futures_sink::Sink;
use wsrpc_core::auth::Principal;
use wsrpc_core::rpc::{RpcSession, SessionOutput, Transport};
use wsrpc_core::service::Service;

use crate::Runtime;
use crate::completions::Completions;

/// Serves JSON-RPC over `incoming` text messages, answering into `outgoing`, until
/// `incoming` ends, an error occurs, or the session asks to close (abuse, slow consumer).
///
/// Notifications of subscriptions are written to `outgoing` as they are published. Map your
/// transport's message types at the edges, e.g. for an async-tungstenite `WebSocketStream`
/// split into stream and sink: keep the text frames of the stream, and wrap the sink to
/// turn `Vec<u8>` into text messages.
pub fn serve_messages<R, St, Si, E>(
    rt: R,
    service: Arc<Service>,
    origin: Option<Arc<str>>,
    principal: Arc<Principal>,
    mut incoming: St,
    mut outgoing: Si,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    St: Stream<Item = Result<Vec<u8>, E>> + Unpin + Send,
    Si: Sink<Vec<u8>> + Unpin + Send,
    E: std::fmt::Display,
{
    let now = rt.now().mono;
    let id = service.connection_id();
    let mut session = RpcSession::new(service, id, origin, principal, Transport::Messages, now);
    let completions = Arc::new(Completions::default());
    let mut unsent: Option<Vec<u8>> = None;
    let mut ended = false;
    std::future::poll_fn(move |cx| {
        session.register_waker(cx.waker());
        completions.waker.register(cx.waker());
        loop {
            let now = rt.now().mono;
            let mut progress = false;
            for (call, result) in completions.take() {
                session.complete(call, result, now);
                progress = true;
            }
            // Output first, so replies are not held back by a busy input.
            loop {
                if unsent.is_none() {
                    match session.poll_output() {
                        Some(SessionOutput::Message(m)) => unsent = Some(m),
                        Some(SessionOutput::Notification(f)) => unsent = Some(f.payload().to_vec()),
                        Some(SessionOutput::Spawn(call, work)) => {
                            completions.spawn(&rt, call, work);
                            continue;
                        }
                        Some(SessionOutput::Close(code, why)) => {
                            log::info!(target: "wsrpc::rpc", "closing message session: {why} ({code})");
                            ended = true;
                        }
                        Some(_) => continue,
                        None => {}
                    }
                }
                let Some(msg) = unsent.take() else { break };
                match Pin::new(&mut outgoing).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if Pin::new(&mut outgoing).start_send(msg).is_err() {
                            return Poll::Ready(());
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        unsent = Some(msg);
                        break;
                    }
                }
            }
            if Pin::new(&mut outgoing).poll_flush(cx).is_ready() && ended {
                return Poll::Ready(());
            }
            if !ended && unsent.is_none() {
                match Pin::new(&mut incoming).poll_next(cx) {
                    Poll::Ready(Some(Ok(text))) => {
                        session.handle_message(now, &text);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        log::debug!(target: "wsrpc::rpc", "message stream failed: {e}");
                        ended = true;
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
}
