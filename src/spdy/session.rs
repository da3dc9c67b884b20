//! SPDY/3.1 session state, sans-IO: stream ids, stream life cycles, PING and GOAWAY.
//!
//! The session takes decoded frames and reports what they mean ([`Event`]); it builds the
//! control frames its local actions need, and queues the answers the protocol requires
//! (PING echoes, RST_STREAM for unacceptable streams) for [`Session::poll_transmit`]. It never
//! enforces flow control: spdystream sends no WINDOW_UPDATE, so a sender that waited for one
//! would stall after 64 KiB (protocol.md §1.7).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use thiserror::Error;

use super::frame::{Frame, GoAwayStatus, MAX_STREAM_ID, RstStatus};
use super::headers::HeaderBlock;

/// Which end of the connection we are. Clients open odd-numbered streams, servers even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn first_stream_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    fn first_peer_stream_id(self) -> u32 {
        match self {
            Role::Client => 2,
            Role::Server => 1,
        }
    }
}

/// What a received frame means to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream; answer with [`Session::accept`] or [`Session::reset`].
    StreamOpened {
        stream_id: u32,
        headers: HeaderBlock,
        fin: bool,
        unidirectional: bool,
    },
    /// The peer accepted a stream we opened.
    StreamReplied {
        stream_id: u32,
        headers: HeaderBlock,
        fin: bool,
    },
    /// Data (possibly empty) for an open stream; `fin` ends the peer's side.
    Data {
        stream_id: u32,
        payload: Bytes,
        fin: bool,
    },
    /// The peer reset a stream; it is gone.
    StreamReset { stream_id: u32, status: RstStatus },
    /// The peer answered one of our PINGs.
    PingAcked { id: u32 },
    /// The peer is closing the connection: nothing after this frame will be read.
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
}

/// A local action the session cannot take.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("the connection is going away")]
    GoingAway,
    #[error("stream ids are exhausted")]
    StreamIdsExhausted,
    #[error("stream {0} is not open")]
    UnknownStream(u32),
    #[error("stream {0} is already half-closed by us")]
    AlreadyFinished(u32),
}

#[derive(Clone, Copy, Debug)]
struct StreamState {
    /// We opened it and are still waiting for its SYN_REPLY.
    awaiting_reply: bool,
    local_fin: bool,
    remote_fin: bool,
}

/// The state of one SPDY connection.
#[derive(Debug)]
pub struct Session {
    role: Role,
    next_stream_id: u32,
    next_ping_id: u32,
    next_peer_stream_id: u32,
    last_peer_stream_id: u32,
    streams: HashMap<u32, StreamState>,
    goaway_sent: bool,
    goaway_received: bool,
    outbox: VecDeque<Frame>,
}

impl Session {
    /// A fresh connection in `role`.
    pub fn new(role: Role) -> Self {
        Session {
            role,
            next_stream_id: role.first_stream_id(),
            next_ping_id: role.first_stream_id(),
            next_peer_stream_id: role.first_peer_stream_id(),
            last_peer_stream_id: 0,
            streams: HashMap::new(),
            goaway_sent: false,
            goaway_received: false,
            outbox: VecDeque::new(),
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Streams not yet closed in both directions nor reset.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether `stream_id` is open.
    pub fn is_open(&self, stream_id: u32) -> bool {
        self.streams.contains_key(&stream_id)
    }

    /// Whether either side has sent GOAWAY.
    pub fn is_going_away(&self) -> bool {
        self.goaway_sent || self.goaway_received
    }

    /// The next control frame the protocol obliges us to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Takes one decoded frame from the peer.
    pub fn recv(&mut self, frame: Frame) -> Option<Event> {
        if self.goaway_received {
            // spdystream stops reading at a GOAWAY; so do we.
            return None;
        }
        match frame {
            Frame::Data {
                stream_id,
                fin,
                payload,
            } => self.recv_data(stream_id, payload, fin),
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => self.recv_syn_stream(stream_id, headers, fin, unidirectional),
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let state = self.streams.get_mut(&stream_id)?;
                // A reply for a stream we did not open, or a second reply, is ignored.
                if !state.awaiting_reply {
                    return None;
                }
                state.awaiting_reply = false;
                if fin {
                    self.remote_finished(stream_id);
                }
                Some(Event::StreamReplied {
                    stream_id,
                    headers,
                    fin,
                })
            }
            Frame::RstStream { stream_id, status } => {
                self.streams.remove(&stream_id)?;
                Some(Event::StreamReset { stream_id, status })
            }
            Frame::Ping { id } => {
                if id % 2 == self.next_ping_id % 2 {
                    Some(Event::PingAcked { id })
                } else {
                    self.outbox.push_back(Frame::Ping { id });
                    None
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                self.goaway_received = true;
                Some(Event::GoAway {
                    last_good_stream_id,
                    status,
                })
            }
            // A HEADERS frame carries nothing Kubernetes uses, but its FIN still half-closes.
            Frame::Headers {
                stream_id,
                fin: true,
                ..
            } => self.recv_data(stream_id, Bytes::new(), true),
            Frame::Headers { .. } | Frame::Settings { .. } | Frame::WindowUpdate { .. } => None,
        }
    }

    fn recv_data(&mut self, stream_id: u32, payload: Bytes, fin: bool) -> Option<Event> {
        let state = self.streams.get(&stream_id)?;
        // spdystream drops data for streams it has not had a reply for, and after the
        // peer's FIN; a peer doing either is broken, and the data has nowhere to go.
        if state.awaiting_reply || state.remote_fin {
            return None;
        }
        if fin {
            self.remote_finished(stream_id);
        }
        Some(Event::Data {
            stream_id,
            payload,
            fin,
        })
    }

    fn recv_syn_stream(
        &mut self,
        stream_id: u32,
        headers: HeaderBlock,
        fin: bool,
        unidirectional: bool,
    ) -> Option<Event> {
        if self.goaway_sent {
            return None;
        }
        // Ids must grow and fit 31 bits (the reserved bit is not masked, as in spdystream,
        // but our RST names the id without it, as a frame can carry). Parity is not checked,
        // also as in spdystream, but a peer may never take over a stream we opened.
        if stream_id < self.next_peer_stream_id
            || stream_id > MAX_STREAM_ID
            || self.streams.contains_key(&stream_id)
        {
            self.outbox.push_back(Frame::RstStream {
                stream_id: stream_id & MAX_STREAM_ID,
                status: RstStatus::PROTOCOL_ERROR,
            });
            return None;
        }
        self.next_peer_stream_id = stream_id.saturating_add(2);
        self.last_peer_stream_id = stream_id;
        // A stream finished both ways on arrival is never entered in the table.
        if !(fin && unidirectional) {
            self.streams.insert(
                stream_id,
                StreamState {
                    awaiting_reply: false,
                    local_fin: unidirectional,
                    remote_fin: fin,
                },
            );
        }
        Some(Event::StreamOpened {
            stream_id,
            headers,
            fin,
            unidirectional,
        })
    }

    fn remote_finished(&mut self, stream_id: u32) {
        if let Some(state) = self.streams.get_mut(&stream_id) {
            state.remote_fin = true;
            if state.local_fin {
                self.streams.remove(&stream_id);
            }
        }
    }

    /// Opens a stream: returns its id and the SYN_STREAM to send.
    pub fn open(&mut self, headers: HeaderBlock) -> Result<(u32, Frame), SessionError> {
        if self.is_going_away() {
            return Err(SessionError::GoingAway);
        }
        let stream_id = self.next_stream_id;
        if stream_id > MAX_STREAM_ID {
            return Err(SessionError::StreamIdsExhausted);
        }
        self.next_stream_id += 2;
        self.streams.insert(
            stream_id,
            StreamState {
                awaiting_reply: true,
                local_fin: false,
                remote_fin: false,
            },
        );
        let frame = Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        };
        Ok((stream_id, frame))
    }

    /// Accepts a stream the peer opened: the SYN_REPLY to send.
    pub fn accept(&mut self, stream_id: u32, headers: HeaderBlock) -> Result<Frame, SessionError> {
        if !self.streams.contains_key(&stream_id) {
            return Err(SessionError::UnknownStream(stream_id));
        }
        Ok(Frame::SynReply {
            stream_id,
            fin: false,
            headers,
        })
    }

    /// Records that we sent DATA on `stream_id`, half-closing it when `fin` is set.
    pub fn sent_data(&mut self, stream_id: u32, fin: bool) -> Result<(), SessionError> {
        let state = self
            .streams
            .get_mut(&stream_id)
            .ok_or(SessionError::UnknownStream(stream_id))?;
        if state.local_fin {
            return Err(SessionError::AlreadyFinished(stream_id));
        }
        if fin {
            state.local_fin = true;
            if state.remote_fin {
                self.streams.remove(&stream_id);
            }
        }
        Ok(())
    }

    /// Forgets `stream_id`, returning the RST_STREAM to send. Like spdystream, a stream we
    /// have already half-closed is dropped silently: the peer saw our FIN.
    pub fn reset(&mut self, stream_id: u32, status: RstStatus) -> Option<Frame> {
        let state = self.streams.remove(&stream_id)?;
        (!state.local_fin).then_some(Frame::RstStream { stream_id, status })
    }

    /// A PING with our next id (odd for clients, even for servers).
    pub fn ping(&mut self) -> Frame {
        let id = self.next_ping_id;
        self.next_ping_id += 2;
        if self.next_ping_id > 0x7fff_fffe {
            self.next_ping_id -= 0x7fff_fffe;
        }
        Frame::Ping { id }
    }

    /// The frames of a clean close: RST_STREAM CANCEL on every stream we have not
    /// half-closed, then GOAWAY naming the last stream the peer opened (0 for a client that
    /// accepted none). Afterwards no stream is open.
    pub fn close(&mut self) -> Vec<Frame> {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        let mut frames: Vec<Frame> = ids
            .into_iter()
            .filter_map(|id| self.reset(id, RstStatus::CANCEL))
            .collect();
        if !self.goaway_sent && !self.goaway_received {
            self.goaway_sent = true;
            frames.push(Frame::GoAway {
                last_good_stream_id: self.last_peer_stream_id,
                status: GoAwayStatus::OK,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(stream_id: u32, payload: &'static [u8], fin: bool) -> Frame {
        Frame::Data {
            stream_id,
            fin,
            payload: Bytes::from_static(payload),
        }
    }

    fn syn(stream_id: u32) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: HeaderBlock::new().with("streamtype", "data"),
        }
    }

    #[test]
    fn client_streams_use_odd_ids_from_one() {
        let mut s = Session::new(Role::Client);
        let ids: Vec<u32> = (0..4)
            .map(|_| s.open(HeaderBlock::new()).unwrap().0)
            .collect();
        assert_eq!(ids, [1, 3, 5, 7]);
        let mut s = Session::new(Role::Server);
        assert_eq!(s.open(HeaderBlock::new()).unwrap().0, 2);
    }

    #[test]
    fn data_before_reply_is_dropped_and_after_reply_delivered() {
        let mut s = Session::new(Role::Client);
        let (id, _) = s.open(HeaderBlock::new()).unwrap();
        assert_eq!(s.recv(data(id, b"early", false)), None);
        let replied = s.recv(Frame::SynReply {
            stream_id: id,
            fin: false,
            headers: HeaderBlock::new(),
        });
        assert!(matches!(replied, Some(Event::StreamReplied { .. })));
        assert!(matches!(
            s.recv(data(id, b"x", false)),
            Some(Event::Data { .. })
        ));
    }

    #[test]
    fn stream_is_forgotten_once_both_sides_fin() {
        let mut s = Session::new(Role::Server);
        assert!(matches!(s.recv(syn(1)), Some(Event::StreamOpened { .. })));
        s.recv(data(1, b"", true));
        assert!(s.is_open(1));
        s.sent_data(1, true).unwrap();
        assert!(!s.is_open(1));
        assert_eq!(s.sent_data(1, false), Err(SessionError::UnknownStream(1)));
    }

    #[test]
    fn reused_or_oversized_stream_ids_get_protocol_error() {
        let mut s = Session::new(Role::Server);
        s.recv(syn(5));
        assert_eq!(s.recv(syn(3)), None);
        assert_eq!(
            s.poll_transmit(),
            Some(Frame::RstStream {
                stream_id: 3,
                status: RstStatus::PROTOCOL_ERROR
            })
        );
        assert_eq!(s.recv(syn(0x8000_0001)), None);
        assert!(matches!(s.poll_transmit(), Some(Frame::RstStream { .. })));
        // Parity is not checked, as in spdystream.
        assert!(matches!(s.recv(syn(8)), Some(Event::StreamOpened { .. })));
    }

    #[test]
    fn peer_pings_are_echoed_and_ours_acknowledged() {
        let mut s = Session::new(Role::Client);
        assert_eq!(s.ping(), Frame::Ping { id: 1 });
        assert_eq!(s.ping(), Frame::Ping { id: 3 });
        assert_eq!(s.recv(Frame::Ping { id: 2 }), None);
        assert_eq!(s.poll_transmit(), Some(Frame::Ping { id: 2 }));
        assert_eq!(
            s.recv(Frame::Ping { id: 1 }),
            Some(Event::PingAcked { id: 1 })
        );
    }

    #[test]
    fn ping_ids_wrap_like_spdystream() {
        let mut s = Session::new(Role::Client);
        s.next_ping_id = 0x7fff_fffd;
        assert_eq!(s.ping(), Frame::Ping { id: 0x7fff_fffd });
        assert_eq!(s.ping(), Frame::Ping { id: 1 });
    }

    #[test]
    fn nothing_is_read_after_goaway() {
        let mut s = Session::new(Role::Client);
        let (id, _) = s.open(HeaderBlock::new()).unwrap();
        let goaway = s.recv(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        });
        assert!(matches!(goaway, Some(Event::GoAway { .. })));
        assert_eq!(s.recv(Frame::Ping { id: 2 }), None);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.open(HeaderBlock::new()), Err(SessionError::GoingAway));
        assert!(s.is_open(id));
    }

    #[test]
    fn close_resets_unfinished_streams_then_goes_away() {
        let mut s = Session::new(Role::Client);
        let (a, _) = s.open(HeaderBlock::new()).unwrap();
        let (b, _) = s.open(HeaderBlock::new()).unwrap();
        for id in [a, b] {
            s.recv(Frame::SynReply {
                stream_id: id,
                fin: false,
                headers: HeaderBlock::new(),
            });
        }
        s.sent_data(b, true).unwrap();
        assert_eq!(
            s.close(),
            vec![
                Frame::RstStream {
                    stream_id: a,
                    status: RstStatus::CANCEL
                },
                Frame::GoAway {
                    last_good_stream_id: 0,
                    status: GoAwayStatus::OK
                },
            ]
        );
        assert_eq!(s.open_streams(), 0);
        assert_eq!(s.close(), vec![]);
    }

    #[test]
    fn server_goaway_names_last_accepted_stream() {
        let mut s = Session::new(Role::Server);
        s.recv(syn(1));
        s.recv(syn(3));
        let frames = s.close();
        assert_eq!(
            frames.last(),
            Some(&Frame::GoAway {
                last_good_stream_id: 3,
                status: GoAwayStatus::OK
            })
        );
    }

    #[test]
    fn reset_stream_ends_it_and_later_data_is_dropped() {
        let mut s = Session::new(Role::Server);
        s.recv(syn(1));
        let ev = s.recv(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        });
        assert!(matches!(ev, Some(Event::StreamReset { .. })));
        assert_eq!(s.recv(data(1, b"late", false)), None);
        assert_eq!(s.reset(1, RstStatus::CANCEL), None);
    }

    #[test]
    fn window_update_and_settings_are_ignored() {
        let mut s = Session::new(Role::Client);
        assert_eq!(
            s.recv(Frame::WindowUpdate {
                stream_id: 0,
                delta: 1
            }),
            None
        );
        assert_eq!(
            s.recv(Frame::Settings {
                clear: false,
                entries: vec![]
            }),
            None
        );
    }
}
