//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics`. It serves
//! what the monitor last saw, so it answers while lightningd is frozen.
//!
//! Its descriptors are the plugin's: the probe needs them too. So it serves a few scrapes at
//! a time and closes any connection beyond them at once, gives each one a deadline, and
//! pauses after a failed `accept` instead of trying again at once (a flood of connections
//! once used every descriptor, the probe failed, and a failed accept was retried in a loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::startup::State;
use crate::metrics;

/// A client that sends no request line by then is dropped.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// A client that does not take the answer by then is dropped.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;
/// Scrapes served at once; a scraper needs one. Connections beyond are closed unanswered.
const MAX_CONNECTIONS: usize = 16;
/// Pause after a failed `accept`, doubled on each failure in a row up to the maximum.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

pub async fn serve(addr: SocketAddr, state: State) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("replguard-metrics: cannot listen on {addr}: {e}");
            return;
        }
    };
    log::info!("metrics on http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut pause: Option<Duration> = None;
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                pause = None;
                // Over the cap: dropping the connection closes it, its descriptor is free.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    answer(conn, &state).await;
                    drop(slot);
                });
            }
            Err(e) => {
                let next = next_accept_pause(pause);
                if pause.is_none() {
                    log::warn!(
                        "replguard-metrics: accept failed ({e}); pausing up to {} ms between \
                         attempts",
                        ACCEPT_PAUSE_MAX.as_millis()
                    );
                }
                pause = Some(next);
                tokio::time::sleep(next).await;
            }
        }
    }
}

/// The pause after a failed `accept`, given the previous one in this run of failures.
fn next_accept_pause(previous: Option<Duration>) -> Duration {
    previous.map_or(ACCEPT_PAUSE_FIRST, |p| (p * 2).min(ACCEPT_PAUSE_MAX))
}

/// Reads one request and answers it, each within its deadline.
async fn answer(mut conn: TcpStream, state: &State) {
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
    let response = if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?") {
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
    let _ = tokio::time::timeout(RESPONSE_DEADLINE, async {
        let _ = conn.write_all(response.as_bytes()).await;
        let _ = conn.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_accept_backs_off_from_100_ms_doubling_to_1_s() {
        let mut pauses = Vec::new();
        let mut p = None;
        for _ in 0..6 {
            let next = next_accept_pause(p);
            pauses.push(next.as_millis());
            p = Some(next);
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
    }
}
