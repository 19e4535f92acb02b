//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics`. It serves
//! what the monitor last saw, so it answers while lightningd is frozen.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::startup::State;
use crate::metrics;

/// A client that sends no request line by then is dropped.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;

pub async fn serve(addr: SocketAddr, state: State) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("replguard-metrics: cannot listen on {addr}: {e}");
            return;
        }
    };
    log::info!("metrics on http://{addr}/metrics");
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            let read = tokio::time::timeout(REQUEST_DEADLINE, async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let response = if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?")
            {
                let st = &state.0;
                let latest = st.guard.latest();
                let counters = st.guard.counters();
                let body = metrics::render(latest.as_ref().map(|(_, r)| r), counters);
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
