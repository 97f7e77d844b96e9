//! Relays one command's response from the backend to the client as raw bytes.
//!
//! Frames are forwarded as they arrive, in chunks of whatever one read returned, without
//! copying and without waiting for whole rows: only the first bytes of each packet are looked
//! at (by the [`ResponseTracker`]) to find where the response ends. Memory stays bounded by the
//! read buffer, whatever the size of the result; a slow client slows the backend reads
//! (back-pressure) instead of growing a buffer.

use bytes::{Buf, BufMut, BytesMut};
use sluice_proto::framing::{FrameHeader, HEADER_LEN, MAX_FRAME_PAYLOAD};
use sluice_proto::tracker::{Outcome, Progress, ResponseKind, ResponseTracker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::ClientConn;
use super::SessionError;
use crate::backend::BackendConn;

/// One end of a relay: a byte stream and the bytes read from it and not consumed yet.
pub struct End<'a, S> {
    pub io: &'a mut S,
    pub buf: &'a mut BytesMut,
}

/// How the backend connection was negotiated, and what the client allowed.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    pub deprecate_eof: bool,
    /// CLIENT_SESSION_TRACK: OK packets may report session-state changes (kept).
    pub session_track: bool,
    /// The server connection has CLIENT_SESSION_TRACK and the client did not ask for it: the
    /// session-state block is taken out of the OK packets the client gets (Sluice learns the
    /// changes all the same), which then read as a server would have sent them to the client.
    pub untracked_client: bool,
    /// The command is the client's own `LOAD DATA LOCAL` and the client enabled local files.
    pub local_files: bool,
    /// An execution for a client without `CLIENT_PS_MULTI_RESULTS` on a server connection
    /// with it: the result of a `CALL`'s OUT parameters is left out ([`out_parameters_at`]).
    pub drop_out_parameters: bool,
}

/// What the client allowed for a command's answer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAllows {
    /// The command is the client's own `LOAD DATA LOCAL` and the client enabled local files.
    pub local_files: bool,
    /// The client negotiated CLIENT_SESSION_TRACK.
    pub session_track: bool,
    /// The client takes the result of a prepared `CALL`'s OUT parameters: it negotiated
    /// `CLIENT_PS_MULTI_RESULTS`, or the command cannot be such a `CALL`.
    pub out_parameters: bool,
}

/// What the client expects of result metadata. A client that negotiated
/// `MARIADB_CLIENT_CACHE_METADATA` gets every column count with its "metadata follows" byte,
/// and an execution's column definitions left out when it already holds them (as the server
/// does on a direct connection), whatever the server connection did (see [`ServerMeta`]).
pub enum Metadata<'a> {
    /// Not negotiated: result sets are relayed as they come.
    Plain,
    /// Negotiated; every result set's definitions are sent (flag 1): text results, and
    /// executions that keep no record.
    Sent,
    /// Negotiated, for an execution of one client statement: its first result's definitions
    /// are left out (flag 0) when they are byte for byte the ones this statement delivered
    /// last (`last`); else they are sent and kept in `last`. A response with more than one
    /// result, or without one, forgets them (the client's copy may have changed).
    Cached(&'a mut Option<Box<[u8]>>),
}

impl Metadata<'_> {
    fn negotiated(&self) -> bool {
        !matches!(self, Metadata::Plain)
    }
}

/// What the server's column counts carry. A server connection negotiates
/// `MARIADB_CLIENT_CACHE_METADATA` when its client did (the pools are partitioned by it), and
/// the server then leaves the column definitions out of an execution (flag 0) when they are
/// the ones it sent last for that statement on that connection — to whichever session used it
/// then. The connection keeps those definitions per statement (`StmtCache`), and a client that
/// does not hold them gets them from there.
#[derive(Debug, Clone, Copy)]
pub enum ServerMeta<'a> {
    /// Not negotiated: counts come without the flag byte (Sluice adds it for a client that
    /// negotiated it).
    Off,
    /// Negotiated: every count carries its flag byte.
    On {
        /// The command executes a statement whose definitions the connection keeps: the
        /// first result's definitions, when sent, are returned to be kept
        /// ([`Relayed::server_meta`]).
        exec: bool,
        /// What the server last sent for that statement.
        kept: Option<&'a [u8]>,
    },
}

/// How a relayed response ended, and what its final OK/EOF said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub outcome: Outcome,
    /// Result rows plus affected rows.
    pub rows: u64,
    pub warnings: u16,
    pub insert_id: u64,
    /// The last OK packet that reported a session-state change.
    pub session_state: Option<Vec<u8>>,
    /// With [`ServerMeta::On`] for an execution: the column definitions the server sent with
    /// the first result (it leaves them out of the statement's next executions while they do
    /// not change).
    pub server_meta: Option<Box<[u8]>>,
}

/// Relays the response to the command the client just sent, over a session's connections,
/// and records what the final OK/EOF said on the backend connection. `stmt`: for an
/// execution, where the connection keeps the executed statement.
#[allow(clippy::too_many_arguments)]
pub async fn relay_response(
    client: &mut ClientConn,
    backend: &mut BackendConn,
    kind: ResponseKind,
    seq: u8,
    allows: ClientAllows,
    meta: Metadata<'_>,
    stmt: Option<crate::backend::stmt_cache::Memo>,
) -> Result<Outcome, SessionError> {
    let track = backend.capabilities & sluice_proto::flags::cap::CLIENT_SESSION_TRACK != 0;
    let opts = RelayOptions {
        deprecate_eof: backend.deprecate_eof(),
        session_track: track,
        untracked_client: track && !allows.session_track,
        local_files: allows.local_files,
        drop_out_parameters: !allows.out_parameters
            && kind == ResponseKind::Execute
            && backend.capabilities & sluice_proto::flags::cap::CLIENT_PS_MULTI_RESULTS != 0,
    };
    backend.session_state = None;
    let cache = backend.cache_metadata();
    let (io, buf, kept) = backend.relay_parts(stmt);
    let server = if cache {
        ServerMeta::On {
            exec: stmt.is_some() && kind == ResponseKind::Execute,
            kept,
        }
    } else {
        ServerMeta::Off
    };
    let r = relay(
        End {
            io: &mut client.stream,
            buf: &mut client.rbuf,
        },
        End { io, buf },
        kind,
        seq,
        opts,
        Meta {
            client: meta,
            server,
        },
    )
    .await;
    let r = r?;
    if let Some(m) = r.server_meta {
        backend.stmts.set_metadata(backend.id, stmt, m);
    }
    backend.last_rows = r.rows;
    backend.last_warnings = r.warnings;
    backend.last_insert_id = r.insert_id;
    backend.session_state = r.session_state;
    Ok(r.outcome)
}

/// Packets up to this size are inspected whole (OK packets with session state fit easily).
const INSPECT_WHOLE: usize = 16 << 10;
/// Of longer packets (rows), only this many bytes are needed.
const INSPECT_PREFIX: usize = 64;
/// Read granularity from the backend.
const READ_CHUNK: usize = 64 << 10;

/// The result metadata both ends expect.
pub struct Meta<'a> {
    pub client: Metadata<'a>,
    pub server: ServerMeta<'a>,
}

/// Relays the response to the command the client just sent, from `backend` to `client`, as
/// raw bytes. `seq` is the sequence id the server's first packet must carry. Generic over the
/// streams so that it runs on sockets, TLS streams and, in tests, in-memory pipes.
pub async fn relay<C, B>(
    client: End<'_, C>,
    backend: End<'_, B>,
    kind: ResponseKind,
    mut seq: u8,
    opts: RelayOptions,
    meta: Meta<'_>,
) -> Result<Relayed, SessionError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let End {
        io: client,
        buf: client_buf,
    } = client;
    let End {
        io: backend,
        buf: rbuf,
    } = backend;
    let Meta {
        client: mut meta,
        server,
    } = meta;
    let server_flags = matches!(server, ServerMeta::On { .. });
    // The first result's definitions are read whole before they are forwarded when they are
    // to be kept or compared with the client's.
    let whole_first = matches!(server, ServerMeta::On { exec: true, .. })
        || (server_flags && matches!(meta, Metadata::Cached(_)));
    // Something to look at before a result's first packet is forwarded.
    let at_start_checks = whole_first || opts.drop_out_parameters;
    let mut server_meta = None;
    let mut tracker =
        ResponseTracker::new(kind, opts.deprecate_eof).with_cache_metadata(server_flags);
    let track = opts.session_track;
    let client_local_files = opts.local_files;
    let mut session_state = None;
    let mut body_left = 0usize;
    let mut cont = false;
    let mut outcome = None;
    let mut infile = false;
    let mut forwarded = false;
    // With cached metadata: packets left out so far (the client's sequence ids are the
    // server's less this), results begun, and where the bytes to forward begin (a byte
    // kept free in front of the first read lets a flag be added without moving the rest).
    let mut dropped = 0u8;
    let mut results = 0u32;
    let mut from = 0usize;
    loop {
        // Walk the buffered frames; `pos` is how far they may be forwarded.
        let mut pos = from;
        loop {
            if body_left > 0 {
                let n = body_left.min(rbuf.len() - pos);
                pos += n;
                body_left -= n;
                if body_left > 0 {
                    break;
                }
                continue;
            }
            if outcome.is_some() || infile {
                break;
            }
            if !cont && tracker.in_rows() {
                // The bulk of a result: whole single-frame rows (first byte neither 0xFE nor
                // 0xFF) are counted and passed without the tracker; anything else — the
                // end, an error, a long or incomplete packet, a wrong sequence id — is left
                // to the packet-by-packet walk below. After left-out column definitions
                // (cached metadata: every execution of a libmariadb client) each row gets the
                // client's sequence id on the way.
                let (next, n, next_seq) = pass_rows(&mut rbuf[..], pos, seq, dropped);
                pos = next;
                seq = next_seq;
                tracker.rows_passed(n);
            }
            let buf = &rbuf[..];
            let Some(h) = FrameHeader::peek(&buf[pos..]) else {
                break;
            };
            let want = if h.len <= INSPECT_WHOLE {
                h.len
            } else {
                INSPECT_PREFIX
            };
            if buf.len() - pos - HEADER_LEN < want {
                break;
            }
            if h.seq != seq {
                return Err(SessionError::BackendProtocol(format!(
                    "packet sequence id {} where {} was expected",
                    h.seq, seq
                )));
            }
            if at_start_checks && !cont && tracker.at_result_start() {
                if opts.drop_out_parameters {
                    match out_parameters_at(&rbuf[..], pos, seq, opts.deprecate_eof, server_flags) {
                        OutParameters::Incomplete => break,
                        OutParameters::Other => {}
                        OutParameters::Found { end, packets } => {
                            // Left out: the bytes still to forward move up to meet what
                            // follows, which gets the client's sequence ids.
                            let n = pos - from;
                            rbuf.copy_within(from..pos, end - n);
                            from = end - n;
                            pos = end;
                            seq = seq.wrapping_add(packets);
                            dropped = dropped.wrapping_add(packets);
                            continue;
                        }
                    }
                }
                if whole_first
                    && results == 0
                    && !definitions_whole(&rbuf[..], pos, h.len, seq.wrapping_add(1))?
                {
                    // Read on, the count not consumed yet.
                    break;
                }
            }
            seq = seq.wrapping_add(1);
            if dropped != 0 {
                rbuf[pos + 3] = h.seq.wrapping_sub(dropped);
            }
            let buf = &rbuf[..];
            if !cont {
                let prefix = &buf[pos + HEADER_LEN..pos + HEADER_LEN + want];
                let result_start = (meta.negotiated() || server_flags) && tracker.at_result_start();
                match tracker.feed(h.len, prefix) {
                    Ok(Progress::More) => {}
                    Ok(Progress::Done(o)) => outcome = Some(o),
                    // Refused before a byte of the request is forwarded: the client never
                    // sees a file request it did not ask for.
                    Ok(Progress::LocalInfile) if !client_local_files => {
                        return Err(SessionError::BackendProtocol(
                            "LOCAL INFILE request in answer to a statement that is not the client's LOAD DATA LOCAL (or the client did not enable local files)".into(),
                        ));
                    }
                    Ok(Progress::LocalInfile) => infile = true,
                    Err(e) => return Err(SessionError::BackendProtocol(e.to_string())),
                }
                // Only an OK packet may report session-state changes (a row whose first byte
                // is 0x00 — every binary-protocol row — is not one).
                if track && tracker.fed_ok() {
                    if want == h.len {
                        note_session_state(&mut session_state, prefix);
                    }
                    if opts.untracked_client {
                        if let Some(f) = untrack_ok(rbuf, pos, h.len, want, from)? {
                            from = f;
                            pos += HEADER_LEN + h.len;
                            continue;
                        }
                    }
                }
                if result_start {
                    results += 1;
                    let columns = tracker.in_column_definitions() || tracker.definitions_left_out();
                    if let Metadata::Cached(last) = &mut meta {
                        if results > 1 || !columns {
                            // Several results, or an OK: what the client keeps may differ.
                            **last = None;
                        }
                    }
                    if columns {
                        let count = Count {
                            at: pos,
                            len: h.len,
                            from,
                            first: results == 1,
                        };
                        let r = match server {
                            ServerMeta::Off => {
                                flag_column_count(rbuf, &mut tracker, &mut meta, count, seq)?
                            }
                            ServerMeta::On { exec, kept } => {
                                let kept = kept.filter(|_| exec);
                                let mut ends = Ends {
                                    tracker: &mut tracker,
                                    client: &mut meta,
                                    kept,
                                    record: exec.then_some(&mut server_meta),
                                };
                                flagged_column_count(rbuf, &mut ends, count, seq)?
                            }
                        };
                        from = r.from;
                        pos = r.next;
                        seq = seq.wrapping_add(r.skipped);
                        dropped = dropped.wrapping_add(r.dropped);
                        continue;
                    }
                }
            }
            cont = h.continues();
            pos += HEADER_LEN;
            body_left = h.len;
        }
        if pos > from {
            forwarded = true;
            write_client(client, &rbuf[from..pos]).await?;
        }
        rbuf.advance(pos);
        from = 0;
        if body_left == 0 {
            if let Some(o) = outcome {
                return Ok(Relayed {
                    outcome: o,
                    rows: tracker.rows(),
                    warnings: tracker.warnings(),
                    insert_id: tracker.insert_id(),
                    session_state,
                    server_meta,
                });
            }
            if infile {
                seq = upload_local_file(client, client_buf, backend, seq).await?;
                tracker.local_infile_sent();
                infile = false;
                continue;
            }
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        let partial = forwarded || !rbuf.is_empty();
        // Whole packets only reached the client (bytes of an unfinished header stay here).
        let between_packets = forwarded && body_left == 0 && !cont;
        let client_seq = seq.wrapping_sub(dropped);
        let lost = |detail: String| {
            if between_packets {
                SessionError::BackendCut {
                    detail,
                    seq: client_seq,
                }
            } else if partial {
                SessionError::BackendLost(detail)
            } else {
                SessionError::BackendGone(detail)
            }
        };
        if rbuf.is_empty() && meta.negotiated() && !server_flags {
            // The free byte in front (see `flag_column_count`).
            rbuf.put_u8(0);
            from = 1;
        }
        match backend.read_buf(rbuf).await {
            Ok(0) => return Err(lost("server closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(lost(e.to_string())),
        }
    }
}

/// The relay's fast path over the bulk of a result set: from `pos`, passes every whole
/// single-frame row whose header carries the expected sequence id `seq` and whose first byte
/// is neither 0xFE nor 0xFF, giving each the client's sequence id (`dropped` packets less,
/// see [`Metadata::Cached`]). Stops at anything else — an incomplete or multi-frame packet,
/// an empty one, an unexpected sequence id, the end or an error — and leaves it untouched for
/// the packet-by-packet walk. Returns where it stopped, the rows passed and the next expected
/// sequence id. One bounds check and one 4-byte header read per row.
#[inline]
fn pass_rows(buf: &mut [u8], mut pos: usize, mut seq: u8, dropped: u8) -> (usize, u64, u8) {
    let end = buf.len();
    let mut n = 0u64;
    while let Some(p) = buf.get_mut(pos..pos + HEADER_LEN + 1) {
        let word = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let len = (word & 0x00FF_FFFF) as usize;
        let next = pos + HEADER_LEN + len;
        if (word >> 24) as u8 != seq
            || len == 0
            || len == MAX_FRAME_PAYLOAD
            || p[HEADER_LEN] >= 0xFE
            || next > end
        {
            break;
        }
        p[3] = seq.wrapping_sub(dropped);
        seq = seq.wrapping_add(1);
        pos = next;
        n += 1;
    }
    (pos, n, seq)
}

/// What [`out_parameters_at`] found at the start of a result.
#[derive(Debug, PartialEq, Eq)]
enum OutParameters {
    /// Not enough of the result is read to tell: read on.
    Incomplete,
    /// Anything else (an OK or ERR, a result of two rows or more, one with a long packet):
    /// relayed as usual.
    Other,
    /// The result of a prepared `CALL`'s OUT parameters: `packets` packets ending at `end`.
    Found { end: usize, packets: u8 },
}

/// Whether the result beginning at `buf[at..]` (server sequence id `seq`) is the one a server
/// sends a client with `CLIENT_PS_MULTI_RESULTS` after executing a `CALL` with OUT parameters:
/// one row, ended by an EOF/OK whose status has `SERVER_PS_OUT_PARAMS`. A client without that
/// capability gets the procedure's other results and its final OK only (MariaDB sends the OUT
/// parameters only to clients that asked: `Protocol_binary::send_out_parameters`), so the
/// relay leaves this result out. Reads at most the definitions and the first two rows, so what
/// is held back to decide is bounded by them. `cache`: the column count carries MariaDB's
/// "metadata follows" byte. Kept out of line: the relay's loop calls it only for such clients.
#[cold]
#[inline(never)]
fn out_parameters_at(
    buf: &[u8],
    at: usize,
    mut seq: u8,
    deprecate_eof: bool,
    cache: bool,
) -> OutParameters {
    use sluice_proto::flags::status::SERVER_PS_OUT_PARAMS;
    let mut pos = at;
    // Counted in full: a result may have more than 255 definitions.
    let mut packets = 0u64;
    let mut rows = 0u32;
    // The count, the definitions (unless left out) and, without CLIENT_DEPRECATE_EOF, an EOF.
    let mut before_rows = 1u64;
    loop {
        let Some(h) = FrameHeader::peek(&buf[pos..]) else {
            return OutParameters::Incomplete;
        };
        if h.seq != seq || h.continues() || h.len == 0 {
            // The walk reports what is wrong; a long packet is not an OUT parameter's.
            return OutParameters::Other;
        }
        let body = pos + HEADER_LEN;
        let Some(p) = buf.get(body..body + h.len) else {
            if before_rows == 0 && buf.get(body).is_some_and(|&b| b != 0xFE && b != 0xFF) {
                // A row begins: a second one is not OUT parameters.
                rows += 1;
                if rows > 1 {
                    return OutParameters::Other;
                }
            }
            return OutParameters::Incomplete;
        };
        let next = body + h.len;
        packets += 1;
        seq = seq.wrapping_add(1);
        pos = next;
        if packets == 1 {
            // The column count: an OK or an ERR ends the check.
            let Some((columns, int_len)) = column_count(p) else {
                return OutParameters::Other;
            };
            let defs_follow = !cache || p.get(int_len) != Some(&0);
            before_rows = u64::from(defs_follow) * columns + u64::from(!deprecate_eof);
            continue;
        }
        if p[0] == 0xFF {
            // An error (or a progress report) ends the check: the walk takes it.
            return OutParameters::Other;
        }
        if before_rows > 0 {
            before_rows -= 1;
            continue;
        }
        match p[0] {
            0xFE if deprecate_eof || h.len < sluice_proto::eof::EOF_MAX_LEN => {
                let status = if deprecate_eof {
                    sluice_proto::tracker::ok_status(p)
                } else {
                    sluice_proto::tracker::eof_status(p)
                };
                return match status {
                    Ok(s) if s & SERVER_PS_OUT_PARAMS != 0 && rows == 1 => OutParameters::Found {
                        end: next,
                        // Sequence ids count modulo 256.
                        packets: packets as u8,
                    },
                    _ => OutParameters::Other,
                };
            }
            _ => {
                rows += 1;
                if rows > 1 {
                    return OutParameters::Other;
                }
            }
        }
    }
}

/// A column count packet's count and the length of its integer (`None` for an OK, an ERR, an
/// EOF, or a malformed count).
fn column_count(p: &[u8]) -> Option<(u64, usize)> {
    let int_len = match *p.first()? {
        0x00 | 0xFB | 0xFE | 0xFF => return None,
        0xFC => 3,
        0xFD => 4,
        _ => 1,
    };
    let columns = sluice_proto::lenenc::Reader::new(p.get(..int_len)?)
        .lenenc_int("column count")
        .ok()?;
    Some((columns, int_len))
}

/// Column definitions longer than this (hundreds of columns) are not kept per statement for a
/// client with cached metadata: they are sent with every execution.
pub const MAX_KEPT_METADATA: usize = 16 << 10;

/// A column count packet found in the read buffer.
struct Count {
    /// Where its header is.
    at: usize,
    /// Its payload length (a length-encoded integer: 1 to 9 bytes).
    len: usize,
    /// Where the bytes still to be forwarded begin (`at` or before).
    from: usize,
    /// The response's first result.
    first: bool,
}

/// Where the walk goes on after a column count was given its flag.
struct Flagged {
    /// The new start of the bytes to forward.
    from: usize,
    /// Where the next packet begins.
    next: usize,
    /// Server packets the walk passed over (left-out definitions).
    skipped: u8,
    /// Added to the packets left out so far (wrapping: definitions inserted count
    /// negatively).
    dropped: u8,
}

/// Gives the column count at `c.at` its "metadata follows" byte for a client with cached
/// metadata. For the first result of an execution whose definitions (all in the buffer) are
/// byte for byte the ones the client holds, the definitions are left out and the flag is 0;
/// otherwise it is 1 and, for an execution, the definitions are recorded. `seq` is the
/// server's sequence id of the packet after the count.
fn flag_column_count(
    rbuf: &mut BytesMut,
    tracker: &mut ResponseTracker,
    meta: &mut Metadata<'_>,
    c: Count,
    seq: u8,
) -> Result<Flagged, SessionError> {
    if c.len > 9 {
        return Err(SessionError::BackendProtocol(
            "column count packet longer than a length-encoded integer".into(),
        ));
    }
    let defs = c.at + HEADER_LEN + c.len;
    if let (Metadata::Cached(last), true) = (&mut *meta, c.first) {
        let columns = sluice_proto::lenenc::Reader::new(&rbuf[c.at + HEADER_LEN..defs])
            .lenenc_int("column count")
            .unwrap_or(0);
        match definitions_end(rbuf, defs, columns, seq)? {
            None => {
                // Not all here yet: sent, and not recorded.
                **last = None;
            }
            Some(end) if c.from == c.at && last.as_deref() == Some(&rbuf[defs..end]) => {
                // The client holds these: the tracker passes them, and the count moves to just
                // before what follows them, with the flag 0.
                feed_definitions(tracker, rbuf, defs, end)?;
                let mut head = [0u8; HEADER_LEN + 10];
                head[..HEADER_LEN + c.len].copy_from_slice(&rbuf[c.at..defs]);
                head[..3].copy_from_slice(&((c.len + 1) as u32).to_le_bytes()[..3]);
                let start = end - (HEADER_LEN + c.len + 1);
                rbuf[start..end].copy_from_slice(&head[..HEADER_LEN + c.len + 1]);
                return Ok(Flagged {
                    from: start,
                    next: end,
                    skipped: columns as u8,
                    dropped: columns as u8,
                });
            }
            // Not kept beyond a bound (memory per statement stays bounded): then sent with
            // every execution.
            Some(end) => **last = (end - defs <= MAX_KEPT_METADATA).then(|| rbuf[defs..end].into()),
        }
    }
    // The flag 1 goes after the count: into the free byte in front if there is one (the
    // count moves back by one), else the rest of the buffer moves up by one.
    let len = ((c.len + 1) as u32).to_le_bytes();
    if c.from == c.at && c.at > 0 {
        rbuf.copy_within(c.at..defs, c.at - 1);
        rbuf[defs - 1] = 1;
        rbuf[c.at - 1..c.at + 2].copy_from_slice(&len[..3]);
        Ok(Flagged {
            from: c.at - 1,
            next: defs,
            skipped: 0,
            dropped: 0,
        })
    } else {
        let n = rbuf.len();
        rbuf.put_u8(0);
        rbuf.copy_within(defs..n, defs + 1);
        rbuf[defs] = 1;
        rbuf[c.at..c.at + 3].copy_from_slice(&len[..3]);
        Ok(Flagged {
            from: c.from,
            next: defs + 1,
            skipped: 0,
            dropped: 0,
        })
    }
}

/// The end of the `columns` column definitions that begin at `defs` (the first with the
/// server's sequence id `seq`), if every one is whole in the buffer.
fn definitions_end(
    rbuf: &[u8],
    defs: usize,
    columns: u64,
    mut seq: u8,
) -> Result<Option<usize>, SessionError> {
    let mut end = defs;
    for _ in 0..columns {
        let Some(h) = FrameHeader::peek(&rbuf[end..]) else {
            return Ok(None);
        };
        if h.continues() || rbuf.len() - end - HEADER_LEN < h.len {
            return Ok(None);
        }
        if h.seq != seq {
            return Err(SessionError::BackendProtocol(format!(
                "packet sequence id {} where {} was expected",
                h.seq, seq
            )));
        }
        seq = seq.wrapping_add(1);
        end += HEADER_LEN + h.len;
    }
    Ok(Some(end))
}

/// Feeds the tracker the column definitions `rbuf[defs..end]` (whole packets) that the
/// relay leaves out.
fn feed_definitions(
    tracker: &mut ResponseTracker,
    rbuf: &[u8],
    defs: usize,
    end: usize,
) -> Result<(), SessionError> {
    let mut at = defs;
    while at < end {
        let h = FrameHeader::peek(&rbuf[at..]).expect("walked by definitions_end");
        tracker
            .feed(h.len, &rbuf[at + HEADER_LEN..at + HEADER_LEN + h.len])
            .map_err(|e| SessionError::BackendProtocol(e.to_string()))?;
        at += HEADER_LEN + h.len;
    }
    Ok(())
}

/// A column count payload with its "metadata follows" byte (a server connection with cached
/// metadata): the column count and the length of its integer, where the byte follows.
/// `None` for anything else (an OK, an error, an EOF, a LOCAL INFILE request).
fn flagged_count(p: &[u8]) -> Option<(u64, usize)> {
    let int_len = match *p.first()? {
        0x00 | 0xFB | 0xFF => return None,
        0xFC => 3,
        0xFD => 4,
        0xFE => 9,
        _ => 1,
    };
    if p.len() != int_len + 1 {
        return None;
    }
    let columns = sluice_proto::lenenc::Reader::new(&p[..int_len])
        .lenenc_int("column count")
        .ok()?;
    Some((columns, int_len))
}

/// With cached metadata on the server connection, whether the packet at `at` (payload length
/// `len`) is anything but the count of a result whose definitions follow and are not all in
/// the buffer yet. `seq`: the server's sequence id of the packet after it.
fn definitions_whole(buf: &[u8], at: usize, len: usize, seq: u8) -> Result<bool, SessionError> {
    let body = at + HEADER_LEN;
    let Some((columns, int_len)) = buf.get(body..body + len).and_then(flagged_count) else {
        return Ok(true);
    };
    if buf[body + int_len] != 1 {
        return Ok(true);
    }
    Ok(definitions_end(buf, body + len, columns, seq)?.is_some())
}

/// What [`flagged_column_count`] reads and records.
struct Ends<'m, 'a> {
    tracker: &'m mut ResponseTracker,
    client: &'m mut Metadata<'a>,
    /// The definitions the server last sent for the executed statement (an execution's first
    /// result only).
    kept: Option<&'m [u8]>,
    /// Where the definitions the server sends with an execution's first result go.
    record: Option<&'m mut Option<Box<[u8]>>>,
}

/// The column count at `c.at` from a server connection with cached metadata (the count carries
/// its flag byte), for a client that negotiated it too (the pools are partitioned by it):
/// - flag 1, the definitions follow: kept for the statement (an execution's first result);
///   left out, the flag set to 0, when the client holds the same (as [`flag_column_count`]);
/// - flag 0, the server left out the definitions it sent last for the statement: passed as
///   they are when the client holds the same; else the flag is set to 1 and the kept
///   definitions go after the count, with the client's sequence ids.
///
/// `seq` is the server's sequence id of the packet after the count.
fn flagged_column_count(
    rbuf: &mut BytesMut,
    e: &mut Ends<'_, '_>,
    c: Count,
    seq: u8,
) -> Result<Flagged, SessionError> {
    let body = c.at + HEADER_LEN;
    let count = rbuf.get(body..body + c.len).filter(|_| c.len <= 10);
    let Some((columns, int_len)) = count.and_then(flagged_count) else {
        return Err(SessionError::BackendProtocol(
            "column count without its \"metadata follows\" byte".into(),
        ));
    };
    if matches!(e.client, Metadata::Plain) {
        return Err(SessionError::BackendProtocol(
            "a \"metadata follows\" byte on a connection for a client without it".into(),
        ));
    }
    let flag_at = body + int_len;
    let defs = body + c.len;
    let pass = Flagged {
        from: c.from,
        next: defs,
        skipped: 0,
        dropped: 0,
    };
    match rbuf[flag_at] {
        1 => {
            if !c.first {
                return Ok(pass);
            }
            let Some(end) = definitions_end(rbuf, defs, columns, seq)? else {
                // Not all here (only when nothing is to be kept or compared): sent.
                if let Metadata::Cached(last) = e.client {
                    **last = None;
                }
                return Ok(pass);
            };
            if let Some(r) = e.record.as_deref_mut() {
                *r = Some(rbuf[defs..end].into());
            }
            if let Metadata::Cached(last) = e.client {
                if c.from == c.at && last.as_deref() == Some(&rbuf[defs..end]) {
                    // The client holds these: the count moves to just before what follows
                    // them, with the flag 0.
                    feed_definitions(e.tracker, rbuf, defs, end)?;
                    let start = end - (HEADER_LEN + c.len);
                    rbuf.copy_within(c.at..defs, start);
                    rbuf[start + HEADER_LEN + int_len] = 0;
                    return Ok(Flagged {
                        from: start,
                        next: end,
                        skipped: columns as u8,
                        dropped: columns as u8,
                    });
                }
                **last = (end - defs <= MAX_KEPT_METADATA).then(|| rbuf[defs..end].into());
            }
            Ok(pass)
        }
        0 => {
            let Some(kept) = e.kept.filter(|_| c.first) else {
                return Err(SessionError::BackendProtocol(
                    "the server left out column definitions Sluice does not keep".into(),
                ));
            };
            if let Metadata::Cached(last) = e.client {
                if last.as_deref() == Some(kept) {
                    return Ok(pass);
                }
            }
            // The client does not hold them.
            let n = rbuf.len();
            rbuf.resize(n + kept.len(), 0);
            rbuf.copy_within(defs..n, defs + kept.len());
            rbuf[defs..defs + kept.len()].copy_from_slice(kept);
            rbuf[flag_at] = 1;
            let mut client_seq = rbuf[c.at + 3].wrapping_add(1);
            let (mut at, mut packets) = (defs, 0u64);
            while at < defs + kept.len() {
                let h = FrameHeader::peek(&rbuf[at..]).filter(|h| !h.continues());
                let Some(h) = h else { break };
                rbuf[at + 3] = client_seq;
                client_seq = client_seq.wrapping_add(1);
                at += HEADER_LEN + h.len;
                packets += 1;
            }
            if at != defs + kept.len() || packets != columns {
                return Err(SessionError::BackendProtocol(format!(
                    "{columns} columns left out, {packets} column definitions kept"
                )));
            }
            if let Metadata::Cached(last) = e.client {
                **last = (kept.len() <= MAX_KEPT_METADATA).then(|| kept.into());
            }
            Ok(Flagged {
                from: c.from,
                next: at,
                skipped: 0,
                dropped: (columns as u8).wrapping_neg(),
            })
        }
        f => Err(SessionError::BackendProtocol(format!(
            "\"metadata follows\" byte {f}"
        ))),
    }
}

/// For a client without CLIENT_SESSION_TRACK: the OK packet at `at` (payload `len` bytes, of
/// which `have` are in the buffer) without the session-state change its server connection
/// reported, moved up to end where it ended (so the packets after it stay where they are),
/// and the bytes before it still to be forwarded (from `from`) moved up likewise. Returns
/// their new start, or `None` when the packet reports no change (it is the same for both).
fn untrack_ok(
    rbuf: &mut BytesMut,
    at: usize,
    len: usize,
    have: usize,
    from: usize,
) -> Result<Option<usize>, SessionError> {
    let body = at + HEADER_LEN;
    let cut = match sluice_proto::ok::untracked(&rbuf[body..body + have]) {
        Ok(None) => return Ok(None),
        Ok(Some(u)) if have == len => u,
        // A change block longer than `INSPECT_WHOLE`: never sent by a server in practice.
        Ok(Some(_)) | Err(_) => {
            return Err(SessionError::BackendProtocol(format!(
                "an OK packet of {len} bytes reporting a session-state change could not be rewritten for a client without CLIENT_SESSION_TRACK"
            )))
        }
    };
    let shift = len - cut.keep;
    cut.clear_flag(&mut rbuf[body..body + cut.keep]);
    let seq = rbuf[at + 3];
    rbuf.copy_within(body..body + cut.keep, body + shift);
    let head = (cut.keep as u32).to_le_bytes();
    rbuf[at + shift..at + shift + 3].copy_from_slice(&head[..3]);
    rbuf[at + shift + 3] = seq;
    if from < at {
        rbuf.copy_within(from..at, from + shift);
    }
    Ok(Some(from + shift))
}

/// Keeps an OK packet that says the session state changed (rare: only then is it copied).
fn note_session_state(slot: &mut Option<Vec<u8>>, ok: &[u8]) {
    let mut r = sluice_proto::lenenc::Reader::new(&ok[1..]);
    let changed = r.lenenc_int("affected rows").is_ok()
        && r.lenenc_int("last insert id").is_ok()
        && r.u16("status")
            .is_ok_and(|s| s & sluice_proto::flags::status::SERVER_SESSION_STATE_CHANGED != 0);
    if changed {
        *slot = Some(ok.to_vec());
    }
}

/// Streams the client's LOCAL INFILE data to the backend: packets until an empty one.
/// Returns the sequence id the server's answer must carry.
async fn upload_local_file<C, B>(
    client: &mut C,
    client_buf: &mut BytesMut,
    backend: &mut B,
    mut seq: u8,
) -> Result<u8, SessionError>
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    let mut body_left = 0usize;
    let mut cont = false;
    let mut last = false;
    loop {
        let mut pos = 0usize;
        loop {
            let buf = &client_buf[..];
            if body_left > 0 {
                let n = body_left.min(buf.len() - pos);
                pos += n;
                body_left -= n;
                if body_left > 0 {
                    break;
                }
                continue;
            }
            if last {
                break;
            }
            let Some(h) = FrameHeader::peek(&buf[pos..]) else {
                break;
            };
            if h.seq != seq {
                return Err(SessionError::Malformed(format!(
                    "LOCAL INFILE packet sequence id {} where {} was expected",
                    h.seq, seq
                )));
            }
            seq = seq.wrapping_add(1);
            last = h.len == 0 && !cont;
            cont = h.continues();
            pos += HEADER_LEN;
            body_left = h.len;
        }
        if pos > 0 {
            backend
                .write_all(&client_buf[..pos])
                .await
                .map_err(|e| SessionError::BackendLost(e.to_string()))?;
            backend
                .flush()
                .await
                .map_err(|e| SessionError::BackendLost(e.to_string()))?;
            client_buf.advance(pos);
        }
        if last && body_left == 0 {
            return Ok(seq);
        }
        if client_buf.capacity() - client_buf.len() < 8 << 10 {
            client_buf.reserve(64 << 10);
        }
        match client.read_buf(client_buf).await {
            Ok(0) => return Err(SessionError::ClientClosed),
            Ok(_) => {}
            Err(e) => return Err(super::client::compression_error(e)),
        }
    }
}

/// Writes relayed bytes to the client and pushes them through (a TLS layer buffers them;
/// on a plain socket the flush does nothing).
async fn write_client<C: AsyncWrite + Unpin>(
    client: &mut C,
    bytes: &[u8],
) -> Result<(), SessionError> {
    client
        .write_all(bytes)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::framing::write_packet;
    use tokio::io::duplex;

    fn frames(packets: &[&[u8]], first_seq: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (i, p) in packets.iter().enumerate() {
            write_packet(&mut out, first_seq.wrapping_add(i as u8), p);
        }
        out.to_vec()
    }

    const OPTS: RelayOptions = RelayOptions {
        deprecate_eof: false,
        session_track: true,
        untracked_client: false,
        local_files: false,
        drop_out_parameters: false,
    };

    /// Runs one relay: the "server" writes `server_bytes` in chunks of `chunk`; returns what
    /// the client received and the relay's result.
    async fn run(
        server_bytes: Vec<u8>,
        chunk: usize,
        kind: ResponseKind,
        opts: RelayOptions,
    ) -> (Vec<u8>, Result<Relayed, SessionError>) {
        run_meta(server_bytes, chunk, kind, opts, Metadata::Plain).await
    }

    /// [`run`] for a client with cached metadata (`meta`).
    async fn run_meta(
        server_bytes: Vec<u8>,
        chunk: usize,
        kind: ResponseKind,
        opts: RelayOptions,
        meta: Metadata<'_>,
    ) -> (Vec<u8>, Result<Relayed, SessionError>) {
        let meta = Meta {
            client: meta,
            server: ServerMeta::Off,
        };
        run_both(server_bytes, chunk, kind, opts, meta).await
    }

    /// [`run`] with what both ends expect of metadata.
    async fn run_both(
        server_bytes: Vec<u8>,
        chunk: usize,
        kind: ResponseKind,
        opts: RelayOptions,
        meta: Meta<'_>,
    ) -> (Vec<u8>, Result<Relayed, SessionError>) {
        let (mut proxy_client, mut app) = duplex(1 << 20);
        let (mut proxy_backend, mut server) = duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for c in server_bytes.chunks(chunk.max(1)) {
                server.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
            // The server closes its end once it has written everything.
        });
        let (mut cbuf, mut bbuf) = (BytesMut::new(), BytesMut::new());
        let r = relay(
            End {
                io: &mut proxy_client,
                buf: &mut cbuf,
            },
            End {
                io: &mut proxy_backend,
                buf: &mut bbuf,
            },
            kind,
            1,
            opts,
            meta,
        )
        .await;
        drop(proxy_client);
        writer.await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        (got, r)
    }

    /// [`run_meta`] of an execution for a client with cached metadata that held `last`.
    async fn run_cached(
        server_bytes: Vec<u8>,
        chunk: usize,
        last: &mut Option<Box<[u8]>>,
    ) -> (Vec<u8>, Result<Relayed, SessionError>) {
        let meta = Metadata::Cached(last);
        run_meta(server_bytes, chunk, ResponseKind::Execute, OPTS, meta).await
    }

    #[test]
    fn the_row_fast_path_passes_whole_rows_and_leaves_the_rest_untouched() {
        // Three rows, then an EOF: the rows pass, the EOF is left for the tracker.
        let rows: [&[u8]; 4] = [b"\x01a", b"\x02bc", b"\x00", b"\xfe\x00\x00\x02\x00"];
        let mut buf = frames(&rows, 5);
        let (pos, n, seq) = pass_rows(&mut buf, 0, 5, 0);
        assert_eq!((pos, n, seq), (4 + 2 + 4 + 3 + 4 + 1, 3, 8));
        assert_eq!(
            buf,
            frames(&rows, 5),
            "nothing rewritten without left-out packets"
        );
        // Left-out packets: the passed rows get the client's sequence ids, nothing else does.
        let (pos2, n2, seq2) = pass_rows(&mut buf, 0, 5, 2);
        assert_eq!((pos2, n2, seq2), (pos, 3, 8));
        assert_eq!(&buf[..pos], &frames(&rows[..3], 3)[..]);
        assert_eq!(buf[pos + 3], 8, "the EOF keeps the server's sequence id");
        // Starting part-way, at the second row.
        let mut buf = frames(&rows, 5);
        assert_eq!(pass_rows(&mut buf, 6, 6, 0), (pos, 2, 8));
    }

    #[test]
    fn the_row_fast_path_stops_at_anything_it_cannot_pass_whole() {
        let row: &[u8] = b"\x03abc";
        let check = |mut buf: Vec<u8>, expect_rows: u64| {
            let before = buf.clone();
            let (pos, n, seq) = pass_rows(&mut buf, 0, 1, 1);
            assert_eq!(n, expect_rows, "{before:?}");
            assert_eq!(pos, 8 * n as usize);
            assert_eq!(seq, 1 + n as u8);
            assert_eq!(&buf[pos..], &before[pos..], "what is left is untouched");
        };
        // The second row is cut short: its header (and sequence id) stay as they were.
        let mut b = frames(&[row, row], 1);
        b.truncate(b.len() - 1);
        check(b, 1);
        // A header with no payload byte yet.
        let mut b = frames(&[row, row], 1);
        b.truncate(12);
        check(b, 1);
        // An unexpected sequence id.
        let mut b = frames(&[row], 1);
        b.extend_from_slice(&frames(&[row], 7));
        check(b, 1);
        // An empty packet, an error, a packet that continues in the next frame.
        let mut b = frames(&[row], 1);
        b.extend_from_slice(&frames(&[b"", row], 2));
        check(b, 1);
        let mut b = frames(&[row], 1);
        b.extend_from_slice(&frames(&[b"\xff\x15\x04#HY000x"], 2));
        check(b, 1);
        let mut b = frames(&[row], 1);
        b.extend_from_slice(&[0xFF, 0xFF, 0xFF, 2, 0x01, 0x02]);
        check(b, 1);
        // Nothing at all.
        check(Vec::new(), 0);
    }

    #[tokio::test]
    async fn a_result_set_passes_byte_for_byte_in_any_chunking() {
        let coldef: &[u8] =
            b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x01\x00\x00\x00\x00";
        let eof: &[u8] = b"\xfe\x01\x00\x22\x00";
        let response = frames(
            &[b"\x01", coldef, eof, b"\x011", b"\x012", b"\x013", eof],
            1,
        );
        for chunk in [1, 3, 7, 64, 1 << 16] {
            let (got, r) = run(response.clone(), chunk, ResponseKind::Query, OPTS).await;
            let r = r.unwrap();
            assert_eq!(got, response, "chunk {chunk}");
            assert_eq!(r.rows, 3);
            assert_eq!(r.warnings, 1);
            assert!(!r.outcome.error);
        }
    }

    #[tokio::test]
    async fn an_ok_reports_insert_id_warnings_and_session_state() {
        // OK: 1 row, insert id 7, status AUTOCOMMIT|SESSION_STATE_CHANGED, 2 warnings, no
        // info, a session-state block with the schema `db2`.
        let ok: &[u8] = b"\x00\x01\x07\x02\x40\x02\x00\x00\x06\x01\x04\x03db2";
        let response = frames(&[ok], 1);
        let (got, r) = run(response.clone(), 5, ResponseKind::Query, OPTS).await;
        let r = r.unwrap();
        assert_eq!(got, response);
        assert_eq!((r.rows, r.insert_id, r.warnings), (1, 7, 2));
        assert_eq!(r.session_state.as_deref(), Some(ok));
    }

    #[tokio::test]
    async fn rows_pass_in_bulk_up_to_an_error_or_a_row_that_starts_with_0xfe() {
        let eof: &[u8] = b"\xfe\x00\x00\x02\x00";
        // A text row whose only column is 9+ bytes long starts with 0xFE (an 8-byte length):
        // it is a row, not the end.
        let mut long = vec![0xFE, 10, 0, 0, 0, 0, 0, 0, 0];
        long.extend_from_slice(b"0123456789");
        let err: &[u8] = b"\xff\x15\x04#HY000Query execution was interrupted";
        let response = frames(
            &[
                b"\x01", COLDEF_A, eof, b"\x011", b"\x012", &long, b"\x013", err,
            ],
            1,
        );
        for chunk in CHUNKS {
            let (got, r) = run(response.clone(), chunk, ResponseKind::Query, OPTS).await;
            let r = r.unwrap();
            assert_eq!(got, response, "chunk {chunk}");
            assert_eq!(r.rows, 4, "chunk {chunk}");
            assert!(r.outcome.error, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn only_ok_packets_report_session_state() {
        // A binary-protocol result: one INT column, one row holding 4194304 (bytes 00 00 40 00),
        // which read as an OK would be "0 rows, insert id 0, status 0x4000
        // (SESSION_STATE_CHANGED)"; then the OK that ends the result (CLIENT_DEPRECATE_EOF),
        // which reports the schema `db3`.
        let row: &[u8] = b"\x00\x00\x00\x00\x40\x00";
        let end: &[u8] = b"\xfe\x00\x00\x02\x40\x00\x00\x00\x06\x01\x04\x03db3";
        let eof_opts = RelayOptions {
            deprecate_eof: true,
            ..OPTS
        };
        let rows_only = frames(
            &[b"\x01", COLDEF_A, row, b"\xfe\x00\x00\x02\x00\x00\x00"],
            1,
        );
        let (got, r) = run(rows_only.clone(), 64, ResponseKind::Execute, eof_opts).await;
        assert_eq!(got, rows_only);
        assert_eq!(r.unwrap().session_state, None, "a row is not an OK packet");
        let with_state = frames(&[b"\x01", COLDEF_A, row, end], 1);
        let (got, r) = run(with_state.clone(), 7, ResponseKind::Execute, eof_opts).await;
        assert_eq!(got, with_state);
        assert_eq!(r.unwrap().session_state.as_deref(), Some(end));
    }

    #[tokio::test]
    async fn a_client_without_session_tracking_gets_oks_without_the_state_block() {
        let untracked = RelayOptions {
            deprecate_eof: true,
            untracked_client: true,
            ..OPTS
        };
        // A procedure's answer: a result (its end reports the schema `db3` and has
        // SERVER_MORE_RESULTS_EXISTS), then the final OK, which reports time_zone with the
        // info string of an UPDATE. Then the same with nothing to take out.
        let row: &[u8] = b"\x011";
        let end: &[u8] = b"\xfe\x00\x00\x0a\x40\x00\x00\x00\x06\x01\x04\x03db3";
        let end_plain: &[u8] = b"\xfe\x00\x00\x0a\x00\x00\x00";
        let mut last = b"\x00\x01\x00\x02\x40\x00\x00\x05match".to_vec();
        last.extend_from_slice(b"\x13\x00\x11\x09time_zone\x06+05:00");
        let last_plain: &[u8] = b"\x00\x01\x00\x02\x00\x00\x00\x05match";
        let response = frames(&[b"\x01", COLDEF_A, row, end, &last], 1);
        let want = frames(&[b"\x01", COLDEF_A, row, end_plain, last_plain], 1);
        for chunk in CHUNKS {
            let (got, r) = run(response.clone(), chunk, ResponseKind::Query, untracked).await;
            assert_eq!(got, want, "chunk {chunk}");
            let r = r.unwrap();
            // Sluice still learns the change (the server's own packet).
            assert_eq!(r.session_state.as_deref(), Some(&last[..]), "chunk {chunk}");
            assert_eq!(r.rows, 2, "chunk {chunk}");
        }
        let same = frames(&[b"\x01", COLDEF_A, row, end_plain, last_plain], 1);
        let (got, r) = run(same.clone(), 64, ResponseKind::Query, untracked).await;
        assert_eq!(got, same);
        assert_eq!(r.unwrap().session_state, None);
        // A client that asked for it gets the block.
        let tracked = RelayOptions {
            untracked_client: false,
            ..untracked
        };
        let (got, _) = run(response.clone(), 64, ResponseKind::Query, tracked).await;
        assert_eq!(got, response);
    }

    #[tokio::test]
    async fn the_out_parameters_of_a_call_are_left_out_for_a_client_that_did_not_ask() {
        // A prepared CALL: the procedure's result (two rows), the OUT parameters' result (one
        // row, its end with SERVER_PS_OUT_PARAMS | SERVER_MORE_RESULTS_EXISTS), the final OK.
        let row1: &[u8] = b"\x00\x00\x01\x00\x00\x00";
        let row2: &[u8] = b"\x00\x00\x02\x00\x00\x00";
        for deprecate_eof in [false, true] {
            let (more, out_end, defs_end): (&[u8], &[u8], &[&[u8]]) = if deprecate_eof {
                (
                    b"\xfe\x00\x00\x0a\x00\x00\x00",
                    b"\xfe\x00\x00\x0a\x10\x00\x00",
                    &[],
                )
            } else {
                (
                    b"\xfe\x00\x00\x0a\x00",
                    b"\xfe\x00\x00\x0a\x10",
                    &[b"\xfe\x00\x00\x0a\x00"],
                )
            };
            let last: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";
            let result = |rows: &[&'static [u8]], end: &'static [u8]| {
                let mut r: Vec<&[u8]> = vec![b"\x01", COLDEF_A];
                r.extend_from_slice(defs_end);
                r.extend_from_slice(rows);
                r.push(end);
                r
            };
            let procedure = result(&[row1, row2], more);
            let out = result(&[row1], out_end);
            let opts = RelayOptions {
                deprecate_eof,
                drop_out_parameters: true,
                ..OPTS
            };
            let all: Vec<&[u8]> = [&procedure[..], &out[..], &[last]].concat();
            let response = frames(&all, 1);
            let want = frames(&[&procedure[..], &[last]].concat(), 1);
            for chunk in CHUNKS {
                let (got, r) = run(response.clone(), chunk, ResponseKind::Execute, opts).await;
                assert_eq!(got, want, "chunk {chunk}, deprecate_eof {deprecate_eof}");
                assert!(!r.unwrap().outcome.error);
                // A client that asked for them gets them.
                let keep = RelayOptions {
                    drop_out_parameters: false,
                    ..opts
                };
                let (got, _) = run(response.clone(), chunk, ResponseKind::Execute, keep).await;
                assert_eq!(got, response, "chunk {chunk}");
            }
            // A procedure with OUT parameters only: the first result goes.
            let response = frames(&[&out[..], &[last]].concat(), 1);
            for chunk in CHUNKS {
                let (got, _) = run(response.clone(), chunk, ResponseKind::Execute, opts).await;
                assert_eq!(got, frames(&[last], 1), "chunk {chunk}");
            }
            // 300 OUT parameters: more packets than sequence ids (they wrap).
            let wide_count: &[u8] = b"\xfc\x2c\x01";
            let mut wide: Vec<&[u8]> = vec![wide_count];
            wide.extend(std::iter::repeat(COLDEF_A).take(300));
            wide.extend_from_slice(defs_end);
            let mut wide_row = vec![0u8; 2 + 38];
            wide_row.extend(std::iter::repeat(1u8).take(300));
            wide.push(&wide_row);
            let mut wide_out = wide.clone();
            wide_out.push(out_end);
            let response = frames(&[&procedure[..], &wide_out[..], &[last]].concat(), 1);
            let want = frames(&[&procedure[..], &[last]].concat(), 1);
            let mut wide_kept = wide.clone();
            wide_kept.push(more);
            let kept = frames(&[&wide_kept[..], &[last]].concat(), 1);
            for chunk in CHUNKS {
                let (got, _) = run(response.clone(), chunk, ResponseKind::Execute, opts).await;
                assert_eq!(got, want, "chunk {chunk}: 300 OUT parameters");
                let (got, _) = run(kept.clone(), chunk, ResponseKind::Execute, opts).await;
                assert_eq!(got, kept, "chunk {chunk}: 300 columns kept");
            }
            // An error in the middle of a result ends it as on any connection (the check
            // does not wait for a row that will not come).
            let err: &[u8] = b"\xff\x46\x05#70100Query execution was interrupted";
            for cut in [1, 2] {
                let mut broken = out[..cut].to_vec();
                broken.push(err);
                let response = frames(&broken, 1);
                for chunk in CHUNKS {
                    let (got, r) = run(response.clone(), chunk, ResponseKind::Execute, opts).await;
                    assert_eq!(got, response, "chunk {chunk}");
                    assert!(r.unwrap().outcome.error, "chunk {chunk}");
                }
            }
            // Results that are not OUT parameters stay: one row without the flag, and two
            // rows with it.
            for rows in [&[row1][..], &[row1, row2][..]] {
                let end = if rows.len() == 1 { more } else { out_end };
                let kept = result(rows, end);
                let response = frames(&[&kept[..], &[last]].concat(), 1);
                for chunk in CHUNKS {
                    let (got, _) = run(response.clone(), chunk, ResponseKind::Execute, opts).await;
                    assert_eq!(got, response, "chunk {chunk}");
                }
            }
        }
    }

    #[tokio::test]
    async fn out_parameters_hostile_responses_never_panic() {
        // A procedure's result, the OUT parameters' result and the final OK, damaged at random.
        let base = frames(
            &[
                b"\x01",
                COLDEF_A,
                b"\x00\x00\x01\x00\x00\x00",
                b"\xfe\x00\x00\x0a\x00\x00\x00",
                b"\x01",
                COLDEF_A,
                b"\x00\x00\x02\x00\x00\x00",
                b"\xfe\x00\x00\x0a\x10\x00\x00",
                b"\x00\x00\x00\x02\x00\x00\x00",
            ],
            1,
        );
        let mut damage = Damage::new(0x2545_F491_4F6C_DD1Du64);
        for case in 0..1500 {
            let (r, chunk) = damage.apply(&base);
            let opts = RelayOptions {
                deprecate_eof: case % 2 == 0,
                drop_out_parameters: true,
                ..OPTS
            };
            // Any outcome but a panic; the relay ends (the server side closes).
            let _ = run(r, chunk, ResponseKind::Execute, opts).await;
        }
    }

    #[tokio::test]
    async fn a_server_that_closes_before_answering_is_gone_after_part_of_it_lost() {
        let (_, r) = run(Vec::new(), 1, ResponseKind::Query, OPTS).await;
        assert!(matches!(r, Err(SessionError::BackendGone(_))), "{r:?}");
        // Between two packets: the client holds whole packets; the next sequence id is 2.
        let whole = frames(&[b"\x01"], 1);
        for chunk in [1, 64] {
            let (got, r) = run(whole.clone(), chunk, ResponseKind::Query, OPTS).await;
            assert_eq!(got, whole);
            assert!(
                matches!(r, Err(SessionError::BackendCut { seq: 2, .. })),
                "{r:?}"
            );
        }
        // A short packet that arrived in part is not forwarded: still between packets.
        let mut short = frames(&[b"\x01"], 1);
        short.extend_from_slice(b"\x05\x00\x00\x02ab");
        let (got, r) = run(short, 64, ResponseKind::Query, OPTS).await;
        assert_eq!(got, whole);
        assert!(
            matches!(r, Err(SessionError::BackendCut { seq: 2, .. })),
            "{r:?}"
        );
        // Inside a long packet (a 20,000-byte row streamed as it arrives, 100 bytes of it
        // forwarded): the client holds part of a packet and cannot be told cleanly.
        let mut torn = frames(&[b"\x01"], 1);
        torn.extend_from_slice(&[0x20, 0x4e, 0x00, 0x02]);
        torn.extend_from_slice(&[b'x'; 100]);
        let (_, r) = run(torn, 64, ResponseKind::Query, OPTS).await;
        assert!(matches!(r, Err(SessionError::BackendLost(_))), "{r:?}");
    }

    #[tokio::test]
    async fn wrong_sequence_ids_and_unasked_local_infile_are_refused() {
        let (got, r) = run(
            frames(&[b"\x00\x00\x00\x02\x00\x00\x00"], 5),
            64,
            ResponseKind::Query,
            OPTS,
        )
        .await;
        assert!(got.is_empty());
        assert!(matches!(r, Err(SessionError::BackendProtocol(_))), "{r:?}");
        let (got, r) = run(
            frames(&[b"\xfb/etc/passwd"], 1),
            64,
            ResponseKind::Query,
            OPTS,
        )
        .await;
        assert!(got.is_empty(), "the file request never reaches the client");
        assert!(matches!(r, Err(SessionError::BackendProtocol(_))), "{r:?}");
    }

    const COLDEF_A: &[u8] =
        b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x01\x00\x00\x00\x00";
    const COLDEF_B: &[u8] =
        b"\x03def\x00\x00\x00\x01b\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x01\x00\x00\x00\x00";
    const EOF_MORE: &[u8] = b"\xfe\x00\x00\x0a\x00";
    const EOF_END: &[u8] = b"\xfe\x00\x00\x02\x00";
    /// Random damage for the "hostile responses never panic" tests: a xorshift generator
    /// (fixed seed: every run damages alike).
    struct Damage(u64);

    impl Damage {
        fn new(seed: u64) -> Self {
            Damage(seed)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// `base` with one to four bytes changed, cut or inserted, and a read chunk size.
        fn apply(&mut self, base: &[u8]) -> (Vec<u8>, usize) {
            let mut r = base.to_vec();
            for _ in 0..1 + self.next() % 4 {
                let at = (self.next() as usize) % r.len();
                match self.next() % 3 {
                    0 => r[at] = self.next() as u8,
                    1 => r.truncate(at.max(1)),
                    _ => {
                        let b = self.next() as u8;
                        r.insert(at, b)
                    }
                }
            }
            (r, 1 + (self.next() as usize) % 80)
        }
    }

    const CHUNKS: [usize; 6] = [1, 3, 7, 30, 64, 1 << 16];

    /// An execution's answer with two result sets (two columns and one row, then one column
    /// and no row).
    fn two_results() -> Vec<u8> {
        frames(
            &[
                b"\x02",
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                b"\x00\x00\x01",
                EOF_MORE,
                b"\x01",
                COLDEF_A,
                EOF_END,
                EOF_END,
            ],
            1,
        )
    }

    /// Two text result sets (MORE_RESULTS on the first's EOF), of one and two columns; with
    /// `flagged`, each column count is followed by the metadata flag byte 1.
    fn two_text_results(flagged: bool) -> Vec<u8> {
        let (one, two): (&[u8], &[u8]) = if flagged {
            (b"\x01\x01", b"\x02\x01")
        } else {
            (b"\x01", b"\x02")
        };
        frames(
            &[
                one,
                COLDEF_A,
                EOF_END,
                b"\x011",
                EOF_MORE,
                two,
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                b"\x011\x012",
                EOF_END,
            ],
            1,
        )
    }

    #[tokio::test]
    async fn cached_metadata_text_results_get_the_flag_one() {
        // Each column count gets its byte 1.
        let response = two_text_results(false);
        let want = two_text_results(true);
        for chunk in CHUNKS {
            let (got, r) = run_meta(
                response.clone(),
                chunk,
                ResponseKind::Query,
                OPTS,
                Metadata::Sent,
            )
            .await;
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(r.unwrap().rows, 2);
        }
    }

    #[tokio::test]
    async fn cached_metadata_an_execution_leaves_out_what_the_client_holds() {
        let response = frames(
            &[
                b"\x02",
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                b"\x00\x00\x01",
                EOF_END,
            ],
            1,
        );
        let full = frames(
            &[
                b"\x02\x01",
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                b"\x00\x00\x01",
                EOF_END,
            ],
            1,
        );
        // Sequence ids of what follows the count go down by the two left out.
        let short = frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01", EOF_END], 1);
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        for chunk in CHUNKS {
            // Nothing known: sent, and recorded when it all came in one read.
            let mut last = None;
            let (got, r) = run_cached(response.clone(), chunk, &mut last).await;
            r.unwrap();
            assert_eq!(got, full, "chunk {chunk}");
            if chunk == 1 << 16 {
                assert_eq!(last.as_deref(), Some(&defs[..]));
            }
            // Known: left out whenever all of it is in the buffer at the count.
            let mut last = Some(defs.clone().into_boxed_slice());
            let (got, r) = run_cached(response.clone(), chunk, &mut last).await;
            assert_eq!(r.unwrap().rows, 1);
            if chunk == 1 << 16 {
                assert_eq!(got, short);
            } else {
                assert!(got == short || got == full, "chunk {chunk}: {got:?}");
            }
            if got == full {
                assert!(last.is_none(), "sent but not recorded: forgotten");
            }
            // Other definitions known: sent, and the new ones recorded.
            let mut last = Some(frames(&[COLDEF_B, COLDEF_A], 2).into_boxed_slice());
            let (got, _) = run_cached(response.clone(), chunk, &mut last).await;
            assert_eq!(got, full, "chunk {chunk}");
            assert!(last.is_none() || last.as_deref() == Some(&defs[..]));
        }
    }

    #[tokio::test]
    async fn cached_metadata_rows_after_left_out_definitions_get_the_clients_sequence_ids() {
        // Binary rows in bulk after the two definitions (and their EOF) the client holds: each
        // row's sequence id goes down by the two left out, up to the end or an error.
        let rows: Vec<Vec<u8>> = (1..=6u8).map(|i| vec![0x00, 0x00, i]).collect();
        let err: &[u8] = b"\xff\x15\x04#HY000Query execution was interrupted";
        for last_packet in [EOF_END, err] {
            let mut server: Vec<&[u8]> = vec![b"\x02", COLDEF_A, COLDEF_B, EOF_END];
            let mut client: Vec<&[u8]> = vec![b"\x02\x00", EOF_END];
            let mut full: Vec<&[u8]> = vec![b"\x02\x01", COLDEF_A, COLDEF_B, EOF_END];
            for r in &rows {
                server.push(r);
                client.push(r);
                full.push(r);
            }
            server.push(last_packet);
            client.push(last_packet);
            full.push(last_packet);
            let (response, short, full) =
                (frames(&server, 1), frames(&client, 1), frames(&full, 1));
            let defs = frames(&[COLDEF_A, COLDEF_B], 2);
            for chunk in CHUNKS {
                let mut last = Some(defs.clone().into_boxed_slice());
                let (got, r) = run_cached(response.clone(), chunk, &mut last).await;
                let r = r.unwrap();
                assert_eq!(r.rows, 6, "chunk {chunk}");
                assert_eq!(r.outcome.error, last_packet == err, "chunk {chunk}");
                if chunk == 1 << 16 {
                    assert_eq!(got, short, "chunk {chunk}");
                } else {
                    assert!(got == short || got == full, "chunk {chunk}: {got:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn cached_metadata_a_cut_after_left_out_definitions_names_the_clients_sequence() {
        let response = frames(&[b"\x02", COLDEF_A, COLDEF_B, EOF_END, b"\x00\x00\x01"], 1);
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        let mut last = Some(defs.into_boxed_slice());
        let (got, r) = run_cached(response.clone(), 1 << 16, &mut last).await;
        assert_eq!(got, frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01"], 1));
        // The server's next would be 6; the client's is 4.
        assert!(
            matches!(r, Err(SessionError::BackendCut { seq: 4, .. })),
            "{r:?}"
        );
        // More than one result: the record is dropped (the client keeps the last one's).
        let two = two_results();
        let mut last = Some(frames(&[COLDEF_A, COLDEF_B], 2).into_boxed_slice());
        let (_, r) = run_cached(two, 1 << 16, &mut last).await;
        r.unwrap();
        assert!(last.is_none());
    }

    #[tokio::test]
    async fn cached_metadata_hostile_responses_never_panic() {
        let base = two_results();
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        let mut damage = Damage::new(0x9E37_79B9_7F4A_7C15u64);
        for case in 0..1500 {
            let (r, chunk) = damage.apply(&base);
            let mut last = (case % 2 == 0).then(|| defs.clone().into_boxed_slice());
            let meta = if case % 3 == 0 {
                Metadata::Sent
            } else {
                Metadata::Cached(&mut last)
            };
            // Any outcome but a panic; the relay ends (the server side closes).
            let _ = run_meta(r, chunk, ResponseKind::Execute, OPTS, meta).await;
        }
        // A column count with bytes after the integer, before definitions the client holds.
        let long = frames(
            &[
                b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                EOF_END,
            ],
            1,
        );
        let mut last = Some(defs.into_boxed_slice());
        let (_, r) = run_cached(long, 1 << 16, &mut last).await;
        assert!(matches!(r, Err(SessionError::BackendProtocol(_))), "{r:?}");
    }

    #[tokio::test]
    async fn cached_metadata_long_definitions_are_not_kept() {
        // 300 columns of 63-byte definitions: over MAX_KEPT_METADATA, sent, not kept.
        let mut def = COLDEF_A.to_vec();
        def.extend_from_slice(&[b'x'; 40]);
        let mut packets: Vec<&[u8]> = vec![b"\xfd\x2c\x01\x00"];
        packets.extend(std::iter::repeat_n(&def[..], 300));
        packets.extend([EOF_END, EOF_END]);
        let response = frames(&packets, 1);
        let mut last = None;
        let (got, r) = run_cached(response.clone(), 1 << 20, &mut last).await;
        r.unwrap();
        assert_eq!(got.len(), response.len() + 1);
        assert!(last.is_none());
    }

    /// [`run_both`] of an execution on a server connection with cached metadata that keeps
    /// `kept` for the statement, for a client whose record is `client`.
    async fn run_server_cached(
        server_bytes: Vec<u8>,
        chunk: usize,
        opts: RelayOptions,
        client: Metadata<'_>,
        kept: Option<&[u8]>,
    ) -> (Vec<u8>, Result<Relayed, SessionError>) {
        let meta = Meta {
            client,
            server: ServerMeta::On { exec: true, kept },
        };
        run_both(server_bytes, chunk, ResponseKind::Execute, opts, meta).await
    }

    const DEPRECATE: RelayOptions = RelayOptions {
        deprecate_eof: true,
        ..OPTS
    };
    const OK_END: &[u8] = b"\xfe\x00\x00\x02\x00\x00\x00";

    #[tokio::test]
    async fn server_cached_metadata_sent_definitions_are_kept_for_the_statement() {
        // The server sends the definitions (flag 1): the client gets them as they are, and
        // both the connection's record and the client's take them — in any chunking, since
        // they are read whole before anything is forwarded.
        let response = frames(
            &[
                b"\x02\x01",
                COLDEF_A,
                COLDEF_B,
                EOF_END,
                b"\x00\x00\x01",
                EOF_END,
            ],
            1,
        );
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        for chunk in CHUNKS {
            let mut last = None;
            let (got, r) = run_server_cached(
                response.clone(),
                chunk,
                OPTS,
                Metadata::Cached(&mut last),
                None,
            )
            .await;
            let r = r.unwrap();
            assert_eq!(got, response, "chunk {chunk}");
            assert_eq!(r.server_meta.as_deref(), Some(&defs[..]), "chunk {chunk}");
            assert_eq!(last.as_deref(), Some(&defs[..]), "chunk {chunk}");
            assert_eq!(r.rows, 1);
            // A client that holds them: left out (flag 0), the rest renumbered; still kept.
            let (got, r) = run_server_cached(
                response.clone(),
                chunk,
                OPTS,
                Metadata::Cached(&mut last),
                None,
            )
            .await;
            let r = r.unwrap();
            let short = frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01", EOF_END], 1);
            assert_eq!(got, short, "chunk {chunk}");
            assert_eq!(r.server_meta.as_deref(), Some(&defs[..]), "chunk {chunk}");
        }
        // Not an execution of a kept statement (a bulk execution without a record, a text
        // query): nothing is returned to keep.
        let meta = Meta {
            client: Metadata::Sent,
            server: ServerMeta::On {
                exec: false,
                kept: None,
            },
        };
        let (got, r) = run_both(response.clone(), 7, ResponseKind::Query, OPTS, meta).await;
        assert_eq!(got, response);
        assert_eq!(r.unwrap().server_meta, None);
    }

    #[tokio::test]
    async fn server_cached_metadata_left_out_definitions_pass_to_a_client_that_holds_them() {
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        for (opts, response) in [
            (
                OPTS,
                frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01", EOF_END], 1),
            ),
            (
                DEPRECATE,
                frames(&[b"\x02\x00", b"\x00\x00\x01", OK_END], 1),
            ),
        ] {
            for chunk in CHUNKS {
                let mut last = Some(defs.clone().into_boxed_slice());
                let (got, r) = run_server_cached(
                    response.clone(),
                    chunk,
                    opts,
                    Metadata::Cached(&mut last),
                    Some(&defs),
                )
                .await;
                let r = r.unwrap();
                assert_eq!(got, response, "chunk {chunk}: passed untouched");
                assert_eq!((r.rows, r.server_meta), (1, None));
                assert_eq!(last.as_deref(), Some(&defs[..]));
            }
        }
    }

    #[tokio::test]
    async fn server_cached_metadata_left_out_definitions_are_inserted_for_a_client_without_them() {
        // The server's record says the client has A, B (another session saw them last); this
        // client holds B, A, or nothing, or keeps no record: it gets the kept definitions
        // with flag 1 and its own sequence ids, and what follows is renumbered.
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        let rows: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![0x00, 0x00, i]).collect();
        let rows: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        for (opts, end) in [(OPTS, EOF_END), (DEPRECATE, OK_END)] {
            let eof: &[&[u8]] = if opts.deprecate_eof { &[] } else { &[EOF_END] };
            let server: Vec<&[u8]> = [&[&b"\x02\x00"[..]][..], eof, &rows, &[end]].concat();
            let full: Vec<&[u8]> = [
                &[&b"\x02\x01"[..], COLDEF_A, COLDEF_B][..],
                eof,
                &rows,
                &[end],
            ]
            .concat();
            let (response, full) = (frames(&server, 1), frames(&full, 1));
            for chunk in CHUNKS {
                for held in [None, Some(frames(&[COLDEF_B, COLDEF_A], 2))] {
                    let mut last = held.map(Vec::into_boxed_slice);
                    let (got, r) = run_server_cached(
                        response.clone(),
                        chunk,
                        opts,
                        Metadata::Cached(&mut last),
                        Some(&defs),
                    )
                    .await;
                    let r = r.unwrap();
                    assert_eq!(got, full, "chunk {chunk}");
                    assert_eq!(r.rows, 3);
                    assert_eq!(
                        last.as_deref(),
                        Some(&defs[..]),
                        "the client holds them now"
                    );
                }
                let (got, r) =
                    run_server_cached(response.clone(), chunk, opts, Metadata::Sent, Some(&defs))
                        .await;
                r.unwrap();
                assert_eq!(got, full, "chunk {chunk}");
            }
        }
        // Cut after a row: the client's next sequence id counts the inserted definitions
        // (server: count 1, EOF 2, row 3, next 4; client: count 1, A 2, B 3, EOF 4, row 5).
        let cut = frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01"], 1);
        let (_, r) = run_server_cached(cut, 1 << 16, OPTS, Metadata::Sent, Some(&defs)).await;
        assert!(
            matches!(r, Err(SessionError::BackendCut { seq: 6, .. })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn server_cached_metadata_what_sluice_cannot_answer_for_is_a_protocol_error() {
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        let left_out = frames(&[b"\x02\x00", EOF_END, b"\x00\x00\x01", EOF_END], 1);
        let protocol =
            |r: &Result<Relayed, SessionError>| matches!(r, Err(SessionError::BackendProtocol(_)));
        // Nothing kept for the statement.
        let (got, r) = run_server_cached(left_out.clone(), 64, OPTS, Metadata::Sent, None).await;
        assert!(protocol(&r) && got.is_empty(), "{r:?}");
        // Kept definitions that do not match the column count.
        let one = frames(&[COLDEF_A], 2);
        let (_, r) =
            run_server_cached(left_out.clone(), 64, OPTS, Metadata::Sent, Some(&one)).await;
        assert!(protocol(&r), "{r:?}");
        // Left out in a second result (only an execution's first has a record).
        let second = frames(
            &[
                b"\x01\x01",
                COLDEF_A,
                EOF_END,
                b"\x00\x00\x01",
                EOF_MORE,
                b"\x02\x00",
                EOF_END,
                EOF_END,
            ],
            1,
        );
        let (_, r) = run_server_cached(second, 64, OPTS, Metadata::Sent, Some(&defs)).await;
        assert!(protocol(&r), "{r:?}");
        // A flag that is neither 0 nor 1, a count without the flag, a client without the
        // capability.
        for bad in [
            frames(&[b"\x02\x02", EOF_END, EOF_END], 1),
            frames(&[b"\x02", COLDEF_A], 1),
        ] {
            let (_, r) = run_server_cached(bad, 64, OPTS, Metadata::Sent, Some(&defs)).await;
            assert!(protocol(&r), "{r:?}");
        }
        let (_, r) = run_server_cached(left_out, 64, OPTS, Metadata::Plain, Some(&defs)).await;
        assert!(protocol(&r), "{r:?}");
    }

    #[tokio::test]
    async fn server_cached_metadata_text_results_pass_as_they_are() {
        // Text results always carry their definitions (flag 1): passed untouched, several
        // results too, nothing kept.
        let response = two_text_results(true);
        for chunk in CHUNKS {
            let meta = Meta {
                client: Metadata::Sent,
                server: ServerMeta::On {
                    exec: false,
                    kept: None,
                },
            };
            let (got, r) = run_both(response.clone(), chunk, ResponseKind::Query, OPTS, meta).await;
            assert_eq!(got, response, "chunk {chunk}");
            let r = r.unwrap();
            assert_eq!((r.rows, r.server_meta), (2, None));
        }
    }

    #[tokio::test]
    async fn server_cached_metadata_hostile_responses_never_panic() {
        let defs = frames(&[COLDEF_A, COLDEF_B], 2);
        let bases = [
            frames(
                &[
                    b"\x02\x01",
                    COLDEF_A,
                    COLDEF_B,
                    EOF_END,
                    b"\x00\x00\x01",
                    EOF_MORE,
                    b"\x01\x01",
                    COLDEF_A,
                    EOF_END,
                    EOF_END,
                ],
                1,
            ),
            frames(
                &[
                    b"\x02\x00",
                    EOF_END,
                    b"\x00\x00\x01",
                    b"\x00\x00\x02",
                    EOF_END,
                ],
                1,
            ),
        ];
        let mut damage = Damage::new(0x2545_F491_4F6C_DD1Du64);
        for case in 0..1500 {
            let (r, chunk) = damage.apply(&bases[case % 2]);
            let mut last = (case % 3 == 0).then(|| defs.clone().into_boxed_slice());
            let client = if case % 5 == 0 {
                Metadata::Sent
            } else {
                Metadata::Cached(&mut last)
            };
            let kept = (case % 7 != 0).then_some(&defs[..]);
            let _ = run_server_cached(r, chunk, OPTS, client, kept).await;
        }
    }
}
