//! Packet framing: a 3-byte little-endian payload length and a 1-byte sequence id, then the
//! payload. A payload of 0xFFFFFF bytes or more is split across frames of exactly 0xFFFFFF
//! bytes, the last one shorter; when the payload is an exact multiple of 0xFFFFFF, an empty
//! frame ends it.
//!
//! Decoding is two-step (as in mini-redis): [`check`] tells, without allocating, whether a whole
//! logical packet is buffered and how long it is; [`parse`] then takes it out of the buffer.
//! "Not all buffered yet" is [`FrameError::Incomplete`], a cheap variant, not a failure.

use bytes::{Buf, Bytes, BytesMut};

/// The largest payload one frame carries.
pub const MAX_FRAME_PAYLOAD: usize = 0xFF_FFFF;
/// Bytes of header before each frame's payload.
pub const HEADER_LEN: usize = 4;

/// Why [`check`] cannot hand out a packet (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More bytes are needed; read from the socket and try again.
    #[error("incomplete packet")]
    Incomplete,
    /// The packet claims a payload longer than the caller allows. Nothing was allocated for it.
    #[error("packet of at least {claimed} bytes exceeds the maximum of {max}")]
    TooLarge { claimed: usize, max: usize },
}

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes in this frame (at most [`MAX_FRAME_PAYLOAD`]).
    pub len: usize,
    /// Sequence id.
    pub seq: u8,
}

impl FrameHeader {
    /// Reads a frame header from the first four bytes of `buf`, if present.
    pub fn peek(buf: &[u8]) -> Option<FrameHeader> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        Some(FrameHeader {
            len: usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16,
            seq: buf[3],
        })
    }

    /// Whether another frame of the same logical packet follows this one.
    pub fn continues(&self) -> bool {
        self.len == MAX_FRAME_PAYLOAD
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; 4] {
        let l = self.len as u32;
        [l as u8, (l >> 8) as u8, (l >> 16) as u8, self.seq]
    }
}

/// What [`check`] found: a whole logical packet at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketExtent {
    /// Bytes the packet takes in the buffer, headers included.
    pub wire_len: usize,
    /// Payload bytes, all frames together.
    pub payload_len: usize,
    /// Number of frames.
    pub frames: usize,
    /// Sequence id of the first frame.
    pub first_seq: u8,
    /// Sequence id of the last frame.
    pub last_seq: u8,
}

/// Checks whether `buf` starts with a whole logical packet whose payload is at most `max`
/// bytes. Allocates nothing.
pub fn check(buf: &[u8], max: usize) -> Result<PacketExtent, FrameError> {
    let mut off = 0usize;
    let mut payload = 0usize;
    let mut frames = 0usize;
    let mut first_seq = 0u8;
    loop {
        let h = FrameHeader::peek(&buf[off..]).ok_or(FrameError::Incomplete)?;
        if frames == 0 {
            first_seq = h.seq;
        }
        payload += h.len;
        if payload > max {
            return Err(FrameError::TooLarge {
                claimed: payload,
                max,
            });
        }
        frames += 1;
        off += HEADER_LEN + h.len;
        if buf.len() < off {
            return Err(FrameError::Incomplete);
        }
        if !h.continues() {
            return Ok(PacketExtent {
                wire_len: off,
                payload_len: payload,
                frames,
                first_seq,
                last_seq: h.seq,
            });
        }
    }
}

/// A logical packet taken out of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first frame.
    pub seq: u8,
    /// Sequence id of the last frame (equal to `seq` unless the packet was split).
    pub last_seq: u8,
    pub payload: Bytes,
}

/// Takes the packet described by `ext` (from [`check`] on the same buffer) out of `buf`.
/// A single-frame packet is split off without copying; a multi-frame one is joined.
pub fn parse(buf: &mut BytesMut, ext: PacketExtent) -> Packet {
    if ext.frames == 1 {
        let mut frame = buf.split_to(ext.wire_len);
        frame.advance(HEADER_LEN);
        return Packet {
            seq: ext.first_seq,
            last_seq: ext.last_seq,
            payload: frame.freeze(),
        };
    }
    let mut payload = BytesMut::with_capacity(ext.payload_len);
    let mut left = ext.frames;
    while left > 0 {
        let h = FrameHeader::peek(buf).expect("checked by check()");
        buf.advance(HEADER_LEN);
        payload.extend_from_slice(&buf[..h.len]);
        buf.advance(h.len);
        left -= 1;
    }
    Packet {
        seq: ext.first_seq,
        last_seq: ext.last_seq,
        payload: payload.freeze(),
    }
}

/// Appends `payload` framed with sequence ids starting at `seq`, split at 0xFFFFFF bytes (with
/// an empty final frame when the length is an exact non-zero multiple). Returns the next
/// sequence id.
pub fn write_packet(out: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME_PAYLOAD);
        out.extend_from_slice(&FrameHeader { len: n, seq }.encode());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        seq = seq.wrapping_add(1);
        if n < MAX_FRAME_PAYLOAD {
            return seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_packet() {
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 0, b"\x03select 1"), 1);
        assert_eq!(&out[..4], &[9, 0, 0, 0]);
        let ext = check(&out, 100).unwrap();
        assert_eq!(ext.wire_len, 13);
        let p = parse(&mut out, ext);
        assert_eq!(&p.payload[..], b"\x03select 1");
        assert!(out.is_empty());
    }

    #[test]
    fn empty_payload_is_one_frame() {
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 7, b""), 8);
        assert_eq!(&out[..], &[0, 0, 0, 7]);
    }

    #[test]
    fn exact_multiple_gets_empty_terminator() {
        let payload = vec![0xABu8; MAX_FRAME_PAYLOAD];
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 0, &payload), 2);
        assert_eq!(out.len(), 2 * HEADER_LEN + MAX_FRAME_PAYLOAD);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 1]);
        let ext = check(&out, 1 << 25).unwrap();
        assert_eq!(ext.frames, 2);
        assert_eq!(ext.payload_len, MAX_FRAME_PAYLOAD);
        let p = parse(&mut out, ext);
        assert_eq!(p.payload.len(), MAX_FRAME_PAYLOAD);
        assert_eq!((p.seq, p.last_seq), (0, 1));
    }

    #[test]
    fn twenty_mib_splits_in_two() {
        let payload: Vec<u8> = (0..20 << 20).map(|i: usize| i as u8).collect();
        let mut out = BytesMut::new();
        write_packet(&mut out, 0, &payload);
        let ext = check(&out, 32 << 20).unwrap();
        assert_eq!(ext.frames, 2);
        assert_eq!(parse(&mut out, ext).payload, payload);
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        // Only the 4-byte header of a 16 MiB frame is present: refused without waiting.
        let hdr = FrameHeader {
            len: MAX_FRAME_PAYLOAD,
            seq: 0,
        }
        .encode();
        assert_eq!(
            check(&hdr, 1024),
            Err(FrameError::TooLarge {
                claimed: MAX_FRAME_PAYLOAD,
                max: 1024
            })
        );
        assert_eq!(check(&hdr[..3], 1024), Err(FrameError::Incomplete));
    }

    proptest! {
        #[test]
        fn round_trip(len in 0usize..70_000, seq: u8, cut in 0usize..80_000) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = BytesMut::new();
            write_packet(&mut out, seq, &payload);
            // Every strict prefix is incomplete.
            let cut = cut.min(out.len() - 1);
            prop_assert_eq!(check(&out[..cut], usize::MAX), Err(FrameError::Incomplete));
            let ext = check(&out, usize::MAX).unwrap();
            prop_assert_eq!(ext.wire_len, out.len());
            let p = parse(&mut out, ext);
            prop_assert_eq!(&p.payload[..], &payload[..]);
            prop_assert_eq!(p.seq, seq);
        }

        #[test]
        fn check_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..100) {
            let _ = check(&data, max);
        }
    }
}
