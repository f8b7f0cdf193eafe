//! The server's connections (api/src/server.rs): a client that sends no request, or sends its
//! head a byte at a time, is cut off at the header-read timeout; connections past the bound wait
//! to be accepted instead of using up the process's file descriptors; a client that stops reading
//! its answers is cut off at the write timeout, and one that reads slowly is not. The store does not
//! matter here: SQLite.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use ticketd_api::server::Limits;
use ticketd_tests::http::TestServer;
use ticketd_tests::SqliteTestStore;

/// A server on a SQLite store of its own, with `limits`.
async fn server(limits: Limits) -> (SqliteTestStore, TestServer) {
    let t = ticketd_tests::sqlite_store().await;
    let s = TestServer::start_limited(t.store.clone(), false, limits).await;
    (t, s)
}

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (or resets it); fails after `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closed the connection");
    got
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let (_t, s) = server(Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;

    // Connected, and nothing sent.
    let mut silent = connect(&s).await;
    let started = Instant::now();
    closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A head sent a byte every 100 ms: each byte arrives in time, the head does not.
    let mut slow = connect(&s).await;
    let head =
        b"GET /healthz HTTP/1.1\r\nhost: ticketd\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let dripping = async {
        for b in head {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        timeout(Duration::from_secs(10), dripping)
            .await
            .expect("cut off before the head was through"),
        "the connection was closed mid-head"
    );

    // A whole request on a connection is answered as ever, and the idle connection after it
    // closes at the timeout too.
    let mut whole = connect(&s).await;
    whole
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: ticketd\r\n\r\n")
        .await
        .expect("send");
    let answer = closed_within(&mut whole, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_past_the_bound_wait_their_turn() {
    let (_t, s) = server(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let first = connect(&s).await;
    let _second = connect(&s).await;
    // A third client's request waits while both connections are open (the listen backlog
    // holds it)...
    let mut third = connect(&s).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: ticketd\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "answered past the bound"
    );
    // ...and is answered once one of them closes.
    drop(first);
    let answer = closed_within(&mut third, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_body_that_never_ends_is_a_408_and_changes_nothing() {
    let (t, s) = server(Limits {
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let mut conn = connect(&s).await;
    let head = format!(
        "POST /v1/tickets HTTP/1.1\r\nhost: ticketd\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"subject\"",
        s.customer("alice")
    );
    conn.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let answer = closed_within(&mut conn, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    let log = ticketd_tests::read_everything(t.store.as_ref(), 100).await;
    assert!(log.is_empty(), "nothing appended: {log:?}");
}

/// `n` requests for the OpenAPI document on one connection, sent at once, and its length.
async fn pipelined_openapi(s: &TestServer, conn: &mut TcpStream) -> (usize, usize) {
    let size = reqwest::get(format!("{}/openapi.json", s.base))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body")
        .len();
    // Far more than loopback's socket buffers hold (a few MiB each way).
    let n = (32 << 20) / size.max(1) + 1;
    let request = b"GET /openapi.json HTTP/1.1\r\nhost: ticketd\r\n\r\n".repeat(n);
    conn.write_all(&request).await.expect("send");
    (n, size)
}

#[tokio::test]
async fn a_client_that_reads_no_answer_is_cut_off() {
    let (_t, s) = server(Limits {
        write_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let mut conn = connect(&s).await;
    let (n, size) = pipelined_openapi(&s, &mut conn).await;
    // Reads nothing while the server's writes wait past the timeout...
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...then finds the connection closed after what the buffers held.
    let got = closed_within(&mut conn, Duration::from_secs(20)).await;
    assert!(
        got.len() < n * size,
        "cut off: {} of {} bytes",
        got.len(),
        n * size
    );
    // Others are served as ever.
    let mut other = connect(&s).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: ticketd\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let answer = closed_within(&mut other, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_slow_reader_gets_its_whole_answer() {
    let (_t, s) = server(Limits {
        write_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    let mut conn = connect(&s).await;
    let (n, size) = pipelined_openapi(&s, &mut conn).await;
    // Reads a part every 300 ms: each write moves within the timeout, so no answer is cut.
    let mut got = 0usize;
    let mut buf = vec![0u8; 4 << 20];
    let whole = timeout(Duration::from_secs(120), async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => got += read,
            }
        }
    });
    // The connection ends at the header-read timeout once every answer is through.
    whole.await.expect("the idle connection closed");
    assert!(got > n * size, "every answer: {got} bytes of {n} × {size}");
}
