//! Operation sequences on a [`Session`], checked against a small model of what the protocol
//! says each operation means (protocol.md §1.4–§1.8, §1.12).
//!
//! The model is the spec, written out for the few facts it tracks per stream (who opened it,
//! whether it has been replied to, which sides have sent FIN). After every operation the
//! session and the model must agree on which streams are open, every event must be about a
//! stream the model knows, and every frame the session asks us to send must survive our own
//! encoder and decoder.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use ws_spdy_bridge::spdy::frame::{MAX_STREAM_ID, Setting};
use ws_spdy_bridge::spdy::session::SessionError;
use ws_spdy_bridge::spdy::{
    Decoder, Encoder, Event, Frame, GoAwayStatus, HeaderBlock, Limits, Role, RstStatus, Session,
};

use crate::assert_round_trip;

/// One fuzz input: the session's role and what happens to it.
#[derive(Debug)]
pub struct Input {
    pub server: bool,
    pub ops: Vec<Op>,
}

/// Most operations one input runs.
const MAX_OPS: usize = 256;

impl Input {
    /// Byte 0 picks the role; the rest is read as operations until it runs out. (Not
    /// `arbitrary_take_rest`, which spends a byte per element on "continue?", so random
    /// bytes mostly make sequences of one operation.)
    pub fn from_bytes(data: &[u8]) -> Input {
        let mut u = Unstructured::new(data);
        let server = u.arbitrary().unwrap_or(false);
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            match Op::arbitrary(&mut u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        Input { server, ops }
    }
}

/// Something that happens to the session.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// A frame from the peer, built from fields (always one our decoder could produce).
    Recv(PeerFrame),
    /// Raw bytes from the peer (the first `len` of them, at most 32) through a [`Decoder`];
    /// each frame it yields is received. Fixed-size, so one op cannot swallow the input.
    Feed {
        len: u8,
        bytes: [u8; 32],
    },
    Open(Headers),
    Accept(StreamRef, Headers),
    Reset(StreamRef, u32),
    SentData(StreamRef, bool),
    Ping,
    PollTransmit,
    /// Closes the session when `when < 32`: a close ends everything interesting, so most
    /// `Close` operations are no-ops and sequences get to run. Every run closes at its end.
    Close {
        when: u8,
    },
}

/// Which stream an operation names.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum StreamRef {
    /// One of the ids seen so far (ours or the peer's), by index.
    Known(u8),
    /// The next id the peer may open.
    NextPeer,
    /// Any id at all.
    Raw(u32),
}

/// A peer frame with the fields the session looks at.
#[derive(Arbitrary, Debug)]
pub enum PeerFrame {
    Data {
        stream: StreamRef,
        fin: bool,
        len: u8,
    },
    SynStream {
        stream: StreamRef,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream: StreamRef,
        fin: bool,
    },
    RstStream {
        stream: StreamRef,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: StreamRef,
        fin: bool,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
}

/// A header block with valid, distinct, lower-case names: bit `i` of `names` includes
/// `NAMES[i]`, each with a value from `value` (its first `value_len % 9` bytes).
#[derive(Arbitrary, Debug)]
pub struct Headers {
    names: u8,
    value_len: u8,
    value: [u8; 8],
}

const NAMES: [&str; 6] = ["streamtype", "port", "requestid", "x-a", "status", "error"];

impl Headers {
    fn block(&self) -> HeaderBlock {
        let mut block = HeaderBlock::new();
        let value = &self.value[..usize::from(self.value_len) % (self.value.len() + 1)];
        for (i, name) in NAMES.iter().enumerate() {
            if self.names & (1 << i) != 0 {
                block.push(name, value);
            }
        }
        block
    }
}

/// What the model knows about one open stream.
#[derive(Debug, Clone, Copy)]
struct Shadow {
    ours: bool,
    replied: bool,
    local_fin: bool,
    remote_fin: bool,
}

/// The session under test, the model, and an encoder/decoder pair for the frames it emits.
pub struct Harness {
    session: Session,
    role: Role,
    streams: BTreeMap<u32, Shadow>,
    /// Every id ever named by an event or by `open`, for `StreamRef::Known` and the
    /// `is_open` cross-check.
    known: Vec<u32>,
    next_id: u32,
    next_ping: u32,
    next_peer: u32,
    last_peer: u32,
    goaway_sent: bool,
    goaway_received: bool,
    /// Frames the session owes the peer, in order.
    outbox: VecDeque<Frame>,
    /// Bytes from the peer (for `Op::Feed`), until they fail to decode.
    inbound: Option<(Decoder, BytesMut)>,
    out_encoder: Encoder,
    out_decoder: Decoder,
    /// What the run exercised (event kinds and frames emitted), for choosing seeds.
    seen: BTreeSet<String>,
}

impl Harness {
    pub fn new(server: bool) -> Self {
        let role = if server { Role::Server } else { Role::Client };
        let (first, peer_first) = if server { (2, 1) } else { (1, 2) };
        Harness {
            session: Session::new(role),
            role,
            streams: BTreeMap::new(),
            known: Vec::new(),
            next_id: first,
            next_ping: first,
            next_peer: peer_first,
            last_peer: 0,
            goaway_sent: false,
            goaway_received: false,
            outbox: VecDeque::new(),
            inbound: Some((Decoder::new(Limits::default()), BytesMut::new())),
            out_encoder: Encoder::new(),
            out_decoder: Decoder::new(Limits::default()),
            seen: BTreeSet::new(),
        }
    }

    /// Runs a whole input; returns what it exercised (event kinds, frames emitted).
    pub fn run(input: &Input) -> BTreeSet<String> {
        let mut h = Harness::new(input.server);
        assert_eq!(h.session.role(), h.role);
        for op in &input.ops {
            h.apply(op);
            h.check();
        }
        // However the sequence ended, a close leaves nothing open.
        h.apply(&Op::Close { when: 0 });
        h.check();
        assert_eq!(h.session.open_streams(), 0);
        h.seen
    }

    fn resolve(&mut self, stream: StreamRef) -> u32 {
        match stream {
            StreamRef::Known(i) if !self.known.is_empty() => {
                self.known[usize::from(i) % self.known.len()]
            }
            StreamRef::Known(_) => 1,
            StreamRef::NextPeer => self.next_peer,
            StreamRef::Raw(id) => id,
        }
    }

    fn remember(&mut self, id: u32) {
        if !self.known.contains(&id) && self.known.len() < 64 {
            self.known.push(id);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Recv(peer) => {
                let frame = self.peer_frame(peer);
                self.recv(frame);
            }
            Op::Feed { len, bytes } => {
                let Some((decoder, buf)) = &mut self.inbound else {
                    return;
                };
                buf.extend_from_slice(&bytes[..usize::from(*len) % (bytes.len() + 1)]);
                let mut frames = Vec::new();
                loop {
                    match decoder.decode(buf) {
                        Ok(Some(frame)) => frames.push(frame),
                        Ok(None) => break,
                        Err(_) => {
                            self.inbound = None;
                            break;
                        }
                    }
                }
                for frame in frames {
                    self.recv(frame);
                }
            }
            Op::Open(headers) => self.open(headers.block()),
            Op::Accept(stream, headers) => {
                let id = self.resolve(*stream);
                let result = self.session.accept(id, headers.block());
                if self.streams.contains_key(&id) {
                    let frame = result.expect("accept of an open stream");
                    assert!(
                        matches!(&frame, Frame::SynReply { stream_id, fin: false, .. } if *stream_id == id)
                    );
                    self.emit(&frame);
                } else {
                    assert_eq!(result, Err(SessionError::UnknownStream(id)));
                }
            }
            Op::Reset(stream, status) => {
                let id = self.resolve(*stream);
                let status = RstStatus((*status).max(1));
                let frame = self.session.reset(id, status);
                match self.streams.remove(&id) {
                    Some(s) if !s.local_fin => {
                        assert_eq!(
                            frame,
                            Some(Frame::RstStream {
                                stream_id: id,
                                status
                            })
                        );
                    }
                    // Already half-closed by us (the peer saw our FIN), or not open.
                    _ => assert_eq!(frame, None),
                }
                if let Some(frame) = frame {
                    self.emit(&frame);
                }
            }
            Op::SentData(stream, fin) => {
                let id = self.resolve(*stream);
                let result = self.session.sent_data(id, *fin);
                match self.streams.get_mut(&id) {
                    None => assert_eq!(result, Err(SessionError::UnknownStream(id))),
                    Some(s) if s.local_fin => {
                        assert_eq!(result, Err(SessionError::AlreadyFinished(id)));
                    }
                    Some(s) => {
                        assert_eq!(result, Ok(()));
                        if *fin {
                            s.local_fin = true;
                            self.forget_if_done(id);
                        }
                    }
                }
            }
            Op::Ping => {
                let frame = self.session.ping();
                assert_eq!(frame, Frame::Ping { id: self.next_ping });
                self.next_ping += 2;
                if self.next_ping > 0x7fff_fffe {
                    self.next_ping -= 0x7fff_fffe;
                }
                self.emit(&frame);
            }
            Op::PollTransmit => {
                let frame = self.session.poll_transmit();
                assert_eq!(frame, self.outbox.pop_front());
                if let Some(frame) = frame {
                    self.emit(&frame);
                }
            }
            Op::Close { when } if *when < 32 => self.close(),
            Op::Close { .. } => {}
        }
    }

    fn peer_frame(&mut self, peer: &PeerFrame) -> Frame {
        // Only what the decoder can yield: non-zero ids where required, 31-bit DATA ids,
        // non-zero RST status and PING id. Control ids may carry the reserved bit.
        let nonzero = |id: u32| id.max(1);
        match peer {
            PeerFrame::Data { stream, fin, len } => {
                let stream_id = nonzero(self.resolve(*stream) & MAX_STREAM_ID);
                Frame::Data {
                    stream_id,
                    fin: *fin,
                    payload: Bytes::from(vec![0xd5; usize::from(*len)]),
                }
            }
            PeerFrame::SynStream {
                stream,
                fin,
                unidirectional,
                headers,
            } => Frame::SynStream {
                stream_id: nonzero(self.resolve(*stream)),
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: *fin,
                unidirectional: *unidirectional,
                headers: headers.block(),
            },
            PeerFrame::SynReply { stream, fin } => Frame::SynReply {
                stream_id: nonzero(self.resolve(*stream)),
                fin: *fin,
                headers: HeaderBlock::new(),
            },
            PeerFrame::RstStream { stream, status } => Frame::RstStream {
                stream_id: nonzero(self.resolve(*stream)),
                status: RstStatus(nonzero(*status)),
            },
            PeerFrame::Settings => Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: 7,
                    value: 1,
                }],
            },
            PeerFrame::Ping { id } => Frame::Ping { id: nonzero(*id) },
            PeerFrame::GoAway { last_good, status } => Frame::GoAway {
                last_good_stream_id: *last_good,
                status: GoAwayStatus(*status),
            },
            PeerFrame::Headers { stream, fin } => Frame::Headers {
                stream_id: nonzero(self.resolve(*stream)),
                fin: *fin,
                headers: HeaderBlock::new(),
            },
            PeerFrame::WindowUpdate { stream, delta } => Frame::WindowUpdate {
                stream_id: *stream,
                delta: *delta,
            },
        }
    }

    /// Delivers one peer frame and checks the event against the model.
    fn recv(&mut self, frame: Frame) {
        let event = self.session.recv(frame.clone());
        if let Some(event) = &event {
            let name = format!("{event:?}");
            let kind = name.split([' ', '{']).next().unwrap_or_default();
            self.seen.insert(format!("event {kind}"));
        }
        if self.goaway_received {
            assert_eq!(event, None, "event after the peer's GOAWAY");
            return;
        }
        // No event for an unknown stream (StreamOpened is the one about a new stream).
        if let Some(id) = event_stream(&event)
            && !matches!(event, Some(Event::StreamOpened { .. }))
        {
            assert!(
                self.streams.contains_key(&id),
                "{event:?} for stream {id}, which is not open"
            );
        }
        match frame {
            Frame::Data {
                stream_id,
                fin,
                payload,
            } => {
                let expected = self.data_expected(stream_id, fin);
                if expected {
                    assert_eq!(
                        event,
                        Some(Event::Data {
                            stream_id,
                            payload,
                            fin
                        })
                    );
                } else {
                    assert_eq!(event, None, "DATA the model says is dropped");
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                // Only its FIN means anything: an empty, final piece of data.
                let expected = fin && self.data_expected(stream_id, true);
                if expected {
                    assert_eq!(
                        event,
                        Some(Event::Data {
                            stream_id,
                            payload: Bytes::new(),
                            fin: true
                        })
                    );
                } else {
                    assert_eq!(event, None);
                }
            }
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => self.recv_syn_stream(event, stream_id, fin, unidirectional, headers),
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => match self.streams.get_mut(&stream_id) {
                Some(s) if s.ours && !s.replied => {
                    assert_eq!(
                        event,
                        Some(Event::StreamReplied {
                            stream_id,
                            headers,
                            fin
                        })
                    );
                    s.replied = true;
                    if fin {
                        s.remote_fin = true;
                        self.forget_if_done(stream_id);
                    }
                }
                // Unknown stream, the peer's own stream, or a second reply: ignored.
                _ => assert_eq!(event, None),
            },
            Frame::RstStream { stream_id, status } => {
                if self.streams.remove(&stream_id).is_some() {
                    assert_eq!(event, Some(Event::StreamReset { stream_id, status }));
                } else {
                    assert_eq!(event, None);
                }
            }
            Frame::Ping { id } => {
                if id % 2 == self.next_ping % 2 {
                    assert_eq!(event, Some(Event::PingAcked { id }));
                } else {
                    assert_eq!(event, None);
                    self.outbox.push_back(Frame::Ping { id });
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                assert_eq!(
                    event,
                    Some(Event::GoAway {
                        last_good_stream_id,
                        status
                    })
                );
                self.goaway_received = true;
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } => assert_eq!(event, None),
        }
    }

    /// Whether DATA (or a HEADERS FIN) on `stream_id` reaches the application, updating
    /// the model if it does.
    fn data_expected(&mut self, stream_id: u32, fin: bool) -> bool {
        let Some(s) = self.streams.get_mut(&stream_id) else {
            return false;
        };
        // Dropped before our stream is replied to, and after the peer's FIN.
        if (s.ours && !s.replied) || s.remote_fin {
            return false;
        }
        if fin {
            s.remote_fin = true;
            self.forget_if_done(stream_id);
        }
        true
    }

    fn recv_syn_stream(
        &mut self,
        event: Option<Event>,
        stream_id: u32,
        fin: bool,
        unidirectional: bool,
        headers: HeaderBlock,
    ) {
        if self.goaway_sent {
            assert_eq!(
                event, None,
                "SYN_STREAM after our GOAWAY is dropped silently"
            );
            return;
        }
        // Ids must grow and fit 31 bits; parity is not checked (as in spdystream), but a peer
        // may not take over a stream we opened. The RST names the id without the reserved bit.
        if stream_id < self.next_peer
            || stream_id > MAX_STREAM_ID
            || self.streams.contains_key(&stream_id)
        {
            assert_eq!(event, None);
            self.outbox.push_back(Frame::RstStream {
                stream_id: stream_id & MAX_STREAM_ID,
                status: RstStatus::PROTOCOL_ERROR,
            });
            return;
        }
        assert_eq!(
            event,
            Some(Event::StreamOpened {
                stream_id,
                headers,
                fin,
                unidirectional
            })
        );
        self.next_peer = stream_id.saturating_add(2);
        self.last_peer = stream_id;
        self.remember(stream_id);
        // Finished both ways on arrival: never entered in the table.
        if !(fin && unidirectional) {
            self.streams.insert(
                stream_id,
                Shadow {
                    ours: false,
                    replied: true,
                    local_fin: unidirectional,
                    remote_fin: fin,
                },
            );
        }
    }

    fn open(&mut self, headers: HeaderBlock) {
        let result = self.session.open(headers.clone());
        if self.goaway_sent || self.goaway_received {
            assert_eq!(result, Err(SessionError::GoingAway));
            return;
        }
        if self.next_id > MAX_STREAM_ID {
            assert_eq!(result, Err(SessionError::StreamIdsExhausted));
            return;
        }
        let (id, frame) = result.expect("open");
        assert_eq!(id, self.next_id);
        assert_eq!(
            frame,
            Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers,
            }
        );
        self.next_id += 2;
        self.remember(id);
        self.streams.insert(
            id,
            Shadow {
                ours: true,
                replied: false,
                local_fin: false,
                remote_fin: false,
            },
        );
        self.emit(&frame);
    }

    fn close(&mut self) {
        let frames = self.session.close();
        let mut expected: Vec<Frame> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.local_fin)
            .map(|(&stream_id, _)| Frame::RstStream {
                stream_id,
                status: RstStatus::CANCEL,
            })
            .collect();
        if !self.goaway_sent && !self.goaway_received {
            self.goaway_sent = true;
            expected.push(Frame::GoAway {
                last_good_stream_id: self.last_peer,
                status: GoAwayStatus::OK,
            });
        }
        assert_eq!(frames, expected);
        self.streams.clear();
        assert_eq!(
            self.session.open_streams(),
            0,
            "close leaves no open stream"
        );
        for frame in &frames {
            self.emit(frame);
        }
    }

    fn forget_if_done(&mut self, id: u32) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.local_fin && s.remote_fin)
        {
            self.streams.remove(&id);
        }
    }

    /// A frame the session wants sent must encode, and decode back to itself.
    fn emit(&mut self, frame: &Frame) {
        self.seen.insert(format!("emit {}", frame.kind()));
        match assert_round_trip(&mut self.out_encoder, &mut self.out_decoder, frame) {
            Ok(()) => {}
            Err(err) => panic!("session produced {frame:?}, which does not encode: {err}"),
        }
    }

    /// The session and the model agree.
    fn check(&self) {
        assert_eq!(
            self.session.is_going_away(),
            self.goaway_sent || self.goaway_received
        );
        for id in &self.known {
            assert_eq!(
                self.session.is_open(*id),
                self.streams.contains_key(id),
                "is_open({id}) disagrees with the model {:?}",
                self.streams.get(id)
            );
        }
        assert_eq!(self.session.open_streams(), self.streams.len());
        for (id, s) in &self.streams {
            assert!(
                !(s.local_fin && s.remote_fin),
                "stream {id} finished both ways is open"
            );
        }
    }
}

fn event_stream(event: &Option<Event>) -> Option<u32> {
    match event {
        Some(Event::StreamOpened { stream_id, .. })
        | Some(Event::StreamReplied { stream_id, .. })
        | Some(Event::Data { stream_id, .. })
        | Some(Event::StreamReset { stream_id, .. }) => Some(*stream_id),
        _ => None,
    }
}
