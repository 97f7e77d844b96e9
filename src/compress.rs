//! A byte stream that is compressed (`CLIENT_COMPRESS`) once the login is over, on either hop:
//! reads inflate the peer's frames, writes are collected and framed at each flush (every
//! writer in Sluice flushes after each response chunk). Before [`MaybeCompressed::enable`]
//! everything passes through untouched, so the handshake and TLS happen underneath as usual.
//!
//! Sequence ids. Frames: the peer's frame `n` is answered from `n + 1` on; a command starts
//! again at 0. Packets inside the frames: a MySQL server numbers them loosely when it
//! compresses (it resynchronises them with the frame ids at each flush, so they jump), and a
//! client numbers them after the frames it read. Sluice's relay checks packet ids as on an
//! uncompressed connection and forwards them as they are, so the reader renumbers what it
//! inflates: each packet continues from the last packet written (+1), except a client's packet
//! 0 at the start of its turn, which begins a new command. The rest of Sluice never sees the
//! difference.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use sluice_proto::compress::{self as z, FrameHead, ZError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Uncompressed bytes collected before a frame is cut even without a flush.
const FRAME_TARGET: usize = 64 << 10;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 32 << 10;

/// zlib level used by Sluice's own frames: 1, the fastest; on the rows a proxy carries it
/// keeps most of the gain of the default 6 at a fraction of its CPU.
pub const LEVEL: u32 = 1;

struct Zlib {
    /// Raw bytes read, not yet a whole frame.
    zin: BytesMut,
    /// Inflated bytes not yet handed to the reader.
    plain: BytesMut,
    /// Bytes written, not yet framed.
    pending: BytesMut,
    /// Framed bytes not yet written to the socket.
    zout: BytesMut,
    /// Sequence id of the next frame written.
    seq: u8,
    /// Who is at the other end (decides how a new command is told from a continuation).
    peer: Peer,
    /// Packet boundaries of the inflated stream and of the written one.
    read_walk: Walker,
    write_walk: Walker,
    /// The packet id the next packet read is given.
    next_read: u8,
    /// Frames were read since the last write (a new turn of the conversation).
    read_since_write: bool,
    /// Nothing was read since the last write (the peer's turn starts with its next packet).
    peer_turn_start: bool,
    /// The packet id of the last packet read, as the peer sent it.
    last_read: u8,
    /// Inflated bytes one frame may carry.
    max_frame: usize,
    inflater: z::Inflater,
    deflater: z::Deflater,
}

/// A stream that passes bytes through, or compresses them once enabled.
pub struct MaybeCompressed<S> {
    inner: S,
    z: Option<Box<Zlib>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MaybeCompressed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}{}",
            self.inner,
            if self.z.is_some() { ", compressed" } else { "" }
        )
    }
}

impl<S> MaybeCompressed<S> {
    pub fn new(inner: S) -> Self {
        MaybeCompressed { inner, z: None }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn is_compressed(&self) -> bool {
        self.z.is_some()
    }

    /// Compresses from now on. `max_frame` bounds what one frame of the peer may inflate to
    /// (`max_packet_bytes` plus a header): a frame claiming more is an error of kind
    /// `InvalidData` carrying a [`ZError::TooLarge`].
    pub fn enable(&mut self, max_frame: usize, peer: Peer) -> Result<(), ZError> {
        self.enable_with(max_frame, peer, z::Algorithm::Zlib)
    }

    /// [`MaybeCompressed::enable`] with zstd or zlib. Fails only when zstd cannot allocate
    /// its context.
    pub fn enable_with(
        &mut self,
        max_frame: usize,
        peer: Peer,
        algorithm: z::Algorithm,
    ) -> Result<(), ZError> {
        let inflater = z::Inflater::new(algorithm)?;
        self.z = Some(Box::new(Zlib {
            zin: BytesMut::new(),
            plain: BytesMut::new(),
            pending: BytesMut::new(),
            zout: BytesMut::new(),
            seq: 0,
            peer,
            read_walk: Walker::default(),
            write_walk: Walker::default(),
            next_read: 0,
            read_since_write: false,
            peer_turn_start: true,
            last_read: 0,
            max_frame,
            inflater,
            deflater: z::Deflater::new(algorithm, LEVEL),
        }));
        Ok(())
    }
}

/// The other end of a compressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A client: it starts each command with packet 0.
    Client,
    /// A server: it only ever answers, continuing the sequence.
    Server,
}

/// Follows packet boundaries through a byte stream that arrives in arbitrary pieces, and
/// hands each packet's sequence-id byte to a callback (which may rewrite it).
#[derive(Debug, Default)]
struct Walker {
    /// Length bytes of the header being read.
    len: [u8; 3],
    /// Header bytes seen of the current header (0..=2; the 4th is the sequence id).
    have: usize,
    /// Body bytes of the current packet still to come.
    body_left: usize,
}

impl Walker {
    /// At a packet boundary (the next byte starts a header).
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    fn walk(&mut self, bytes: &mut [u8], mut on_seq: impl FnMut(&mut u8)) {
        let mut i = 0;
        while i < bytes.len() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len() - i);
                i += n;
                self.body_left -= n;
            } else if self.have < 3 {
                self.len[self.have] = bytes[i];
                self.have += 1;
                i += 1;
            } else {
                on_seq(&mut bytes[i]);
                i += 1;
                self.have = 0;
                self.body_left = usize::from(self.len[0])
                    | usize::from(self.len[1]) << 8
                    | usize::from(self.len[2]) << 16;
            }
        }
    }
}

/// The compression error inside an I/O error, if that is what it is.
pub fn zerror(e: &io::Error) -> Option<&ZError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<ZError>())
}

fn invalid(e: ZError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Zlib {
    /// Inflates the first buffered frame if it is whole; `Ok(false)` when more bytes are needed.
    fn take_frame(&mut self) -> io::Result<bool> {
        let Some(h) = FrameHead::peek(&self.zin) else {
            return Ok(false);
        };
        z::check_head(&h, self.max_frame).map_err(invalid)?;
        let total = z::HEADER_LEN + h.len;
        if self.zin.len() < total {
            self.zin.reserve(total - self.zin.len());
            return Ok(false);
        }
        let at = self.plain.len();
        z::inflate(
            &mut self.inflater,
            &h,
            &self.zin[z::HEADER_LEN..total],
            &mut self.plain,
        )
        .map_err(invalid)?;
        self.zin.advance(total);
        self.seq = h.seq.wrapping_add(1);
        self.read_since_write = true;
        let (next, turn_start, last) = (
            &mut self.next_read,
            &mut self.peer_turn_start,
            &mut self.last_read,
        );
        let peer = self.peer;
        self.read_walk.walk(&mut self.plain[at..], |seq| {
            // A client's packet 0 is a new command (commands without an answer, such as
            // COM_STMT_CLOSE, are followed by the next one at once), unless it is a long
            // upload wrapping around from 255.
            let new_command = peer == Peer::Client && *seq == 0 && (*turn_start || *last != 255);
            *last = *seq;
            if !new_command {
                *seq = *next;
            }
            *next = seq.wrapping_add(1);
            *turn_start = false;
        });
        Ok(true)
    }

    /// Takes `buf` to be framed (all of it: the caller bounds its length).
    fn take_write(&mut self, buf: &[u8]) {
        let turn_start = std::mem::take(&mut self.read_since_write);
        if turn_start {
            // What belongs to the previous turn goes in frames of its own.
            self.cut();
        }
        let at = self.pending.len();
        self.pending.extend_from_slice(buf);
        let mut first = turn_start && self.write_walk.at_boundary();
        let mut new_command = false;
        let (next, peer_turn) = (&mut self.next_read, &mut self.peer_turn_start);
        self.write_walk.walk(&mut self.pending[at..], |seq| {
            new_command |= first && *seq == 0;
            first = false;
            *next = seq.wrapping_add(1);
            *peer_turn = true;
        });
        // A new command to a server starts its frames at 0 again.
        if new_command && self.peer == Peer::Server {
            self.seq = 0;
        }
    }

    /// Frames what was written since the last frame.
    fn cut(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(z::MAX_FRAME);
            z::deflate_frame(
                &mut self.deflater,
                &self.pending[..n],
                self.seq,
                &mut self.zout,
            );
            self.seq = self.seq.wrapping_add(1);
            self.pending.advance(n);
        }
    }
}

/// Writes out every framed byte.
fn poll_drain<S: AsyncWrite + Unpin>(
    inner: &mut S,
    zl: &mut Zlib,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !zl.zout.is_empty() {
        let n = ready!(Pin::new(&mut *inner).poll_write(cx, &zl.zout))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        zl.zout.advance(n);
    }
    Poll::Ready(Ok(()))
}

impl<S: AsyncRead + Unpin> AsyncRead for MaybeCompressed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(zl) = this.z.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if !zl.plain.is_empty() {
                let n = zl.plain.len().min(buf.remaining());
                buf.put_slice(&zl.plain[..n]);
                zl.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if zl.take_frame()? {
                continue;
            }
            let at = zl.zin.len();
            zl.zin.resize(at + READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut zl.zin[at..]);
            let r = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            zl.zin.truncate(at + got);
            ready!(r)?;
            if got == 0 {
                return if zl.zin.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a compressed frame",
                    )))
                };
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaybeCompressed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(zl) = this.z.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if zl.pending.len() >= FRAME_TARGET {
            zl.cut();
        }
        // Back-pressure: nothing more is taken while framed bytes wait for the socket.
        ready!(poll_drain(&mut this.inner, zl, cx))?;
        let n = buf.len().min(FRAME_TARGET - zl.pending.len());
        zl.take_write(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(zl) = this.z.as_deref_mut() {
            zl.cut();
            ready!(poll_drain(&mut this.inner, zl, cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    /// MySQL packets of the given sizes and sequence ids, as one byte string.
    fn packets(list: &[(usize, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(len, seq) in list {
            out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
            out.push(seq);
            out.extend((0..len).map(|i| (i % 251) as u8));
        }
        out
    }

    /// The sequence ids of a packet byte string.
    fn seqs(mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while bytes.len() >= 4 {
            let len =
                usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
            out.push(bytes[3]);
            bytes = &bytes[4 + len..];
        }
        out
    }

    async fn read_n<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn bytes_cross_compressed_in_both_directions_in_any_chunking() {
        // `a` is Sluice towards a server, `b` is Sluice towards a client.
        let (a, b) = duplex(1 << 16);
        let (mut a, mut b) = (MaybeCompressed::new(a), MaybeCompressed::new(b));
        // Before enabling: passthrough.
        a.write_all(b"hello").await.unwrap();
        assert_eq!(read_n(&mut b, 5).await, b"hello");
        a.enable(1 << 20, Peer::Server).unwrap();
        b.enable(1 << 20, Peer::Client).unwrap();
        // A command and its continuation (an upload), in sizes that straddle frames and the
        // pieces they are written in, with an empty packet at the end.
        let list: Vec<(usize, u8)> = (0..40u32)
            .map(|i| ((i as usize * 7_919) % 30_000, i as u8))
            .chain([(0, 40)])
            .collect();
        let data = packets(&list);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for c in sent.chunks(7_777) {
                a.write_all(c).await.unwrap();
                a.flush().await.unwrap();
            }
            a
        });
        assert_eq!(read_n(&mut b, data.len()).await, data);
        let mut a = writer.await.unwrap();
        // The answer continues the sequence; its frames continue from the last frame read.
        let answer = packets(&[(3, 41), (100, 42)]);
        b.write_all(&answer).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(read_n(&mut a, answer.len()).await, answer);
    }

    #[tokio::test]
    async fn packet_ids_are_renumbered_as_on_an_uncompressed_connection() {
        let (a, b) = duplex(1 << 16);
        let (mut a, mut b) = (MaybeCompressed::new(a), MaybeCompressed::new(b));
        a.enable(1 << 20, Peer::Server).unwrap();
        b.enable(1 << 20, Peer::Client).unwrap();
        // A command (packet 0) in frame 0.
        let cmd = packets(&[(20, 0)]);
        a.write_all(&cmd).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(seqs(&read_n(&mut b, cmd.len()).await), [0]);
        // A server's answer with the loose ids a compressing server sends: renumbered 1, 2, ...
        let answer = packets(&[(5, 1), (5, 2), (70, 5), (0, 5), (9, 9)]);
        b.write_all(&answer).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(seqs(&read_n(&mut a, answer.len()).await), [1, 2, 3, 4, 5]);
        // The next command starts the frames at 0 again, as the server insists.
        let cmd = packets(&[(60, 0)]);
        a.write_all(&cmd).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(seqs(&read_n(&mut b, cmd.len()).await), [0]);
        assert_eq!(
            b.z.as_ref().unwrap().seq,
            1,
            "the command's frame was frame 0"
        );
        // A client's commands without an answer (COM_STMT_CLOSE) followed at once by the
        // next: both stay packet 0.
        let two = packets(&[(5, 0), (30, 0)]);
        a.write_all(&two).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(seqs(&read_n(&mut b, two.len()).await), [0, 0]);
        // An upload that wraps around 255, with the client's ids off by one from Sluice's
        // (it numbered after the frames): renumbered to follow the last packet written.
        let ask = packets(&[(10, 1)]);
        b.write_all(&ask).await.unwrap();
        b.flush().await.unwrap();
        read_n(&mut a, ask.len()).await;
        let upload: Vec<(usize, u8)> = (0..300u32).map(|i| (3, (i + 3) as u8)).collect();
        let upload = packets(&upload);
        a.write_all(&upload).await.unwrap();
        a.flush().await.unwrap();
        let got = seqs(&read_n(&mut b, upload.len()).await);
        let want: Vec<u8> = (0..300u32).map(|i| (i + 2) as u8).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_an_invalid_data_error_with_the_claim() {
        let (mut raw, b) = duplex(1 << 16);
        let mut b = MaybeCompressed::new(b);
        b.enable(1024, Peer::Client).unwrap();
        // A frame that claims 2 MiB once inflated.
        raw.write_all(&[10, 0, 0, 0, 0, 0, 0x20]).await.unwrap();
        let mut buf = [0u8; 16];
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            zerror(&e),
            Some(ZError::TooLarge {
                claimed: 2097152,
                ..
            })
        ));
    }
}
