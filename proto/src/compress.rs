//! The compressed protocol (`CLIENT_COMPRESS` with zlib, `CLIENT_ZSTD_COMPRESSION_ALGORITHM`
//! with zstd): after the login, each side sends its bytes in frames of a 7-byte header — 3
//! bytes of payload length, 1 byte of sequence id, 3 bytes of uncompressed length (0: the
//! payload is stored as is) — and a zlib stream or a zstd frame. Frames carry a
//! byte stream: one MySQL packet may span several frames and one frame may hold several
//! packets.
//!
//! Inflation is bounded by the frame's claimed length and by the caller's maximum: a frame that
//! claims more than the maximum is refused on its header, and one whose stream inflates past
//! its claim is refused after one byte too many — nothing is ever allocated for a claimed size.

use bytes::BytesMut;
pub use flate2::{Compress, Decompress};
use flate2::{Compression, FlushCompress, FlushDecompress, Status};

/// Length of a compressed frame's header.
pub const HEADER_LEN: usize = 7;
/// Payloads shorter than this are sent stored (as MySQL does: deflating them gains nothing).
pub const MIN_COMPRESS_LEN: usize = 50;
/// Largest payload one frame can carry (3-byte lengths).
pub const MAX_FRAME: usize = 0xFF_FFFF;
/// Inflated bytes produced per step (the output grows by this much at most at a time).
const STEP: usize = 64 << 10;

/// A compressed frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Bytes of payload after the header.
    pub len: usize,
    pub seq: u8,
    /// Length once inflated; 0 when the payload is stored as is.
    pub plain_len: usize,
}

impl FrameHead {
    pub fn peek(buf: &[u8]) -> Option<FrameHead> {
        let h = buf.get(..HEADER_LEN)?;
        Some(FrameHead {
            len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
            seq: h[3],
            plain_len: usize::from(h[4]) | usize::from(h[5]) << 8 | usize::from(h[6]) << 16,
        })
    }

    /// Bytes the frame holds once inflated.
    pub fn inflated_len(&self) -> usize {
        if self.plain_len == 0 {
            self.len
        } else {
            self.plain_len
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZError {
    #[error("a compressed frame of {claimed} bytes exceeds the limit of {max}")]
    TooLarge { claimed: usize, max: usize },
    #[error("a compressed frame does not inflate to its stated {claimed} bytes ({detail})")]
    Length { claimed: usize, detail: String },
    #[error("a compressed frame is not a valid zlib stream: {0}")]
    Corrupt(String),
}

/// Checks a frame's header against `max` (inflated bytes one frame may carry) before its
/// payload is waited for.
pub fn check_head(h: &FrameHead, max: usize) -> Result<(), ZError> {
    let max = max.min(MAX_FRAME);
    if h.inflated_len() > max {
        return Err(ZError::TooLarge {
            claimed: h.inflated_len(),
            max,
        });
    }
    // Deflate's worst case grows data by 5 bytes per 16 KiB block plus a few bytes of header.
    let bound = max + max / 1024 + 64;
    if h.len > bound {
        return Err(ZError::TooLarge {
            claimed: h.len,
            max: bound,
        });
    }
    Ok(())
}

/// The compression algorithm of a connection: zlib (`CLIENT_COMPRESS`) or zstd
/// (`CLIENT_ZSTD_COMPRESSION_ALGORITHM`, MySQL 8.0.18+); both use the same frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Zlib,
    /// With the level the client asked for (1–22).
    Zstd(i32),
}

/// Inflates frames of one connection.
pub enum Inflater {
    Zlib(Decompress),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

/// Deflates frames of one connection.
pub enum Deflater {
    Zlib(Compress),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Inflater {
    pub fn new(a: Algorithm) -> Result<Inflater, ZError> {
        Ok(match a {
            Algorithm::Zlib => Inflater::Zlib(decompressor()),
            Algorithm::Zstd(_) => Inflater::Zstd(Box::new(
                zstd::stream::raw::Decoder::new().map_err(|e| ZError::Corrupt(e.to_string()))?,
            )),
        })
    }

    fn reset(&mut self) -> Result<(), ZError> {
        match self {
            Inflater::Zlib(z) => z.reset(true),
            Inflater::Zstd(d) => {
                use zstd::stream::raw::Operation;
                d.reinit().map_err(|e| ZError::Corrupt(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Inflates from `input` into `output`: (bytes consumed, bytes produced, stream ended).
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize, bool), ZError> {
        match self {
            Inflater::Zlib(z) => {
                let (i, o) = (z.total_in(), z.total_out());
                let status = z
                    .decompress(input, output, FlushDecompress::None)
                    .map_err(|e| ZError::Corrupt(e.to_string()))?;
                Ok((
                    (z.total_in() - i) as usize,
                    (z.total_out() - o) as usize,
                    status == Status::StreamEnd,
                ))
            }
            Inflater::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(output);
                let hint = d
                    .run(&mut inb, &mut outb)
                    .map_err(|e| ZError::Corrupt(e.to_string()))?;
                Ok((inb.pos(), outb.pos(), hint == 0))
            }
        }
    }
}

impl Deflater {
    /// A deflater for `a` (zlib at `zlib_level`; zstd at the level the client asked for).
    pub fn new(a: Algorithm, zlib_level: u32) -> Deflater {
        match a {
            Algorithm::Zlib => Deflater::Zlib(compressor(zlib_level)),
            Algorithm::Zstd(level) => Deflater::Zstd(Box::new(
                zstd::bulk::Compressor::new(level.clamp(1, 22))
                    .unwrap_or_else(|_| zstd::bulk::Compressor::default()),
            )),
        }
    }

    /// Compresses `plain` into `room` (as long as `plain`); `None` when it does not shrink.
    fn squeeze(&mut self, plain: &[u8], room: &mut [u8]) -> Option<usize> {
        match self {
            Deflater::Zlib(z) => {
                z.reset();
                match z.compress(plain, room, FlushCompress::Finish) {
                    Ok(Status::StreamEnd) => Some(z.total_out() as usize),
                    _ => None,
                }
            }
            Deflater::Zstd(c) => c.compress_to_buffer(plain, room).ok(),
        }
    }
}

/// Inflates the payload of one frame (`h` checked with [`check_head`]) onto `out`, growing it
/// by at most 64 KiB at a time and by at most one byte past the frame's claim.
pub fn inflate(
    z: &mut Inflater,
    h: &FrameHead,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), ZError> {
    if h.plain_len == 0 {
        out.extend_from_slice(payload);
        return Ok(());
    }
    z.reset()?;
    let claimed = h.plain_len;
    let start_len = out.len();
    let mut consumed = 0;
    loop {
        let produced = out.len() - start_len;
        // One byte more than the claim may be asked for: that is how a lie is caught.
        let room = (claimed + 1 - produced).min(STEP);
        let at = out.len();
        out.resize(at + room, 0);
        let r = z.step(&payload[consumed..], &mut out[at..]);
        let (used, made, ended) = match r {
            Ok(v) => v,
            Err(e) => {
                out.truncate(at);
                return Err(e);
            }
        };
        out.truncate(at + made);
        consumed += used;
        let produced = out.len() - start_len;
        if produced > claimed {
            return Err(ZError::Length {
                claimed,
                detail: "it inflates to more".into(),
            });
        }
        if ended && produced == claimed {
            return Ok(());
        }
        if ended {
            return Err(ZError::Length {
                claimed,
                detail: format!("it ends after {produced}"),
            });
        }
        if made == 0 && used == 0 {
            return Err(ZError::Length {
                claimed,
                detail: format!("the stream is cut after {produced}"),
            });
        }
    }
}

/// Frames `plain` (at most [`MAX_FRAME`] bytes) onto `out` with sequence id `seq`: compressed,
/// or stored when it is short or does not shrink.
pub fn deflate_frame(z: &mut Deflater, plain: &[u8], seq: u8, out: &mut BytesMut) {
    debug_assert!(plain.len() <= MAX_FRAME);
    let head_at = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut stored = plain.len() < MIN_COMPRESS_LEN;
    if !stored {
        let body_at = out.len();
        // Room for the stored size: a frame that would not shrink is sent stored anyway.
        out.resize(body_at + plain.len(), 0);
        match z.squeeze(plain, &mut out[body_at..]) {
            Some(n) => out.truncate(body_at + n),
            None => {
                out.truncate(body_at);
                stored = true;
            }
        }
    }
    if stored {
        out.extend_from_slice(plain);
    }
    let len = out.len() - head_at - HEADER_LEN;
    let plain_len = if stored { 0 } else { plain.len() };
    let h = &mut out[head_at..head_at + HEADER_LEN];
    h[..3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
    h[3] = seq;
    h[4..].copy_from_slice(&(plain_len as u32).to_le_bytes()[..3]);
}

/// A deflater at `level` (0–9) with the zlib header MySQL expects.
pub fn compressor(level: u32) -> Compress {
    Compress::new(Compression::new(level.min(9)), true)
}

/// An inflater for zlib streams.
pub fn decompressor() -> Decompress {
    Decompress::new(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Algorithm; 2] = [Algorithm::Zlib, Algorithm::Zstd(3)];

    fn roundtrip(a: Algorithm, plain: &[u8]) -> BytesMut {
        let mut framed = BytesMut::new();
        deflate_frame(&mut Deflater::new(a, 6), plain, 3, &mut framed);
        let h = FrameHead::peek(&framed).unwrap();
        assert_eq!(h.seq, 3);
        assert_eq!(h.len, framed.len() - HEADER_LEN);
        check_head(&h, 1 << 20).unwrap();
        let mut out = BytesMut::new();
        inflate(
            &mut Inflater::new(a).unwrap(),
            &h,
            &framed[HEADER_LEN..],
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], plain);
        framed
    }

    #[test]
    fn frames_round_trip_stored_or_deflated() {
        for a in BOTH {
            round_trips(a);
        }
    }

    fn round_trips(a: Algorithm) {
        let roundtrip = |p: &[u8]| roundtrip(a, p);
        // Short: stored, plain length 0.
        let f = roundtrip(b"\x01\x00\x00\x00\x0e");
        assert_eq!(&f[4..7], &[0, 0, 0]);
        // Repetitive: deflated, much shorter.
        let rows = b"row 1234567890 abcdef ".repeat(1000);
        let f = roundtrip(&rows);
        assert!(f.len() < rows.len() / 10, "{}", f.len());
        // Random bytes do not shrink: stored.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let f = roundtrip(&noise);
        assert_eq!(FrameHead::peek(&f).unwrap().plain_len, 0);
        // Larger than one inflation step.
        roundtrip(&b"x".repeat(300_000));
    }

    #[test]
    fn a_frame_that_claims_too_much_is_refused_on_its_header() {
        let h = FrameHead {
            len: 100,
            seq: 0,
            plain_len: 2 << 20,
        };
        assert!(matches!(
            check_head(&h, 1 << 20),
            Err(ZError::TooLarge {
                claimed: 2097152,
                ..
            })
        ));
        let stored = FrameHead {
            len: 3 << 20,
            seq: 0,
            plain_len: 0,
        };
        assert!(check_head(&stored, 1 << 20).is_err());
    }

    #[test]
    fn a_bomb_that_inflates_past_its_claim_stops_one_step_later() {
        for a in BOTH {
            bomb(a);
        }
    }

    fn bomb(a: Algorithm) {
        // 16 MiB of zeros compress to at most about 16 KiB; the header claims 100 bytes.
        let bomb = vec![0u8; MAX_FRAME];
        let mut framed = BytesMut::new();
        deflate_frame(&mut Deflater::new(a, 9), &bomb, 0, &mut framed);
        let mut h = FrameHead::peek(&framed).unwrap();
        assert!(h.len < 64 << 10);
        h.plain_len = 100;
        let mut out = BytesMut::new();
        let r = inflate(
            &mut Inflater::new(a).unwrap(),
            &h,
            &framed[HEADER_LEN..],
            &mut out,
        );
        assert!(
            matches!(r, Err(ZError::Length { claimed: 100, .. })),
            "{a:?}: {r:?}"
        );
        assert!(out.len() <= 101, "{}", out.len());
    }

    #[test]
    fn short_truncated_and_corrupt_streams_are_refused() {
        for a in BOTH {
            refused(a);
        }
    }

    fn refused(a: Algorithm) {
        let plain = b"hello compressed world ".repeat(20);
        let mut framed = BytesMut::new();
        deflate_frame(&mut Deflater::new(a, 6), &plain, 0, &mut framed);
        let h = FrameHead::peek(&framed).unwrap();
        let body = &framed[HEADER_LEN..];
        let mut z = Inflater::new(a).unwrap();
        // Claims more than the stream holds.
        let long = FrameHead {
            plain_len: h.plain_len + 10,
            ..h
        };
        let r = inflate(&mut z, &long, body, &mut BytesMut::new());
        assert!(matches!(r, Err(ZError::Length { .. })), "{r:?}");
        // Cut in the middle.
        let r = inflate(&mut z, &h, &body[..body.len() / 2], &mut BytesMut::new());
        assert!(matches!(r, Err(ZError::Length { .. })), "{r:?}");
        // Not zlib at all.
        let r = inflate(&mut z, &h, &[0xFFu8; 40], &mut BytesMut::new());
        assert!(matches!(r, Err(ZError::Corrupt(_))), "{a:?}: {r:?}");
        // The same inflater still works after errors.
        let mut out = BytesMut::new();
        inflate(&mut z, &h, body, &mut out).unwrap();
        assert_eq!(&out[..], &plain[..]);
    }
}
