//! `COM_STMT_EXECUTE`: the statement id, flags, NULL bitmap, parameter types and values of an
//! execution, checked against the statement's parameter count — every length bounded by the
//! packet before anything is read.

use crate::error::ProtoError;
use crate::lenenc::Reader;

/// A parsed `COM_STMT_EXECUTE` body (after the command byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StmtExecute<'a> {
    pub statement_id: u32,
    pub flags: u8,
    pub iterations: u32,
    /// One bit per parameter (empty without parameters).
    pub null_bitmap: &'a [u8],
    /// Two bytes per parameter (type, unsigned flag), when this execution binds types.
    pub types: Option<&'a [u8]>,
    /// The non-NULL parameter values, in the binary protocol.
    pub values: &'a [u8],
}

impl<'a> StmtExecute<'a> {
    /// Offset in the body of the new-params-bound flag, for `params` parameters.
    pub fn bound_flag_at(params: u16) -> usize {
        9 + usize::from(params).div_ceil(8)
    }

    /// Parses the body of a COM_STMT_EXECUTE for a statement with `params` parameters.
    pub fn parse(body: &'a [u8], params: u16) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let statement_id = r.u32("statement id")?;
        let flags = r.u8("flags")?;
        let iterations = r.u32("iteration count")?;
        if params == 0 {
            return Ok(StmtExecute {
                statement_id,
                flags,
                iterations,
                null_bitmap: &[],
                types: None,
                values: &[],
            });
        }
        let null_bitmap = r.bytes(usize::from(params).div_ceil(8), "NULL bitmap")?;
        let bound = r.u8("new params bound flag")?;
        let types = match bound {
            0 => None,
            1 => Some(r.bytes(2 * usize::from(params), "parameter types")?),
            _ => return Err(ProtoError::Invalid("new params bound flag is not 0 or 1")),
        };
        Ok(StmtExecute {
            statement_id,
            flags,
            iterations,
            null_bitmap,
            types,
            values: r.rest(),
        })
    }

    /// Checks that `values` holds exactly one well-formed value per non-NULL parameter of the
    /// given types (2 bytes per parameter; e.g. the ones bound by an earlier execution).
    pub fn check_values(&self, types: &[u8]) -> Result<(), ProtoError> {
        let mut r = Reader::new(self.values);
        for (i, t) in types.chunks_exact(2).enumerate() {
            let null = self
                .null_bitmap
                .get(i / 8)
                .is_some_and(|b| b & (1 << (i % 8)) != 0);
            if null {
                continue;
            }
            skip_value(&mut r, t[0])?;
        }
        if !r.is_empty() {
            return Err(ProtoError::Invalid("bytes after the last parameter value"));
        }
        Ok(())
    }
}

/// Skips one binary-protocol value of type `t` (a parameter of an execution, or a query
/// attribute).
pub(crate) fn skip_value(r: &mut Reader<'_>, t: u8) -> Result<(), ProtoError> {
    match t {
        0x06 => {}
        0x01 => drop(r.bytes(1, "TINY value")?),
        0x02 | 0x0D => drop(r.bytes(2, "SHORT value")?),
        0x03 | 0x09 | 0x04 => drop(r.bytes(4, "LONG value")?),
        0x08 | 0x05 => drop(r.bytes(8, "LONGLONG value")?),
        0x07 | 0x0A | 0x0B | 0x0C => {
            let n = r.u8("temporal length")?;
            r.bytes(usize::from(n), "temporal value")?;
        }
        0x00 | 0x0F | 0x10 | 0xF5..=0xFF => drop(r.lenenc_bytes("string value")?),
        _ => return Err(ProtoError::Invalid("unknown parameter type")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_values() {
        // id 7, no cursor, 1 iteration, 3 params: NULL bitmap 0b010 (2nd is NULL), bound,
        // types LONGLONG, VAR_STRING, DATETIME; values: 8 bytes, (NULL), len 4 + 4 bytes.
        let mut b = vec![
            7, 0, 0, 0, 0, 1, 0, 0, 0, 0b010, 1, 0x08, 0, 0xFD, 0, 0x0C, 0,
        ];
        b.extend_from_slice(&42u64.to_le_bytes());
        b.extend_from_slice(&[4, 0xE8, 0x07, 1, 2]);
        let e = StmtExecute::parse(&b, 3).unwrap();
        assert_eq!(e.statement_id, 7);
        assert_eq!(e.types, Some(&[0x08, 0, 0xFD, 0, 0x0C, 0][..]));
        e.check_values(e.types.unwrap()).unwrap();
        assert_eq!(StmtExecute::bound_flag_at(3), 10);
        // Cut anywhere: an error, never a panic.
        for n in 0..b.len() {
            if let Ok(e) = StmtExecute::parse(&b[..n], 3) {
                assert!(e.check_values(&[0x08, 0, 0xFD, 0, 0x0C, 0]).is_err());
            }
        }
        assert!(StmtExecute::parse(&[7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2], 1).is_err());
    }
}
