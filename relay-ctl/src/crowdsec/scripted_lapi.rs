//! A scripted LAPI for unit tests.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Listens on 127.0.0.1 and answers each request with the next (status, body) of `script`,
/// then with an empty stream; returns the base URL and the requests seen (head and body).
pub async fn scripted_lapi(script: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = vec![0u8; 8192];
            // Head, then as much body as content-length says (bounded by the loop count).
            for _ in 0..64 {
                let Ok(n) = s.read(&mut buf).await else { break };
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let want = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + want {
                        break;
                    }
                }
            }
            log.lock()
                .expect("log")
                .push(String::from_utf8_lossy(&request).into_owned());
            let (status, body) = script
                .lock()
                .expect("script")
                .pop_front()
                .unwrap_or((200, r#"{"new":null,"deleted":null}"#));
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (url, seen)
}

/// Listens on 127.0.0.1 and answers every request with a decision stream that never ends
/// (no length, valid decisions for as long as the client reads, at most 1 GiB); returns the
/// base URL and the body bytes written so far.
pub async fn endless_lapi() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"deleted\":null,\"new\":[";
            if s.write_all(head.as_bytes()).await.is_err() {
                continue;
            }
            let item = r#"{"duration":"1h","origin":"lists","scenario":"t","scope":"Ip","type":"ban","value":"198.19.0.1"},"#;
            let chunk = item.repeat((64 << 10) / item.len());
            for _ in 0..(1usize << 30) / chunk.len() {
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    });
    (url, written)
}
