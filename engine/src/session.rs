//! A TLS client session on rustls's unbuffered API, so the engine owns every
//! buffer: records are read into the loop's one shared scratch buffer and
//! decrypted from there, and outgoing records are encoded into the loop's one
//! shared staging buffer and written from there. Only a partial record and
//! bytes the socket would not take are kept per connection, and only until
//! they are done. An idle connection holds no TLS buffer at all.

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
    /// Encoded TLS bytes the socket did not take yet (new records queue
    /// behind them, so order is kept).
    out: Vec<u8>,
    close_queued: bool,
    peer_closed: bool,
    /// Bytes written to the socket, in all.
    written: u64,
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
            written: 0,
        })
    }

    /// Bytes written to the socket, in all.
    pub(crate) fn written(&self) -> u64 {
        self.written
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
    /// allows it) into `sealed`, or behind the unsent bytes when there are
    /// some. Stops when rustls needs more input. [`Session::send`] must
    /// follow before `sealed` serves another connection.
    pub(crate) fn process(
        &mut self,
        input: &mut [u8],
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        sealed: &mut Vec<u8>,
    ) -> Result<Processed, rustls::Error> {
        let out: &mut Vec<u8> = if self.out.is_empty() {
            sealed
        } else {
            &mut self.out
        };
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
                    write_into(out, 2048, |buf| match encode.encode(buf) {
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
                    // The records are in `out` (the sealed buffer, or behind the
                    // unsent bytes), which `send` writes in order.
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        encrypt(&mut traffic, out, wbuf)?;
                    }
                    transmit.done();
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt(&mut traffic, out, wbuf)?;
                    if self.close_queued {
                        self.close_queued = false;
                        // Best effort: a close that does not fit is just a FIN.
                        let _ = write_into(out, 64, |buf| {
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

    /// Keep what `process` staged to be sent later, leaving `sealed` empty.
    pub(crate) fn park(&mut self, sealed: &mut Vec<u8>) {
        if !sealed.is_empty() {
            self.out.extend_from_slice(sealed);
            empty(sealed);
        }
    }

    /// Write the unsent bytes, then what `process` staged, until done or
    /// `WouldBlock`; what the socket does not take is kept. `sealed` is
    /// always left empty, also on error.
    pub(crate) fn send(&mut self, sock: &mut impl Write, sealed: &mut Vec<u8>) -> io::Result<()> {
        if !self.out.is_empty() {
            // `process` stages nothing while these wait; anything staged
            // anyway queues behind them.
            self.park(sealed);
            let (sent, result) = write_some(sock, &self.out);
            self.written += sent as u64;
            self.out.drain(..sent);
            if self.out.is_empty() {
                self.out = Vec::new();
            }
            return result;
        }
        let (sent, result) = write_some(sock, sealed);
        self.written += sent as u64;
        if result.is_ok() && sent < sealed.len() {
            self.out.extend_from_slice(&sealed[sent..]);
        }
        empty(sealed);
        result
    }
}

/// Empty the shared staging buffer; one grown by a large body shrinks back
/// to a record's size, so the engine does not keep it.
fn empty(sealed: &mut Vec<u8>) {
    sealed.clear();
    // A file or streamed body is encrypted a window (256 KiB by default) at
    // a time: keeping room for one saves a large allocation per window.
    if sealed.capacity() > 1024 * 1024 {
        sealed.shrink_to(16 * 1024 + 256);
    }
}

/// Write `buf` until done, `WouldBlock` or an error; the bytes written.
#[inline]
fn write_some(sock: &mut impl Write, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut sent = 0;
    while sent < buf.len() {
        match sock.write(&buf[sent..]) {
            Ok(0) => return (sent, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (sent, Err(e)),
        }
    }
    (sent, Ok(()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes, then answers `WouldBlock` (or `fail`).
    struct Sink {
        got: Vec<u8>,
        room: usize,
        fail: bool,
    }

    impl Sink {
        fn new(room: usize, fail: bool) -> Sink {
            Sink {
                got: Vec::new(),
                room,
                fail,
            }
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn session() -> Session {
        let config = ClientConfig::builder_with_provider(Arc::new(crate::crypto_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from("a.test").expect("name");
        Session::new(Arc::new(config), name).expect("session")
    }

    #[test]
    fn staged_bytes_the_socket_refuses_are_kept_in_order_and_the_sealed_buffer_is_emptied() {
        let mut s = session();
        let mut sock = Sink::new(4, false);
        let mut sealed = b"abcdef".to_vec();
        s.send(&mut sock, &mut sealed).expect("send");
        assert_eq!(sock.got, b"abcd");
        assert!(sealed.is_empty() && s.wants_write());
        // Staged while bytes wait: queued behind them, nothing is lost.
        sealed.extend_from_slice(b"gh");
        sock.room = 100;
        s.send(&mut sock, &mut sealed).expect("send");
        assert_eq!(sock.got, b"abcdefgh");
        assert!(sealed.is_empty() && !s.wants_write());
        // park keeps bytes for a later send without writing.
        sealed.extend_from_slice(b"ij");
        s.park(&mut sealed);
        assert!(sealed.is_empty() && s.wants_write());
        s.send(&mut sock, &mut sealed).expect("send");
        assert_eq!(sock.got, b"abcdefghij");
    }

    #[test]
    fn a_failed_write_still_empties_the_shared_sealed_buffer() {
        let mut s = session();
        let mut sock = Sink::new(0, true);
        let mut sealed = b"secret of this connection".to_vec();
        assert!(s.send(&mut sock, &mut sealed).is_err());
        assert!(sealed.is_empty());
    }

    #[test]
    fn a_sealed_buffer_grown_by_a_large_body_shrinks_back() {
        let mut s = session();
        let mut sock = Sink::new(usize::MAX, false);
        let mut sealed = vec![7; 4 << 20];
        s.send(&mut sock, &mut sealed).expect("send");
        assert_eq!(sock.got.len(), 4 << 20);
        assert!(sealed.is_empty() && sealed.capacity() <= 1024 * 1024);
    }
}
