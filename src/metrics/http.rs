//! The metrics endpoint: a minimal HTTP/1.1 responder on a TCP listener.
//!
//! Prometheus asks `GET /metrics` and reads the answer; nothing more is
//! needed of HTTP here, so this is a few lines on tokio rather than a web
//! framework: `GET` or `HEAD` of `/metrics` (a query string is ignored)
//! answers the page, `/` a line saying where the metrics are, any other
//! path 404 and any other method 405. Every answer closes the connection.
//! A request head must arrive within [`REQUEST_TIMEOUT`] and fit in
//! [`MAX_HEAD`] bytes; anything else is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{CONTENT_TYPE, Metrics};
use crate::Driver;

/// How long a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head read.
pub const MAX_HEAD: usize = 8192;

/// Serves the metrics of `driver`'s pool on `listener` until the task is
/// dropped. Each connection is served on its own task; a scrape runs on
/// the blocking pool (it reads a file and makes an ioctl).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, driver: Arc<Driver>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, driver) = (metrics.clone(), driver.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, metrics, driver).await {
                tracing::debug!(%peer, error = %e, "metrics: connection dropped");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: Arc<Metrics>,
    driver: Arc<Driver>,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    let (status, content_type, body, head_only) = match route(&head) {
        Route::Metrics { head_only } => {
            let page = tokio::task::spawn_blocking(move || metrics.scrape(&driver))
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", CONTENT_TYPE, page, head_only)
        }
        Route::Index { head_only } => (
            "200 OK",
            "text/plain; charset=utf-8",
            "thinlayer: metrics are at /metrics\n".to_string(),
            head_only,
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
            false,
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Index { head_only: bool },
    NotFound,
    BadMethod,
    BadRequest,
}

/// What the request line of `head` asks for.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    match target.split('?').next().unwrap_or("") {
        "/metrics" => Route::Metrics { head_only },
        "/" => Route::Index { head_only },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(
            route("GET / HTTP/1.1\r\n\r\n"),
            Route::Index { head_only: false }
        );
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
