//! Length-encoded integers and strings, and a bounds-checked reader over a packet payload.

use crate::ProtoError;

/// A cursor over a packet payload. Every read checks the remaining length first, so a
/// malformed packet yields [`ProtoError::Truncated`], never a panic.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next byte, without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        let b = self.bytes(3, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-encoded integer. `0xFB` (NULL in a row) and `0xFF` are rejected.
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        match self.u8(what)? {
            b @ 0..=0xFA => Ok(u64::from(b)),
            0xFC => Ok(u64::from(self.u16(what)?)),
            0xFD => Ok(u64::from(self.u24(what)?)),
            0xFE => self.u64(what),
            _ => Err(ProtoError::Invalid("bad length-encoded integer prefix")),
        }
    }

    /// A length-encoded string; its length is checked against the bytes left.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let len = self.lenenc_int(what)?;
        let len = usize::try_from(len).map_err(|_| ProtoError::Truncated(what))?;
        self.bytes(len, what)
    }

    /// A string terminated by NUL; the NUL is consumed, not returned.
    pub fn nul_terminated(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let pos = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtoError::Truncated(what))?;
        let s = &self.buf[..pos];
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// A NUL-terminated string, or the rest of the packet when no NUL is present (some servers
    /// and clients omit the final terminator).
    pub fn nul_terminated_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(pos) => {
                let s = &self.buf[..pos];
                self.buf = &self.buf[pos + 1..];
                s
            }
            None => self.rest(),
        }
    }
}

/// How many bytes `v` takes as a length-encoded integer.
pub fn lenenc_int_len(v: u64) -> usize {
    match v {
        0..=0xFA => 1,
        0xFB..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 9,
    }
}

/// Appends `v` as a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends a NUL-terminated string.
pub fn put_nul_terminated(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boundaries() {
        for (v, enc) in [
            (0u64, vec![0u8]),
            (250, vec![0xFA]),
            (251, vec![0xFC, 0xFB, 0x00]),
            (0xFFFF, vec![0xFC, 0xFF, 0xFF]),
            (0x1_0000, vec![0xFD, 0x00, 0x00, 0x01]),
            (0xFF_FFFF, vec![0xFD, 0xFF, 0xFF, 0xFF]),
            (0x100_0000, vec![0xFE, 0, 0, 0, 1, 0, 0, 0, 0]),
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            assert_eq!(out, enc, "encoding {v}");
            assert_eq!(lenenc_int_len(v), enc.len());
            assert_eq!(Reader::new(&enc).lenenc_int("t").unwrap(), v);
        }
    }

    #[test]
    fn rejects_bad_prefix_and_truncation() {
        assert!(Reader::new(&[0xFB]).lenenc_int("t").is_err());
        assert!(Reader::new(&[0xFF]).lenenc_int("t").is_err());
        assert_eq!(
            Reader::new(&[0xFC, 1]).lenenc_int("t"),
            Err(ProtoError::Truncated("t"))
        );
        // A string claiming more bytes than the packet holds.
        assert!(
            Reader::new(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 1])
                .lenenc_bytes("t")
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn int_round_trip(v: u64) {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            prop_assert_eq!(out.len(), lenenc_int_len(v));
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.lenenc_int("t").unwrap(), v);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn bytes_round_trip(s in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            put_lenenc_bytes(&mut out, &s);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.lenenc_bytes("t").unwrap(), &s[..]);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.lenenc_bytes("t");
            let _ = r.lenenc_int("t");
            let _ = r.nul_terminated("t");
        }
    }
}
