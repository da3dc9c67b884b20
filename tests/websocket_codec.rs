//! Our WebSocket halves (`websocket::io`, over `websocket::codec`) against an independent
//! peer: tungstenite in the client role, on TCP loopback and on an in-memory duplex with a
//! small buffer (reads and vectored writes cut mid-frame), and on a duplex that takes only
//! short, plain writes (the writer's fallback path).
//!
//! The handshake is not part of these halves, so both ends start on the raw connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame as TCloseFrame, Frame};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use ws_spdy_bridge::websocket::{
    CloseFrame, DecodeError, Event, Limits, Opcode, ReadError, Reader, Writer, server,
};

const MIB: usize = 1 << 20;

/// Every length form and its edges: 7-bit (0, 1, 125), 16-bit (126, 65535), 64-bit (65536
/// up), and the limit itself.
const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, MIB];

const LIMITS: Limits = Limits {
    max_frame: MIB,
    max_message: MIB,
};

type Client<S> = WebSocketStream<S>;
type Halves<S> = (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>);

async fn tcp_pair() -> (Client<TcpStream>, Halves<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.unwrap();
    client.set_nodelay(true).unwrap();
    let (server_io, _) = accepted.unwrap();
    (
        tungstenite(client).await,
        server(server_io, Bytes::new(), LIMITS),
    )
}

/// A duplex whose 4 KiB buffer makes every large frame arrive in many reads.
async fn duplex_pair() -> (Client<DuplexStream>, Halves<DuplexStream>) {
    let (client, server_io) = tokio::io::duplex(4096);
    (
        tungstenite(client).await,
        server(server_io, Bytes::new(), LIMITS),
    )
}

/// A duplex on which our side's writes are plain (not vectored) and short.
async fn plain_writes_pair() -> (Client<DuplexStream>, Halves<PlainWrites<DuplexStream>>) {
    let (client, server_io) = tokio::io::duplex(4096);
    let server_io = PlainWrites {
        io: server_io,
        calls: 0,
    };
    (
        tungstenite(client).await,
        server(server_io, Bytes::new(), LIMITS),
    )
}

/// A connection that takes no vectored writes and takes each write short: 1 to 13 bytes and
/// 4093 bytes in turn, so a frame header goes out in pieces and a payload in many writes.
struct PlainWrites<S> {
    io: S,
    calls: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for PlainWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PlainWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let cap = if this.calls.is_multiple_of(2) {
            1 + (this.calls / 2) % 13
        } else {
            4093
        };
        this.calls += 1;
        Pin::new(&mut this.io).poll_write(cx, &buf[..buf.len().min(cap)])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn tungstenite<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> Client<S> {
    // Room for a 1 MiB message plus the channel byte.
    let config = WebSocketConfig::default()
        .max_message_size(Some(2 * MIB))
        .max_frame_size(Some(2 * MIB));
    WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// ASCII, so any cut of it is a valid text message.
fn text_pattern(n: usize) -> String {
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// Runs `client` alongside `server`: on the duplex a large message only fits through while
/// the other side reads.
async fn both<A, B>(client: A, server: B) -> (A::Output, B::Output)
where
    A: Future + Send + 'static,
    A::Output: Send + 'static,
    B: Future,
{
    let client = tokio::spawn(client);
    let server = server.await;
    (client.await.unwrap(), server)
}

async fn next_event<R: AsyncRead + Unpin>(rd: &mut Reader<R>) -> Event {
    rd.next()
        .await
        .expect("connection ended")
        .expect("read failed")
}

async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(client: &mut Client<S>) -> Message {
    client
        .next()
        .await
        .expect("connection ended")
        .expect("tungstenite refused our frame")
}

async fn messages_of_every_size_arrive_whole<S>(pair: (Client<S>, Halves<S>))
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, (mut rd, _wr)) = pair;
    let sent = async move {
        for n in SIZES {
            client.send(Message::binary(pattern(n))).await.unwrap();
            client.send(Message::text(text_pattern(n))).await.unwrap();
        }
        client
    };
    let got = async {
        let mut got = Vec::new();
        for _ in 0..2 * SIZES.len() {
            got.push(next_event(&mut rd).await);
        }
        got
    };
    let (_client, got) = both(sent, got).await;
    for (i, n) in SIZES.into_iter().enumerate() {
        assert_eq!(
            got[2 * i],
            Event::Message {
                text: false,
                payload: Bytes::from(pattern(n))
            },
            "binary message of {n} bytes"
        );
        assert_eq!(
            got[2 * i + 1],
            Event::Message {
                text: true,
                payload: Bytes::from(text_pattern(n))
            },
            "text message of {n} bytes"
        );
    }
}

#[tokio::test]
async fn tungstenite_messages_of_every_length_form_arrive_whole_over_tcp() {
    messages_of_every_size_arrive_whole(tcp_pair().await).await;
}

#[tokio::test]
async fn tungstenite_messages_of_every_length_form_arrive_whole_through_small_reads() {
    messages_of_every_size_arrive_whole(duplex_pair().await).await;
}

#[tokio::test]
async fn tungstenite_fragments_are_reassembled_around_interleaved_pings() {
    let (mut client, (mut rd, _wr)) = duplex_pair().await;
    let whole = pattern(70_000);
    // Fragments across the length forms: 16-bit, 7-bit, empty, 64-bit.
    let cuts = [0, 300, 400, 400, 70_000];
    let fragments: Vec<Bytes> = cuts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&whole[w[0]..w[1]]))
        .collect();
    let sent = async move {
        let last = fragments.len() - 1;
        for (i, f) in fragments.into_iter().enumerate() {
            let opcode = if i == 0 { Data::Binary } else { Data::Continue };
            let frame = Frame::message(f, OpCode::Data(opcode), i == last);
            client.send(Message::Frame(frame)).await.unwrap();
            if i != last {
                client
                    .send(Message::Ping(vec![i as u8].into()))
                    .await
                    .unwrap();
            }
        }
        // A fragmented text message right after, in three frames.
        for (i, part) in ["frag", "men", "ted"].into_iter().enumerate() {
            let opcode = if i == 0 { Data::Text } else { Data::Continue };
            let frame = Frame::message(part, OpCode::Data(opcode), i == 2);
            client.send(Message::Frame(frame)).await.unwrap();
        }
        client
    };
    let got = async {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(next_event(&mut rd).await);
        }
        got
    };
    let (_client, got) = both(sent, got).await;
    assert_eq!(
        got,
        vec![
            Event::Ping(Bytes::from_static(&[0])),
            Event::Ping(Bytes::from_static(&[1])),
            Event::Ping(Bytes::from_static(&[2])),
            Event::Message {
                text: false,
                payload: Bytes::from(whole)
            },
            Event::Message {
                text: true,
                payload: Bytes::from_static(b"fragmented")
            },
        ]
    );
}

#[tokio::test]
async fn tungstenite_ping_reaches_our_reader_and_our_pong_answers_it() {
    let (mut client, (mut rd, mut wr)) = tcp_pair().await;
    let payload = Bytes::from(pattern(125));
    client.send(Message::Ping(payload.clone())).await.unwrap();
    let Event::Ping(got) = next_event(&mut rd).await else {
        panic!("expected a ping");
    };
    assert_eq!(got, payload);
    wr.send_pong(got).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::Pong(payload));
}

async fn channel_frames_read_back<C, S>(pair: (Client<C>, Halves<S>))
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, (_rd, mut wr)) = pair;
    // The channel byte moves each payload across a length-form edge: 124 + 1 = 125,
    // 125 + 1 = 126, 65535 + 1 = 65536.
    let sizes = [0, 1, 124, 125, 126, 65534, 65535, 65536, MIB];
    let got = async move {
        let mut got = Vec::new();
        for _ in 0..sizes.len() {
            got.push(next_message(&mut client).await);
        }
        got
    };
    let sent = async {
        for (i, n) in sizes.into_iter().enumerate() {
            let channel = (i % 5) as u8;
            wr.send(Opcode::Binary, Some(channel), Bytes::from(pattern(n)))
                .await
                .unwrap();
        }
    };
    let (got, ()) = both(got, sent).await;
    for (i, (n, message)) in sizes.into_iter().zip(got).enumerate() {
        let mut want = vec![(i % 5) as u8];
        want.extend(pattern(n));
        assert_eq!(message, Message::binary(want), "channel frame of {n} bytes");
    }
}

#[tokio::test]
async fn our_channel_frames_read_back_in_tungstenite_at_every_length_form_over_tcp() {
    channel_frames_read_back(tcp_pair().await).await;
}

#[tokio::test]
async fn our_channel_frames_read_back_in_tungstenite_at_every_length_form_through_small_reads() {
    channel_frames_read_back(duplex_pair().await).await;
}

#[tokio::test]
async fn our_channel_frames_read_back_in_tungstenite_through_short_plain_writes() {
    channel_frames_read_back(plain_writes_pair().await).await;
}

#[tokio::test]
async fn our_close_and_pong_read_back_in_tungstenite_through_short_plain_writes() {
    let (mut client, (_rd, mut wr)) = plain_writes_pair().await;
    wr.send_pong(Bytes::from(pattern(125))).await.unwrap();
    wr.send_close(Some(&CloseFrame {
        code: 1000,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::Pong(Bytes::from(pattern(125)))
    );
    assert_eq!(
        next_message(&mut client).await,
        Message::Close(Some(TCloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into()
        }))
    );
}

async fn frame_from_parts_reads_back<C, S>(pair: (Client<C>, Halves<S>))
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, (_rd, mut wr)) = pair;
    let mut parts = vec![
        Bytes::from_static(b"one "),
        Bytes::new(),
        Bytes::from(pattern(70_000)),
        Bytes::from_static(b" three"),
    ];
    let mut want = vec![3];
    for p in &parts {
        want.extend_from_slice(p);
    }
    let got = tokio::spawn(async move { next_message(&mut client).await });
    wr.start_parts(Opcode::Binary, Some(3), &mut parts);
    assert!(parts.is_empty());
    std::future::poll_fn(|cx| wr.poll_write_frame(cx))
        .await
        .unwrap();
    assert_eq!(got.await.unwrap(), Message::binary(want));
}

#[tokio::test]
async fn a_frame_started_from_parts_reads_back_as_one_message_over_tcp() {
    frame_from_parts_reads_back(tcp_pair().await).await;
}

#[tokio::test]
async fn a_frame_started_from_parts_reads_back_as_one_message_through_short_plain_writes() {
    frame_from_parts_reads_back(plain_writes_pair().await).await;
}

#[tokio::test]
async fn our_close_with_code_and_reason_reads_back_in_tungstenite_and_its_echo_reaches_us() {
    let (mut client, (mut rd, mut wr)) = tcp_pair().await;
    wr.send_close(Some(&CloseFrame {
        code: 4001,
        reason: "session ended".into(),
    }))
    .await
    .unwrap();
    let want = TCloseFrame {
        code: CloseCode::from(4001),
        reason: "session ended".into(),
    };
    assert_eq!(
        next_message(&mut client).await,
        Message::Close(Some(want.clone()))
    );
    // tungstenite answers a Close with the same code; its next poll writes the answer out.
    let _client = tokio::spawn(async move { while client.next().await.is_some() {} });
    assert_eq!(
        next_event(&mut rd).await,
        Event::Close(Some(CloseFrame {
            code: 4001,
            reason: "session ended".into()
        }))
    );
}

#[tokio::test]
async fn our_close_reason_cut_to_fit_is_still_utf8_for_tungstenite() {
    let (mut client, (_rd, mut wr)) = tcp_pair().await;
    // 2-byte characters: 123 bytes would split one, so 122 go out.
    let reason = "é".repeat(100);
    wr.send_close(Some(&CloseFrame {
        code: 1011,
        reason: reason.clone(),
    }))
    .await
    .unwrap();
    let Message::Close(Some(frame)) = next_message(&mut client).await else {
        panic!("expected a close with a code");
    };
    assert_eq!(frame.code, CloseCode::Error);
    assert_eq!(frame.reason.as_str(), &reason[..122]);
}

#[tokio::test]
async fn tungstenite_close_with_code_reaches_our_reader_then_the_connection_ends_cleanly() {
    let (mut client, (mut rd, _wr)) = tcp_pair().await;
    client
        .close(Some(TCloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rd).await,
        Event::Close(Some(CloseFrame {
            code: 1000,
            reason: "done".into()
        }))
    );
    drop(client);
    assert!(
        rd.next().await.is_none(),
        "EOF after a whole frame is clean"
    );
}

#[tokio::test]
async fn tungstenite_message_one_byte_over_the_limit_is_refused_from_its_header() {
    let (mut client, (mut rd, _wr)) = duplex_pair().await;
    // Only the first 4 KiB fit in the duplex: the refusal cannot have waited for the rest.
    let sender = tokio::spawn(async move {
        let _ = client.send(Message::binary(pattern(MIB + 1))).await;
        client
    });
    let err = match rd.next().await {
        Some(Err(ReadError::Protocol(e))) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert_eq!(
        err,
        DecodeError::FrameTooBig {
            len: MIB as u64 + 1,
            max: MIB
        }
    );
    assert_eq!(err.close_code(), 1009);
    assert!(
        !sender.is_finished(),
        "the frame went through a 4 KiB pipe whole"
    );
    sender.abort();
}

#[tokio::test]
async fn tungstenite_fragments_past_the_message_limit_are_refused_from_the_second_header() {
    let (mut client, (mut rd, _wr)) = duplex_pair().await;
    // Each fragment fits max_frame; together they pass max_message by one byte.
    let sender = tokio::spawn(async move {
        let first = Frame::message(pattern(MIB / 2), OpCode::Data(Data::Binary), false);
        let second = Frame::message(pattern(MIB / 2 + 1), OpCode::Data(Data::Continue), true);
        client.send(Message::Frame(first)).await.unwrap();
        let _ = client.send(Message::Frame(second)).await;
        client
    });
    let err = match rd.next().await {
        Some(Err(ReadError::Protocol(e))) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert_eq!(err, DecodeError::MessageTooBig { max: MIB });
    assert_eq!(err.close_code(), 1009);
    assert!(
        !sender.is_finished(),
        "the second fragment went through a 4 KiB pipe whole"
    );
    sender.abort();
}
