//! A TLS client session on rustls's unbuffered API, so the engine owns every
//! buffer: records are read into the loop's one shared scratch buffer and
//! decrypted from there; only a partial record is kept per connection, and
//! only until it completes. An idle connection holds no TLS buffer at all.

use std::io::{self, Write};
use std::ops::Deref;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{ClientConfig, CommonState};

/// Incoming TLS bytes a connection may hold while a record or a handshake
/// message is incomplete (rustls caps handshake messages at 64 KiB).
const MAX_PENDING: usize = 80 * 1024;

/// What one [`Session::process`] call produced.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    /// Bytes of the input that are consumed.
    pub(crate) consumed: usize,
    /// Plaintext bytes appended to the read buffer.
    pub(crate) plaintext: usize,
    /// The peer sent close_notify.
    pub(crate) closed: bool,
}

pub(crate) struct Session {
    conn: UnbufferedClientConnection,
    /// Incoming bytes of an incomplete record or handshake message.
    pending: Vec<u8>,
    /// Encoded TLS bytes not yet written to the socket.
    out: Vec<u8>,
    close_queued: bool,
    peer_closed: bool,
}

impl Deref for Session {
    type Target = CommonState;

    fn deref(&self) -> &CommonState {
        &self.conn
    }
}

impl Session {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: UnbufferedClientConnection::new(config, name)?,
            pending: Vec::new(),
            out: Vec::new(),
            close_queued: false,
            peer_closed: false,
        })
    }

    /// The peer has sent close_notify (at any earlier point).
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// TLS bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Take the carried-over partial input, to be placed in front of new bytes.
    pub(crate) fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Keep `pending` (already holding just the incomplete input) as is.
    ///
    /// # Errors
    /// As [`Session::keep_pending`].
    pub(crate) fn keep_pending_vec(&mut self, pending: Vec<u8>) -> io::Result<()> {
        if pending.len() > MAX_PENDING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tls record larger than allowed",
            ));
        }
        self.pending = if pending.is_empty() {
            Vec::new()
        } else {
            pending
        };
        Ok(())
    }

    /// Keep `rest` (an incomplete record) for the next read.
    ///
    /// # Errors
    /// `InvalidData` when the peer makes us hold more than a record and a
    /// handshake message can need.
    pub(crate) fn keep_pending(&mut self, mut spare: Vec<u8>, rest: &[u8]) -> io::Result<()> {
        if rest.len() > MAX_PENDING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tls record larger than allowed",
            ));
        }
        spare.clear();
        if !rest.is_empty() {
            spare.extend_from_slice(rest);
        } else if spare.capacity() > 0 {
            spare = Vec::new();
        }
        self.pending = spare;
        Ok(())
    }

    /// Run the state machine over `input`: decrypt application data into
    /// `rbuf`, encode handshake records and encrypt `wbuf` (once the handshake
    /// allows it) into the output buffer. Stops when rustls needs more input.
    pub(crate) fn process(
        &mut self,
        input: &mut [u8],
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
    ) -> Result<Processed, rustls::Error> {
        let mut done = Processed::default();
        loop {
            let status = self.conn.process_tls_records(&mut input[done.consumed..]);
            let mut discard = status.discard;
            match status.state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        rbuf.extend_from_slice(record.payload);
                        done.plaintext += record.payload.len();
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    write_into(&mut self.out, 2048, |buf| match encode.encode(buf) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(Some(required_size)),
                        Err(_) => Err(None),
                    })
                    .map_err(|()| {
                        rustls::Error::General("cannot encode a handshake record".into())
                    })?;
                }
                ConnectionState::TransmitTlsData(mut transmit) => {
                    // The records are in `out`, which `write_to` sends in order.
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        encrypt(&mut traffic, &mut self.out, wbuf)?;
                    }
                    transmit.done();
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt(&mut traffic, &mut self.out, wbuf)?;
                    if self.close_queued {
                        self.close_queued = false;
                        // Best effort: a close that does not fit is just a FIN.
                        let _ = write_into(&mut self.out, 64, |buf| {
                            traffic.queue_close_notify(buf).map_err(|_| None)
                        });
                    }
                    done.consumed += discard;
                    return Ok(done);
                }
                ConnectionState::PeerClosed => {
                    done.closed = true;
                    self.peer_closed = true;
                }
                ConnectionState::Closed => {
                    done.closed = true;
                    self.peer_closed = true;
                    done.consumed += discard;
                    return Ok(done);
                }
                // BlockedHandshake: more input needed. Early data is server-only.
                _ => {
                    done.consumed += discard;
                    return Ok(done);
                }
            }
            done.consumed += discard;
        }
    }

    /// Queue a close_notify alert (sent by the next `process` once the
    /// handshake is done).
    pub(crate) fn queue_close_notify(&mut self) {
        self.close_queued = true;
    }

    /// Give back the output buffer while the connection is idle.
    pub(crate) fn release_buffers(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Write the output buffer until done or `WouldBlock`.
    pub(crate) fn write_to(&mut self, sock: &mut impl Write) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.out.len() {
                break Ok(());
            }
            match sock.write(&self.out[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.out.drain(..sent);
        if self.out.is_empty() && self.out.capacity() > 4096 {
            self.out = Vec::new();
        }
        result
    }
}

/// Append to `out` what `fill` writes into a slice of `room` bytes; `fill`
/// answers `Err(Some(n))` when it needs `n` bytes, `Err(None)` on failure.
fn write_into(
    out: &mut Vec<u8>,
    mut room: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), ()> {
    loop {
        let at = out.len();
        out.resize(at + room, 0);
        match fill(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(Some(needed)) if needed > room => {
                out.truncate(at);
                room = needed;
            }
            Err(_) => {
                out.truncate(at);
                return Err(());
            }
        }
    }
}

/// Encrypt all of `wbuf` into `out`, at most one 16 KiB record per call so
/// the room estimate (payload plus record overhead) holds.
fn encrypt(
    traffic: &mut rustls::unbuffered::WriteTraffic<'_, rustls::client::ClientConnectionData>,
    out: &mut Vec<u8>,
    wbuf: &mut BytesMut,
) -> Result<(), rustls::Error> {
    while !wbuf.is_empty() {
        let take = wbuf.len().min(16 * 1024);
        write_into(out, take + 128, |buf| {
            match traffic.encrypt(&wbuf[..take], buf) {
                Ok(n) => Ok(n),
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    Err(Some(required_size))
                }
                Err(_) => Err(None),
            }
        })
        .map_err(|()| rustls::Error::General("cannot encrypt application data".into()))?;
        wbuf.advance(take);
    }
    Ok(())
}
