//! A connection's pipe and its plaintext buffers, and the two passes that
//! move bytes through them: a read (decrypting TLS records from the shared
//! scratch buffer into plaintext) and a write (encrypting into the shared
//! sealed buffer). What the bytes mean is the connection's and the
//! engine's business.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};

use crate::session::Session;
use crate::sock::Sock;

/// Result of one read pass.
#[derive(Debug, Default)]
pub(in crate::engine) struct ReadPass {
    /// Plaintext bytes appended to the read buffer.
    pub(in crate::engine) bytes: usize,
    /// The peer closed (TCP FIN or TLS close_notify).
    pub(in crate::engine) eof: bool,
    /// Over TLS, the TCP connection ended without a close_notify: whatever a
    /// close-delimited body held may have been cut by an attacker.
    pub(in crate::engine) unclean: bool,
    /// The read budget ran out before `WouldBlock`: read again later.
    pub(in crate::engine) more: bool,
}

/// Failure of a read or write pass.
#[derive(Debug)]
pub(in crate::engine) enum IoFailure {
    Io(io::Error),
    Tls(rustls::Error),
}

/// The pipe and its plaintext, with what it counted.
#[derive(Default)]
pub(super) struct Link {
    pub(super) sock: Option<Sock>,
    pub(super) peer_addr: Option<SocketAddr>,
    /// Plaintext received and not yet consumed by a codec.
    pub(super) rbuf: BytesMut,
    /// Plaintext to send (before TLS).
    pub(super) wbuf: BytesMut,
    /// Plaintext bytes read, in all (for the receive-stall deadline).
    pub(super) bytes_in: u64,
    /// Bytes written to a plain socket, in all (TLS counts its own).
    pub(super) plain_out: u64,
}

impl Link {
    pub(super) fn read_pass(
        &mut self,
        mut tls: Option<&mut Session>,
        scratch: &mut [u8],
        sealed: &mut Vec<u8>,
        budget: usize,
        stop_short: bool,
    ) -> Result<ReadPass, IoFailure> {
        let mut pass = ReadPass::default();
        let Some(sock) = self.sock.as_mut() else {
            return Ok(pass);
        };
        loop {
            if pass.bytes >= budget {
                pass.more = true;
                return Ok(pass);
            }
            let Some(tls) = tls.as_deref_mut() else {
                match sock.read(scratch) {
                    Ok(0) => {
                        pass.eof = true;
                        return Ok(pass);
                    }
                    Ok(n) => {
                        self.rbuf.extend_from_slice(&scratch[..n]);
                        pass.bytes += n;
                        if stop_short && n < scratch.len() {
                            return Ok(pass);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pass),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(IoFailure::Io(e)),
                }
                continue;
            };
            // Carried-over partial input goes in front of the new bytes; in the
            // rare case it nearly fills the scratch, it becomes the buffer.
            let mut pending = tls.take_pending();
            let carried = pending.len();
            let in_scratch = carried + 16 * 1024 <= scratch.len();
            let buf: &mut [u8] = if in_scratch {
                scratch[..carried].copy_from_slice(&pending);
                scratch
            } else {
                pending.resize(carried + 16 * 1024, 0);
                &mut pending
            };
            let mut fin = false;
            let (filled, stop) = match sock.read(&mut buf[carried..]) {
                Ok(0) => {
                    fin = true;
                    (carried, true)
                }
                Ok(n) => (carried + n, stop_short && carried + n < buf.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (carried, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (carried, false),
                Err(e) => return Err(IoFailure::Io(e)),
            };
            let done = tls.process(&mut buf[..filled], &mut self.rbuf, &mut self.wbuf, sealed);
            tls.park(sealed);
            let done = done.map_err(IoFailure::Tls)?;
            pass.bytes += done.plaintext;
            pass.eof |= done.closed || fin;
            pass.unclean |= fin && !done.closed && !tls.peer_closed();
            let consumed = done.consumed.min(filled);
            if in_scratch {
                tls.keep_pending(pending, &scratch[consumed..filled])
            } else {
                pending.copy_within(consumed..filled, 0);
                pending.truncate(filled - consumed);
                tls.keep_pending_vec(pending)
            }
            .map_err(IoFailure::Io)?;
            if stop || pass.eof {
                return Ok(pass);
            }
        }
    }

    pub(super) fn flush(
        &mut self,
        tls: Option<&mut Session>,
        sealed: &mut Vec<u8>,
    ) -> Result<(), IoFailure> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        // What an https proxy's session holds goes first (nothing, on a
        // plain socket).
        sock.push().map_err(IoFailure::Io)?;
        let Some(tls) = tls else {
            while !self.wbuf.is_empty() {
                match sock.write(&self.wbuf) {
                    Ok(0) => return Err(IoFailure::Io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.wbuf.advance(n);
                        self.plain_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(IoFailure::Io(e)),
                }
            }
            return Ok(());
        };
        if tls.is_handshaking() || !self.wbuf.is_empty() {
            let mut pending = tls.take_pending();
            let done = tls.process(&mut pending, &mut self.rbuf, &mut self.wbuf, sealed);
            let sent = tls.send(sock, sealed);
            let done = done.map_err(IoFailure::Tls)?;
            let consumed = done.consumed.min(pending.len());
            pending.drain(..consumed);
            tls.keep_pending_vec(pending).map_err(IoFailure::Io)?;
            return sent.map_err(IoFailure::Io);
        }
        tls.send(sock, sealed).map_err(IoFailure::Io)
    }
}
