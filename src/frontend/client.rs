//! The client socket with its read buffer: reads whole packets bounded by
//! `[proxy] max_packet_bytes` (nothing is allocated for a claimed size), writes packets and ERRs.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use sluice_proto::err::ErrPacket;
use sluice_proto::framing::{self, FrameError, Packet, PacketExtent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::SessionError;

pub struct ClientConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub peer: SocketAddr,
    pub max_packet: usize,
    /// Where ERR packets sent to this client are counted (for metrics).
    pub errors: Option<std::sync::Arc<crate::metrics::ErrorCounts>>,
}

impl ClientConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, max_packet: usize) -> Self {
        ClientConn {
            stream,
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
            Err(e) => Err(SessionError::ClientIo(e)),
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

    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }

    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        framing::write_packet(&mut out, seq, payload);
        self.stream
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)
    }

    pub async fn send_err(&mut self, seq: u8, err: &ErrPacket) -> Result<(), SessionError> {
        if let Some(e) = &self.errors {
            e.record(err.code);
        }
        self.write_packet(seq, &err.encode()).await
    }
}
