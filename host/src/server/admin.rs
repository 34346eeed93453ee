//! The admin endpoint's accept loop, on its own address ([`crate::admin::endpoint`]).
//!
//! HTTP/1.1 only, each connection with a header timeout; requests are
//! answered by llamagate itself and never reach a plugin or a backend.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::state::Gateway;

/// Time an admin client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoint on `listener`, forever.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("admin endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let gateway = gateway.clone();
                async move {
                    let response = crate::admin::endpoint::answer(
                        &gateway,
                        request.method(),
                        request.uri().path(),
                        request.headers(),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%client, "admin connection ended: {e}");
            }
        });
    }
}
