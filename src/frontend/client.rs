//! The client socket with its read buffer: reads whole packets bounded by
//! `[proxy] max_packet_bytes` (nothing is allocated for a claimed size), writes packets and ERRs.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use sluice_proto::err::ErrPacket;
use sluice_proto::framing::{self, FrameError, Packet, PacketExtent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::compress::MaybeCompressed;
use crate::tls::MaybeTls;
use tokio::net::TcpStream;

use super::SessionError;

/// The client's socket: plain TCP, or TLS after an SSLRequest.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

impl ClientStream {
    /// The TLS cipher suite and version in use, if TLS is on.
    pub fn tls_info(&self) -> Option<(String, String)> {
        match self {
            MaybeTls::Tls(t) => {
                let c = t.get_ref().1;
                Some((
                    c.negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                        .unwrap_or_default(),
                    c.protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                ))
            }
            _ => None,
        }
    }
}

pub struct ClientConn {
    /// The socket; compressed after the login when the client asked (`CLIENT_COMPRESS`).
    pub stream: MaybeCompressed<ClientStream>,
    pub rbuf: BytesMut,
    pub peer: SocketAddr,
    pub max_packet: usize,
    /// Where ERR packets sent to this client are counted (for metrics).
    pub errors: Option<std::sync::Arc<crate::metrics::ErrorCounts>>,
}

impl ClientConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, max_packet: usize) -> Self {
        ClientConn {
            stream: MaybeCompressed::new(MaybeTls::Plain(stream)),
            rbuf: BytesMut::with_capacity(16 << 10),
            peer,
            max_packet,
            errors: None,
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe: bytes read stay in the buffer.
    pub async fn fill(&mut self) -> Result<(), SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < 8 << 10 {
            self.rbuf.reserve(64 << 10);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(SessionError::ClientClosed),
            Ok(_) => Ok(()),
            Err(e) => Err(compression_error(e)),
        }
    }

    /// Waits until a whole packet is buffered and returns where it lies; the bytes stay in
    /// `rbuf` (forward `rbuf[..wire_len]`, then [`ClientConn::consume`]). Cancel-safe.
    pub async fn next_packet(&mut self) -> Result<PacketExtent, SessionError> {
        loop {
            match framing::check(&self.rbuf, self.max_packet) {
                Ok(ext) => return Ok(ext),
                Err(FrameError::Incomplete) => self.fill().await?,
                Err(FrameError::TooLarge { claimed, .. }) => {
                    return Err(SessionError::TooLarge(claimed))
                }
            }
        }
    }

    /// Reads and takes out one packet.
    pub async fn read_packet(&mut self) -> Result<Packet, SessionError> {
        let ext = self.next_packet().await?;
        Ok(framing::parse(&mut self.rbuf, ext))
    }

    /// Reads one packet without reading a byte past it (the bytes after an SSLRequest belong
    /// to the TLS handshake). Only single-frame packets: handshake packets are small.
    pub async fn read_packet_exact(&mut self) -> Result<Packet, SessionError> {
        if !self.rbuf.is_empty() {
            return self.read_packet().await;
        }
        let mut head = [0u8; 4];
        self.read_exact(&mut head).await?;
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        if len > self.max_packet.min(framing::MAX_FRAME_PAYLOAD - 1) {
            return Err(SessionError::TooLarge(len));
        }
        self.rbuf.reserve(4 + len);
        self.rbuf.extend_from_slice(&head);
        let start = self.rbuf.len();
        self.rbuf.resize(start + len, 0);
        let mut body = self.rbuf.split_off(start);
        let r = self.read_exact(&mut body).await;
        self.rbuf.unsplit(body);
        r?;
        self.read_packet().await
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SessionError> {
        match self.stream.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SessionError::ClientClosed),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }

    /// Switches the connection to TLS (after an SSLRequest; nothing was read past it).
    pub async fn start_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<(), SessionError> {
        match std::mem::replace(self.stream.get_mut(), MaybeTls::Switching) {
            MaybeTls::Plain(tcp) => {
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| SessionError::Malformed(format!("TLS handshake failed: {e}")))?;
                *self.stream.get_mut() = MaybeTls::Tls(Box::new(tls));
                Ok(())
            }
            other => {
                *self.stream.get_mut() = other;
                Err(SessionError::Malformed("a second SSLRequest".into()))
            }
        }
    }

    /// Replaces the COM_QUERY packet at the front of the buffer (`wire_len` bytes) with one
    /// carrying `sql`; returns the new packet's length. Left as it is (same length returned)
    /// when the new text would not fit one packet.
    pub fn replace_query(&mut self, wire_len: usize, sql: &[u8]) -> usize {
        if 1 + sql.len() >= framing::MAX_FRAME_PAYLOAD {
            return wire_len;
        }
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(0x03);
        payload.extend_from_slice(sql);
        self.replace_command(wire_len, &payload)
    }

    /// The payload of the command at the front of the buffer (`wire_len` bytes): borrowed
    /// when it is one frame, its frames joined otherwise.
    pub fn command_payload(&self, wire_len: usize) -> std::borrow::Cow<'_, [u8]> {
        let b = &self.rbuf[..wire_len.min(self.rbuf.len())];
        if b.len() < 2 * framing::HEADER_LEN + framing::MAX_FRAME_PAYLOAD {
            return std::borrow::Cow::Borrowed(b.get(framing::HEADER_LEN..).unwrap_or_default());
        }
        let mut out = Vec::with_capacity(b.len());
        let mut rest = b;
        while let Some(h) = framing::FrameHeader::peek(rest) {
            let end = (framing::HEADER_LEN + h.len).min(rest.len());
            out.extend_from_slice(&rest[framing::HEADER_LEN..end]);
            rest = &rest[end..];
            if h.len < framing::MAX_FRAME_PAYLOAD {
                break;
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// Replaces the command at the front of the buffer (`wire_len` bytes) with `payload`,
    /// framed from the same sequence id; returns the new command's length in the buffer.
    pub fn replace_command(&mut self, wire_len: usize, payload: &[u8]) -> usize {
        if wire_len > self.rbuf.len() {
            return wire_len;
        }
        let seq = self.rbuf.get(3).copied().unwrap_or(0);
        let rest = self.rbuf.split_off(wire_len);
        self.rbuf.clear();
        framing::write_packet(&mut self.rbuf, seq, payload);
        let new_len = self.rbuf.len();
        self.rbuf.unsplit(rest);
        new_len
    }

    /// Removes `n` bytes after the command byte of the one-frame command at the front of the
    /// buffer, in place (the header and command byte move forward; nothing is copied after
    /// them); returns the new command's length.
    pub fn strip_after_command(&mut self, wire_len: usize, n: usize) -> usize {
        let h = framing::HEADER_LEN;
        if n == 0 || wire_len > self.rbuf.len() || wire_len < h + 1 + n {
            return wire_len;
        }
        let (cmd, seq) = (self.rbuf[h], self.rbuf[3]);
        let header = framing::FrameHeader {
            len: wire_len - h - n,
            seq,
        }
        .encode();
        self.rbuf[n..n + h].copy_from_slice(&header);
        self.rbuf[n + h] = cmd;
        self.rbuf.advance(n);
        wire_len - n
    }

    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }

    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        framing::write_packet(&mut out, seq, payload);
        self.write_all(&out).await
    }

    /// Writes bytes to the client (and pushes them out of the TLS layer).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(SessionError::ClientIo)?;
        if self.stream.is_compressed() || self.stream.get_ref().is_tls() {
            self.stream.flush().await.map_err(SessionError::ClientIo)?;
        }
        Ok(())
    }

    /// Compresses the connection from now on (after the login's OK, when the client asked).
    pub fn start_compression(
        &mut self,
        algorithm: sluice_proto::compress::Algorithm,
    ) -> Result<(), SessionError> {
        // A frame may carry a whole packet of the largest size plus its header.
        self.stream
            .enable_with(
                self.max_packet.saturating_add(framing::HEADER_LEN),
                crate::compress::Peer::Client,
                algorithm,
            )
            .map_err(|e| SessionError::Malformed(e.to_string()))
    }

    pub async fn send_err(&mut self, seq: u8, err: &ErrPacket) -> Result<(), SessionError> {
        if let Some(e) = &self.errors {
            e.record(err.code);
        }
        self.write_packet(seq, &err.encode()).await
    }
}

/// A read error: a compressed frame over the packet limit is an oversized packet (1153), a
/// broken one a malformed packet; anything else is the socket's.
pub fn compression_error(e: io::Error) -> SessionError {
    match crate::compress::zerror(&e) {
        Some(sluice_proto::compress::ZError::TooLarge { claimed, .. }) => {
            SessionError::TooLarge(*claimed)
        }
        Some(z) => SessionError::Malformed(z.to_string()),
        None => SessionError::ClientIo(e),
    }
}
