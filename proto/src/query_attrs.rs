//! MySQL query attributes (`CLIENT_QUERY_ATTRIBUTES`, MySQL 8.0.23+): named, typed values a
//! client attaches to `COM_QUERY` and `COM_STMT_EXECUTE` (trace ids, for example), which change
//! both commands' layout once the capability is negotiated:
//!
//! - `COM_QUERY`: before the text, `parameter_count` and `parameter_set_count` (1), both
//!   length-encoded, then, if there are attributes, their NULL bitmap, a new-params-bound flag
//!   (1), each attribute's type (2 bytes) and length-encoded name, and the non-NULL values in the
//!   binary protocol.
//! - `COM_STMT_EXECUTE`: after the iteration count, when the statement has parameters or the
//!   flags carry `PARAMETER_COUNT_AVAILABLE`, a length-encoded `parameter_count` that counts the
//!   statement's parameters and the attributes after them; the NULL bitmap and the types cover
//!   both, and each type is followed by a length-encoded name (empty for parameters).
//!
//! A proxy works on the classic layout (what it classifies, digests, routes and rewrites) and
//! keeps the attributes apart: [`split_query`] / [`split_execute`] take them out, and
//! [`join_query`] / [`join_execute`] put them back for a server connection that negotiated
//! the capability. Every count is checked against the bytes present before anything is
//! allocated for it.

use crate::error::ProtoError;
use crate::lenenc::{put_lenenc_int, Reader};
use crate::stmt::{skip_value, StmtExecute};

/// `COM_STMT_EXECUTE` flag: a `parameter_count` follows the iteration count.
pub const PARAMETER_COUNT_AVAILABLE: u8 = 0x08;

/// The attributes of one command, kept apart from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// NULL or not, one per attribute.
    nulls: Vec<bool>,
    /// Per attribute, as on the wire: its type (2 bytes) and its length-encoded name.
    types: Vec<u8>,
    /// The non-NULL values, in the binary protocol, in order.
    values: Vec<u8>,
}

impl Attributes {
    pub fn len(&self) -> usize {
        self.nulls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nulls.is_empty()
    }
}

fn is_null(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn put_bitmap(out: &mut Vec<u8>, n: usize, null: impl Fn(usize) -> bool) {
    let start = out.len();
    out.resize(start + n.div_ceil(8), 0);
    for i in (0..n).filter(|&i| null(i)) {
        out[start + i / 8] |= 1 << (i % 8);
    }
}

/// One bound parameter or attribute: its type and, as on the wire, its length-encoded name.
struct Typed<'a> {
    ty: &'a [u8],
    name: &'a [u8],
}

/// Reads `n` (type, name) pairs from `r`, a reader over `body`.
fn read_typed<'a>(
    r: &mut Reader<'a>,
    body: &'a [u8],
    n: usize,
) -> Result<Vec<Typed<'a>>, ProtoError> {
    // Each pair takes at least 3 bytes: a count the packet cannot hold is refused before
    // anything is allocated for it.
    if n > r.remaining() / 3 {
        return Err(ProtoError::Invalid(
            "more parameters than the packet can hold",
        ));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ty = r.bytes(2, "parameter type")?;
        let at = body.len() - r.remaining();
        r.lenenc_bytes("parameter name")?;
        let end = body.len() - r.remaining();
        out.push(Typed {
            ty,
            name: &body[at..end],
        });
    }
    Ok(out)
}

/// Walks the values of `typed` (NULL ones have none); returns the offset in `body` after
/// the first `split` values and checks that nothing follows the last one.
fn walk_values(
    r: &mut Reader<'_>,
    body: &[u8],
    typed: &[Typed<'_>],
    bitmap: &[u8],
    split: usize,
) -> Result<usize, ProtoError> {
    let mut at = body.len() - r.remaining();
    for (i, t) in typed.iter().enumerate() {
        if i == split {
            at = body.len() - r.remaining();
        }
        if !is_null(bitmap, i) {
            skip_value(r, t.ty[0])?;
        }
    }
    if split >= typed.len() {
        at = body.len() - r.remaining();
    }
    if !r.is_empty() {
        return Err(ProtoError::Invalid("bytes after the last parameter value"));
    }
    Ok(at)
}

/// Takes the attributes off a `COM_QUERY` body (after the command byte); returns them and
/// the offset of the statement text in `body`.
pub fn split_query(body: &[u8]) -> Result<(Attributes, usize), ProtoError> {
    let mut r = Reader::new(body);
    let count = r.lenenc_int("query attribute count")?;
    if r.lenenc_int("query attribute set count")? != 1 {
        return Err(ProtoError::Invalid("query attribute set count is not 1"));
    }
    if count == 0 {
        return Ok((Attributes::default(), body.len() - r.remaining()));
    }
    let n = usize::try_from(count)
        .ok()
        .filter(|&n| n <= r.remaining())
        .ok_or(ProtoError::Invalid(
            "more query attributes than the packet can hold",
        ))?;
    let bitmap = r.bytes(n.div_ceil(8), "query attribute NULL bitmap")?;
    if r.u8("query attribute bound flag")? != 1 {
        return Err(ProtoError::Invalid("query attributes without their types"));
    }
    let typed = read_typed(&mut r, body, n)?;
    let values_at = body.len() - r.remaining();
    // Values up to the text: walk them (the text is not length-prefixed).
    let mut end = values_at;
    {
        let mut v = Reader::new(&body[values_at..]);
        for (i, t) in typed.iter().enumerate() {
            if !is_null(bitmap, i) {
                skip_value(&mut v, t.ty[0])?;
            }
        }
        end += body.len() - values_at - v.remaining();
    }
    let mut a = Attributes {
        nulls: (0..n).map(|i| is_null(bitmap, i)).collect(),
        ..Default::default()
    };
    for t in &typed {
        a.types.extend_from_slice(t.ty);
        a.types.extend_from_slice(t.name);
    }
    a.values.extend_from_slice(&body[values_at..end]);
    Ok((a, end))
}

/// The body of a `COM_QUERY` (after the command byte) for a connection that negotiated query
/// attributes: `attrs`, then `sql`, appended to `out`.
pub fn join_query(attrs: &Attributes, sql: &[u8], out: &mut Vec<u8>) {
    put_lenenc_int(out, attrs.len() as u64);
    put_lenenc_int(out, 1);
    if !attrs.is_empty() {
        put_bitmap(out, attrs.len(), |i| attrs.nulls[i]);
        out.push(1);
        out.extend_from_slice(&attrs.types);
        out.extend_from_slice(&attrs.values);
    }
    out.extend_from_slice(sql);
}

/// Takes the attributes off a `COM_STMT_EXECUTE` body (after the command byte) of a
/// statement with `params` parameters; returns the classic body (as without the capability)
/// and the attributes.
pub fn split_execute(body: &[u8], params: u16) -> Result<(Vec<u8>, Attributes), ProtoError> {
    let mut r = Reader::new(body);
    let head = r.bytes(9, "statement id, flags and iteration count")?;
    let flags = head[4];
    let mut classic = Vec::with_capacity(body.len());
    classic.extend_from_slice(head);
    classic[4] = flags & !PARAMETER_COUNT_AVAILABLE;
    let p = usize::from(params);
    if p == 0 && flags & PARAMETER_COUNT_AVAILABLE == 0 {
        classic.extend_from_slice(r.rest());
        return Ok((classic, Attributes::default()));
    }
    let total = r.lenenc_int("parameter count")?;
    let total = usize::try_from(total)
        .ok()
        .filter(|&t| t >= p && t - p <= r.remaining())
        .ok_or(ProtoError::Invalid(
            "parameter count below the statement's, or beyond the packet",
        ))?;
    if total == 0 {
        return Ok((classic, Attributes::default()));
    }
    let bitmap = r.bytes(total.div_ceil(8), "NULL bitmap")?;
    match r.u8("new params bound flag")? {
        0 if total == p => {
            // No attributes and no types: the classic layout from here on.
            classic.extend_from_slice(bitmap);
            classic.push(0);
            classic.extend_from_slice(r.rest());
            return Ok((classic, Attributes::default()));
        }
        0 => return Err(ProtoError::Invalid("query attributes without their types")),
        1 => {}
        _ => return Err(ProtoError::Invalid("new params bound flag is not 0 or 1")),
    }
    let typed = read_typed(&mut r, body, total)?;
    let values_at = body.len() - r.remaining();
    let split = walk_values(&mut r, body, &typed, bitmap, p)?;
    if p > 0 {
        put_bitmap(&mut classic, p, |i| is_null(bitmap, i));
        classic.push(1);
        for t in &typed[..p] {
            classic.extend_from_slice(t.ty);
        }
        classic.extend_from_slice(&body[values_at..split]);
    }
    let mut a = Attributes {
        nulls: (p..total).map(|i| is_null(bitmap, i)).collect(),
        ..Default::default()
    };
    for t in &typed[p..] {
        a.types.extend_from_slice(t.ty);
        a.types.extend_from_slice(t.name);
    }
    a.values.extend_from_slice(&body[split..]);
    Ok((classic, a))
}

/// The body of a `COM_STMT_EXECUTE` for a connection that negotiated query attributes, from
/// a classic body (after the command byte) of a statement with `params` parameters and the
/// attributes to send with it. An execution that carries attributes must bind its parameter
/// types (the server reads the attributes' types in the same list).
pub fn join_execute(
    classic: &[u8],
    params: u16,
    attrs: &Attributes,
) -> Result<Vec<u8>, ProtoError> {
    let e = StmtExecute::parse(classic, params)?;
    let (p, n) = (usize::from(params), attrs.len());
    let mut out = Vec::with_capacity(classic.len() + attrs.types.len() + attrs.values.len() + 16);
    out.extend_from_slice(&classic[..9]);
    if n > 0 {
        out[4] |= PARAMETER_COUNT_AVAILABLE;
    }
    if p == 0 && n == 0 {
        return Ok(out);
    }
    put_lenenc_int(&mut out, (p + n) as u64);
    put_bitmap(&mut out, p + n, |i| {
        if i < p {
            is_null(e.null_bitmap, i)
        } else {
            attrs.nulls[i - p]
        }
    });
    match (e.types, n) {
        (None, 0) => out.push(0),
        (None, _) if p > 0 => {
            return Err(ProtoError::Invalid(
                "query attributes on an execution that does not bind its parameter types",
            ))
        }
        (types, _) => {
            out.push(1);
            for t in types.unwrap_or_default().chunks_exact(2) {
                out.extend_from_slice(t);
                // The parameters' names are empty.
                out.push(0);
            }
            out.extend_from_slice(&attrs.types);
        }
    }
    out.extend_from_slice(e.values);
    out.extend_from_slice(&attrs.values);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Packets built by mysql-connector-python 9.x (`MySQLConnection.cmd_query` and
    // `MySQLProtocol.make_stmt_execute`, pure-Python mode) on a connection with
    // CLIENT_QUERY_ATTRIBUTES, captured without a server: queries with their command byte,
    // executions as the body after it.
    /// `SELECT 1`, no attributes.
    const Q0: &str = "03000153454c4543542031";
    /// `SELECT @x` with trace = 'abc', n = 42.
    const Q2: &str = "0302010001fe000574726163650180016e036162632a53454c454354204078";
    /// `SELECT 2` with a DATETIME, a DOUBLE and a LONGLONG attribute.
    const Q3: &str = "03030100010c0001640500016608800362696707ea070c04082801000000000000f83f000000000001000053454c4543542032";
    /// Statement 7 (1 parameter: 5), no attributes.
    const E0: &str = "07000000000100000001000101800005";
    /// Statement 7 (2 parameters: 5, 'x') with trace = 'abc'.
    const E1: &str = "070000000801000000030001018000fe0000fe0005747261636505017803616263";
    /// Statement 9 (no parameters) with n = 3.
    const E2: &str = "0900000008010000000100010180016e03";
    /// Statement 7 (2 parameters: NULL, 'yy') with a = 1, b = 'z'.
    const E3: &str = "070000000801000000040101060000fe000001800161fe00016202797901017a";
    /// E1's parameters as the same client encodes them without the capability.
    const C1: &str = "07000000000100000000010180fe00050178";

    #[test]
    fn queries_split_and_join_back_to_the_clients_bytes() {
        for (packet, sql, n) in [
            (Q0, "SELECT 1", 0),
            (Q2, "SELECT @x", 2),
            (Q3, "SELECT 2", 3),
        ] {
            let b = hex(packet);
            let body = &b[1..];
            let (a, at) = split_query(body).unwrap();
            assert_eq!(&body[at..], sql.as_bytes());
            assert_eq!(a.len(), n);
            let mut again = Vec::new();
            join_query(&a, &body[at..], &mut again);
            assert_eq!(again, body, "{packet}");
        }
    }

    #[test]
    fn executions_split_to_the_classic_layout_and_join_back() {
        let e1 = hex(E1);
        let (classic, a) = split_execute(&e1, 2).unwrap();
        // What the client itself sends without the capability.
        assert_eq!(classic, hex(C1)[..]);
        assert_eq!(a.len(), 1);
        for (packet, params, attrs) in [(E0, 1, 0), (E1, 2, 1), (E2, 0, 1), (E3, 2, 2)] {
            let b = hex(packet);
            let (classic, a) = split_execute(&b, params).unwrap();
            assert_eq!(a.len(), attrs, "{packet}");
            let e = StmtExecute::parse(&classic, params).unwrap();
            assert_eq!(e.flags & PARAMETER_COUNT_AVAILABLE, 0);
            if let Some(t) = e.types {
                e.check_values(t).unwrap();
            }
            assert_eq!(join_execute(&classic, params, &a).unwrap(), b, "{packet}");
        }
        // A classic execution for a connection with the capability gains the count.
        let c1 = hex(C1);
        let joined = join_execute(&c1, 2, &Attributes::default()).unwrap();
        assert_eq!(
            split_execute(&joined, 2).unwrap(),
            (c1.clone(), Attributes::default())
        );
        assert_eq!(joined[9], 2, "parameter count");
    }

    #[test]
    fn truncated_or_lying_packets_are_errors() {
        for packet in [Q2, Q3] {
            let b = hex(packet);
            let text_at = split_query(&b[1..]).unwrap().1;
            // Cut inside the attributes: an error, never a panic.
            for n in 0..text_at {
                assert!(split_query(&b[1..1 + n]).is_err(), "{packet} cut at {n}");
            }
        }
        for (packet, params) in [(E0, 1), (E1, 2), (E2, 0), (E3, 2)] {
            let b = hex(packet);
            for n in 0..b.len() {
                assert!(
                    split_execute(&b[..n], params).is_err(),
                    "{packet} cut at {n}"
                );
            }
        }
        // A count of 2^40 attributes in a 20-byte packet: refused without allocating.
        let mut q = vec![0xFE];
        q.extend_from_slice(&(1u64 << 40).to_le_bytes());
        q.extend_from_slice(&[1, 0, 1, 0xFE, 0, 0]);
        assert!(split_query(&q).is_err());
        let mut e = hex(E1)[..9].to_vec();
        e.push(0xFE);
        e.extend_from_slice(&(1u64 << 40).to_le_bytes());
        e.extend_from_slice(&[0, 1, 0xFE, 0, 0]);
        assert!(split_execute(&e, 2).is_err());
        // Fewer parameters than the statement has; a set count other than 1.
        let mut e0 = hex(E0);
        e0[9] = 0;
        assert!(split_execute(&e0, 1).is_err());
        assert!(split_query(&[0, 2]).is_err());
        // Attributes on an execution that binds no types cannot be sent.
        let untyped = [7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 5];
        assert!(join_execute(&untyped, 1, &split_execute(&hex(E2), 0).unwrap().1).is_err());
    }
}
