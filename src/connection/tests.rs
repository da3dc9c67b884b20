//! The driver against itself over an in-memory pipe, both roles.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn pair(server_cfg: ConnectionConfig) -> ((Handle, Incoming), (Handle, Incoming)) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = spawn(a, Bytes::new(), ConnectionConfig::client());
    let server = spawn(b, Bytes::new(), server_cfg);
    (client, server)
}

/// Server side that echoes every stream and FINs after the peer does.
fn echo_server(mut incoming: Incoming) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(stream) = incoming.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.accept().split();
                while let Some(piece) = rd.recv().await {
                    if wr.send(piece).await.is_err() {
                        return;
                    }
                }
                let _ = wr.finish().await;
            });
        }
    })
}

#[tokio::test]
async fn echo_round_trip_with_half_close() {
    let ((client, _), (_server, incoming)) = pair(ConnectionConfig::server());
    echo_server(incoming);
    let stream = client
        .open_stream(HeaderBlock::new().with("streamtype", "data"))
        .await
        .unwrap();
    assert_eq!(stream.id(), 1);
    let (mut rd, mut wr) = stream.split();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let send = {
        let payload = Bytes::from(payload.clone());
        tokio::spawn(async move {
            wr.send(payload).await.unwrap();
            wr.finish().await.unwrap();
            wr
        })
    };
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, payload);
    assert_eq!(rd.end(), Some(StreamEnd::Fin));
    send.await.unwrap();
    assert!(client.ping().await.is_ok());
}

#[tokio::test]
async fn stream_ids_are_odd_and_replies_carry_headers() {
    let ((client, _), (_server, mut incoming)) = pair(ConnectionConfig::server());
    tokio::spawn(async move {
        while let Some(s) = incoming.accept().await {
            let echoed = s.headers().get_str("n").unwrap_or("").to_owned();
            let _stream = s.accept_with(HeaderBlock::new().with("echo-n", echoed));
            // Keep the stream open for the test's lifetime.
            std::mem::forget(_stream);
        }
    });
    for (i, expected) in [1u32, 3, 5].into_iter().enumerate() {
        let s = client
            .open_stream(HeaderBlock::new().with("n", i.to_string()))
            .await
            .unwrap();
        assert_eq!(s.id(), expected);
        assert_eq!(s.headers().get_str("echo-n"), Some(i.to_string().as_str()));
    }
}

#[tokio::test]
async fn rejected_stream_fails_open_with_reset() {
    let ((client, _), (_server, mut incoming)) = pair(ConnectionConfig::server());
    tokio::spawn(async move {
        while let Some(s) = incoming.accept().await {
            s.reject(RstStatus::CANCEL);
        }
    });
    let err = client.open_stream(HeaderBlock::new()).await.unwrap_err();
    assert_eq!(err, OpenError::Reset(RstStatus::CANCEL));
}

#[tokio::test(start_paused = true)]
async fn unanswered_stream_times_out_like_client_go() {
    let ((client, _), (_server, _incoming)) = pair(ConnectionConfig::server());
    // The server never accepts: no SYN_REPLY.
    let err = client.open_stream(HeaderBlock::new()).await.unwrap_err();
    assert_eq!(err, OpenError::Timeout);
    assert_eq!(err.to_string(), "Timeout occurred");
}

#[tokio::test]
async fn slow_reader_back_pressures_without_blocking_outbound_frames() {
    let mut cfg = ConnectionConfig::server();
    cfg.stream_buffer = 8 * 1024;
    let ((client, _), (_server, mut incoming)) = pair(cfg);
    let server = tokio::spawn(async move {
        let slow = incoming.accept().await.unwrap().accept();
        let other = incoming.accept().await.unwrap().accept();
        (slow, other)
    });
    let a = client.open_stream(HeaderBlock::new()).await.unwrap();
    let b = client.open_stream(HeaderBlock::new()).await.unwrap();
    let (mut slow, mut other) = server.await.unwrap();
    let (_a_rd, mut a_wr) = a.split();
    // 1 MiB towards a reader that does not read: the writer must end up waiting.
    let flood = tokio::spawn(async move {
        for _ in 0..128 {
            a_wr.send(Bytes::from(vec![1u8; 8192])).await.unwrap();
        }
        a_wr
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!flood.is_finished(), "sender should be back-pressured");
    // The server can still write on another stream and the client reads it.
    other
        .writer
        .send(Bytes::from_static(b"still here"))
        .await
        .unwrap();
    let (mut b_rd, _b_wr) = b.split();
    assert_eq!(
        b_rd.recv().await.unwrap(),
        Bytes::from_static(b"still here")
    );
    // Draining the slow stream releases everything, byte-exact.
    let mut total = 0;
    while total < 128 * 8192 {
        total += slow.reader.recv().await.unwrap().len();
    }
    assert_eq!(total, 128 * 8192);
    flood.await.unwrap();
}

#[tokio::test]
async fn dropped_reader_does_not_wedge_the_connection() {
    let mut cfg = ConnectionConfig::server();
    cfg.stream_buffer = 4 * 1024;
    let ((client, _), (_server, mut incoming)) = pair(cfg);
    let server = tokio::spawn(async move {
        let abandoned = incoming.accept().await.unwrap().accept();
        drop(abandoned.reader);
        let next = incoming.accept().await.unwrap().accept();
        (abandoned.writer, next)
    });
    let a = client.open_stream(HeaderBlock::new()).await.unwrap();
    let (_rd, mut wr) = a.split();
    wr.send(Bytes::from(vec![0u8; 256 * 1024])).await.unwrap();
    let b = client.open_stream(HeaderBlock::new()).await.unwrap();
    let (_w, mut next) = server.await.unwrap();
    let (_b_rd, mut b_wr) = b.split();
    b_wr.send(Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(next.reader.recv().await.unwrap(), Bytes::from_static(b"ok"));
}

#[tokio::test]
async fn close_resets_open_streams_and_ends_peer_streams() {
    let ((client, _), (server, mut incoming)) = pair(ConnectionConfig::server());
    let accepted = tokio::spawn(async move { incoming.accept().await.unwrap().accept() });
    let stream = client.open_stream(HeaderBlock::new()).await.unwrap();
    let mut peer = accepted.await.unwrap();
    client.close().await;
    assert_eq!(client.closed().await, CloseReason::Local);
    assert_eq!(peer.reader.recv().await, None);
    assert_eq!(peer.reader.end(), Some(StreamEnd::Reset(RstStatus::CANCEL)));
    assert_eq!(server.closed().await, CloseReason::GoAway);
    let (_rd, mut wr) = stream.split();
    assert!(wr.send(Bytes::from_static(b"late")).await.is_err());
}

#[tokio::test]
async fn peer_goaway_ends_streams_after_their_data() {
    let ((client, _), (server, mut incoming)) = pair(ConnectionConfig::server());
    let accepted = tokio::spawn(async move {
        let s = incoming.accept().await.unwrap().accept();
        let (rd, mut wr) = s.split();
        wr.send(Bytes::from_static(b"status")).await.unwrap();
        (rd, wr)
    });
    let stream = client.open_stream(HeaderBlock::new()).await.unwrap();
    let _keep = accepted.await.unwrap();
    let (mut rd, _wr) = stream.split();
    assert_eq!(rd.recv().await.unwrap(), Bytes::from_static(b"status"));
    server.close().await;
    assert_eq!(rd.recv().await, None);
    assert!(matches!(
        rd.end(),
        Some(StreamEnd::Reset(_) | StreamEnd::GoAway)
    ));
    assert_eq!(client.closed().await, CloseReason::GoAway);
}

#[tokio::test]
async fn leftover_bytes_from_the_upgrade_are_decoded_first() {
    let (a, mut b) = tokio::io::duplex(1024);
    // A PING the server sent in the same read as its 101.
    let leftover = Bytes::from_static(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
    let (_client, _incoming) = spawn(a, leftover, ConnectionConfig::client());
    let mut echo = [0u8; 12];
    b.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
}

#[tokio::test]
async fn protocol_error_closes_the_connection() {
    let (a, mut b) = tokio::io::duplex(1024);
    let (client, _incoming) = spawn(a, Bytes::new(), ConnectionConfig::client());
    // Control frame type 5 (SPDY/2 NOOP) is fatal, as in spdystream.
    b.write_all(&[0x80, 3, 0, 5, 0, 0, 0, 0]).await.unwrap();
    assert!(matches!(client.closed().await, CloseReason::Protocol(_)));
}

#[tokio::test(start_paused = true)]
async fn client_pings_periodically_with_odd_ids() {
    let (a, mut b) = tokio::io::duplex(1024);
    let (_client, _incoming) = spawn(a, Bytes::new(), ConnectionConfig::client());
    let mut frame = [0u8; 12];
    b.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    b.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[8..], [0, 0, 0, 3]);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_the_connection() {
    let mut cfg = ConnectionConfig::server();
    cfg.idle_timeout = Some(Duration::from_secs(60));
    let (a, _b) = tokio::io::duplex(1024);
    let (server, _incoming) = spawn(a, Bytes::new(), cfg);
    assert_eq!(server.closed().await, CloseReason::Idle);
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let ((client, client_incoming), (server, _incoming)) = pair(ConnectionConfig::server());
    drop(client);
    drop(client_incoming);
    assert_eq!(server.closed().await, CloseReason::GoAway);
}

#[tokio::test]
async fn close_writes_data_already_sent_before_its_resets_and_goaway() {
    // The runtime's ending: output, FIN, the status on the error stream, then close. Data
    // whose `send` returned is on its way; close must not overtake or drop it, even when the
    // peer reads slowly and the write queue is full at that moment.
    let ((client, _), (server, mut incoming)) = pair(ConnectionConfig::server());
    const OUTPUT: usize = 2 * 1024 * 1024;
    let runtime = tokio::spawn(async move {
        let mut out = incoming.accept().await.unwrap().accept();
        let mut error = incoming.accept().await.unwrap().accept();
        for _ in 0..OUTPUT / 8192 {
            out.writer.send(Bytes::from(vec![7u8; 8192])).await.unwrap();
        }
        out.writer.finish().await.unwrap();
        error
            .writer
            .send(Bytes::from_static(b"status"))
            .await
            .unwrap();
        server.close().await;
    });
    let out = client.open_stream(HeaderBlock::new()).await.unwrap();
    let error = client.open_stream(HeaderBlock::new()).await.unwrap();
    // A slow reader: the runtime's write queue is full when it closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut out_rd, _out_wr) = out.split();
    let mut total = 0;
    while let Some(piece) = out_rd.recv().await {
        total += piece.len();
        tokio::task::yield_now().await;
    }
    assert_eq!(total, OUTPUT);
    assert_eq!(out_rd.end(), Some(StreamEnd::Fin));
    let (mut err_rd, _err_wr) = error.split();
    assert_eq!(err_rd.recv().await, Some(Bytes::from_static(b"status")));
    assert_eq!(err_rd.recv().await, None);
    assert_eq!(err_rd.end(), Some(StreamEnd::Reset(RstStatus::CANCEL)));
    runtime.await.unwrap();
}
