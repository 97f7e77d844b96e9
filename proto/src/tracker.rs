//! The response tracker: fed the server's packets one at a time, it says when the response to a
//! command is complete and which status flags the session is left with — without decoding rows.
//!
//! It looks only at the first bytes of each logical packet: the header byte, the column count,
//! and the status flags of OK/EOF terminators. A row is recognised as "not a terminator" and
//! skipped, whatever its size.
//!
//! Shapes handled: OK, ERR, text and binary result sets (with or without
//! `CLIENT_DEPRECATE_EOF`), multi-results (`SERVER_MORE_RESULTS_EXISTS`), COM_STMT_PREPARE
//! (parameter and column definitions), COM_FIELD_LIST, cursors (COM_STMT_EXECUTE opening one,
//! COM_STMT_FETCH reading it), COM_STATISTICS, and LOCAL INFILE requests (the client must then
//! send the file before the server answers).

use crate::command::*;
use crate::eof::EOF_MAX_LEN;
use crate::flags::status::SERVER_MORE_RESULTS_EXISTS;
use crate::flags::status::SERVER_STATUS_CURSOR_EXISTS;
use crate::framing::MAX_FRAME_PAYLOAD;
use crate::lenenc::Reader;
use crate::ProtoError;

/// The shape of response a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// No response at all (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    None,
    /// One OK, EOF or ERR packet (COM_PING, COM_INIT_DB, COM_SET_OPTION, …).
    Simple,
    /// One packet of text (COM_STATISTICS).
    Statistics,
    /// OK, ERR, LOCAL INFILE request, or text result sets, possibly several (COM_QUERY).
    Query,
    /// OK, ERR or binary result sets; may open a cursor (COM_STMT_EXECUTE).
    Execute,
    /// Prepare-OK with parameter and column definitions, or ERR (COM_STMT_PREPARE).
    Prepare,
    /// Column definitions ended by EOF, or ERR (COM_FIELD_LIST).
    FieldList,
    /// Rows of an open cursor ended by EOF, or ERR (COM_STMT_FETCH).
    Fetch,
}

impl ResponseKind {
    /// The response shape for a command byte.
    pub fn for_command(code: u8) -> Self {
        match code {
            COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => ResponseKind::None,
            COM_QUERY | COM_PROCESS_INFO => ResponseKind::Query,
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => ResponseKind::Execute,
            COM_STMT_PREPARE => ResponseKind::Prepare,
            COM_FIELD_LIST => ResponseKind::FieldList,
            COM_STMT_FETCH => ResponseKind::Fetch,
            COM_STATISTICS => ResponseKind::Statistics,
            _ => ResponseKind::Simple,
        }
    }
}

/// What the tracker concluded from one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More packets belong to this response.
    More,
    /// The server asked for a LOCAL INFILE: the client sends the file (ended by an empty
    /// packet), then call [`ResponseTracker::local_infile_sent`] and go on feeding.
    LocalInfile,
    /// The response is complete.
    Done(Outcome),
}

/// More columns than any server sends (MySQL's and MariaDB's limit is 4096; prepared
/// statements count columns in 16 bits): a larger count is a hostile or broken server.
pub const MAX_COLUMNS: u64 = 65_535;

/// How a complete response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Status flags of the final OK/EOF, when the response carried any.
    pub status: Option<u16>,
    /// Whether it ended with an ERR packet.
    pub error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first packet of a result (or of the whole response).
    First,
    Columns(u64),
    ColumnsEof,
    Rows,
    PrepareParams {
        params: u64,
        columns: u64,
    },
    PrepareParamsEof {
        columns: u64,
    },
    PrepareColumns(u64),
    PrepareColumnsEof,
    FieldList,
    /// Waiting for the client's LOCAL INFILE data to be forwarded.
    Infile,
    Done,
}

/// Finds the end of one command's response. Create one per command.
#[derive(Debug, Clone)]
pub struct ResponseTracker {
    kind: ResponseKind,
    deprecate_eof: bool,
    /// `MARIADB_CLIENT_CACHE_METADATA` was negotiated: a column count is followed by a
    /// "metadata follows" byte, and when it is 0 no column definitions come.
    cache_metadata: bool,
    state: State,
    last_status: Option<u16>,
    rows: u64,
    /// Warnings and last insert id of the newest OK/EOF seen.
    warnings: u16,
    insert_id: u64,
    /// The packet just fed was an OK packet (header 0x00, or 0xFE ending a result set under
    /// `CLIENT_DEPRECATE_EOF`); a row whose first byte is 0x00 is not one.
    fed_ok: bool,
}

/// Why a response cannot be followed: the server sent something this command cannot get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("unexpected packet in a response: {0}")]
    Unexpected(&'static str),
    #[error(transparent)]
    Malformed(#[from] ProtoError),
}

impl ResponseTracker {
    /// `deprecate_eof`: whether `CLIENT_DEPRECATE_EOF` was negotiated on the connection.
    pub fn new(kind: ResponseKind, deprecate_eof: bool) -> Self {
        let state = match kind {
            ResponseKind::Fetch => State::Rows,
            ResponseKind::None => State::Done,
            _ => State::First,
        };
        ResponseTracker {
            kind,
            deprecate_eof,
            cache_metadata: false,
            state,
            last_status: None,
            rows: 0,
            warnings: 0,
            insert_id: 0,
            fed_ok: false,
        }
    }

    /// A tracker for a connection that negotiated `MARIADB_CLIENT_CACHE_METADATA` (Sluice's
    /// server connections never do; a client's may, and tests follow such responses).
    pub fn with_cache_metadata(mut self, on: bool) -> Self {
        self.cache_metadata = on;
        self
    }

    /// Whether the next packet fed begins a result: an OK, an ERR, a LOCAL INFILE request
    /// or a column count (of a query's or an execution's response).
    #[inline]
    pub fn at_result_start(&self) -> bool {
        self.state == State::First
            && matches!(self.kind, ResponseKind::Query | ResponseKind::Execute)
    }

    /// Whether the next packet may be a row of a result set (the relay passes rows in bulk:
    /// [`ResponseTracker::rows_passed`]).
    #[inline]
    pub fn in_rows(&self) -> bool {
        self.state == State::Rows
    }

    /// `n` rows passed without [`ResponseTracker::feed`]: whole packets, in the rows state,
    /// whose first byte is neither 0xFE nor 0xFF (what `feed` would have counted as rows).
    #[inline]
    pub fn rows_passed(&mut self, n: u64) {
        debug_assert!(n == 0 || self.state == State::Rows);
        self.rows = self.rows.saturating_add(n);
        self.fed_ok = false;
    }

    /// Whether the packet just fed was an OK packet (which may carry session-state changes).
    #[inline]
    pub fn fed_ok(&self) -> bool {
        self.fed_ok
    }

    /// Whether the packet just fed was a column count: column definitions come next.
    #[inline]
    pub fn in_column_definitions(&self) -> bool {
        matches!(self.state, State::Columns(_))
    }

    /// Whether the packet just fed was a column count whose definitions were left out
    /// (cached metadata, "metadata follows" 0): the definitions' EOF or the rows come next.
    #[inline]
    pub fn definitions_left_out(&self) -> bool {
        self.cache_metadata && matches!(self.state, State::ColumnsEof | State::Rows)
    }

    /// Rows of the response so far: rows of its result sets plus the affected rows its OK
    /// packets reported (for statistics; never used to find the end).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Warning count of the newest OK or EOF packet of the response.
    pub fn warnings(&self) -> u16 {
        self.warnings
    }

    /// Last insert id of the newest OK packet of the response (0 when none).
    pub fn insert_id(&self) -> u64 {
        self.insert_id
    }

    pub fn kind(&self) -> ResponseKind {
        self.kind
    }

    /// Whether the response is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Call after the client's LOCAL INFILE data (with its empty terminator) was forwarded.
    pub fn local_infile_sent(&mut self) {
        if self.state == State::Infile {
            self.state = State::First;
        }
    }

    /// Feeds the next logical packet of the response. `len` is its whole payload length (all
    /// frames); `prefix` is its payload or, for long packets, at least its first 64 bytes.
    pub fn feed(&mut self, len: usize, prefix: &[u8]) -> Result<Progress, TrackerError> {
        self.fed_ok = false;
        // A packet that spans frames is always data (a row or a long column definition).
        let small = len < MAX_FRAME_PAYLOAD;
        let head = prefix.first().copied();
        if self.state == State::Done || self.state == State::Infile {
            return Err(TrackerError::Unexpected(
                "packet after the end of the response",
            ));
        }
        if small && head == Some(0xFF) && self.kind != ResponseKind::Statistics {
            // A MariaDB progress report is an ERR with code 0xFFFF; it is not the end.
            if prefix.len() >= 3 && prefix[1] == 0xFF && prefix[2] == 0xFF {
                return Ok(Progress::More);
            }
            return Ok(self.finish(None, true));
        }
        let head = head.ok_or(TrackerError::Unexpected("empty packet"))?;
        match self.state {
            State::First => self.first(head, small, prefix),
            State::Columns(n) => {
                self.state = if n > 1 {
                    State::Columns(n - 1)
                } else if self.deprecate_eof {
                    State::Rows
                } else {
                    State::ColumnsEof
                };
                Ok(Progress::More)
            }
            State::ColumnsEof => {
                let status = self.eof_status(small, prefix)?;
                if self.kind == ResponseKind::Execute && status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                    // A cursor was opened: rows come later, through COM_STMT_FETCH.
                    return Ok(self.finish(Some(status), false));
                }
                self.state = State::Rows;
                Ok(Progress::More)
            }
            State::Rows => {
                if head == 0xFE && small && (self.deprecate_eof || len < EOF_MAX_LEN) {
                    let status = if self.deprecate_eof {
                        self.note_ok(prefix);
                        ok_status(prefix)?
                    } else {
                        self.note_eof(prefix);
                        eof_status(prefix)?
                    };
                    return Ok(self.end_of_result(status));
                }
                self.rows += 1;
                Ok(Progress::More)
            }
            State::PrepareParams { params, columns } => {
                self.state = if params > 1 {
                    State::PrepareParams {
                        params: params - 1,
                        columns,
                    }
                } else if !self.deprecate_eof {
                    State::PrepareParamsEof { columns }
                } else {
                    return Ok(self.prepare_columns(columns));
                };
                Ok(Progress::More)
            }
            State::PrepareParamsEof { columns } => {
                let status = self.eof_status(small, prefix)?;
                self.last_status = Some(status);
                Ok(self.prepare_columns(columns))
            }
            State::PrepareColumns(n) => {
                if n > 1 {
                    self.state = State::PrepareColumns(n - 1);
                    Ok(Progress::More)
                } else if !self.deprecate_eof {
                    self.state = State::PrepareColumnsEof;
                    Ok(Progress::More)
                } else {
                    Ok(self.finish(self.last_status, false))
                }
            }
            State::PrepareColumnsEof => {
                let status = self.eof_status(small, prefix)?;
                Ok(self.finish(Some(status), false))
            }
            State::FieldList => {
                if head == 0xFE && small && (self.deprecate_eof || len < EOF_MAX_LEN) {
                    let status = if self.deprecate_eof {
                        ok_status(prefix)?
                    } else {
                        eof_status(prefix)?
                    };
                    return Ok(self.finish(Some(status), false));
                }
                Ok(Progress::More)
            }
            State::Infile | State::Done => unreachable!("handled above"),
        }
    }

    fn first(&mut self, head: u8, small: bool, prefix: &[u8]) -> Result<Progress, TrackerError> {
        match self.kind {
            ResponseKind::Statistics => Ok(self.finish(None, false)),
            ResponseKind::Simple => match head {
                0x00 if small => {
                    self.note_ok(prefix);
                    Ok(self.finish(Some(ok_status(prefix)?), false))
                }
                0xFE if small && prefix.len() < EOF_MAX_LEN => {
                    Ok(self.finish(Some(eof_status(prefix)?), false))
                }
                0xFE if small => Ok(self.finish(Some(ok_status(prefix)?), false)),
                _ => Err(TrackerError::Unexpected("expected OK or ERR")),
            },
            ResponseKind::FieldList => {
                self.state = State::FieldList;
                self.feed(
                    prefix.len().max(if small { 0 } else { MAX_FRAME_PAYLOAD }),
                    prefix,
                )
            }
            ResponseKind::Prepare => {
                if head != 0x00 || !small {
                    return Err(TrackerError::Unexpected("expected a prepare OK"));
                }
                let mut r = Reader::new(&prefix[1..]);
                r.u32("statement id")?;
                let columns = u64::from(r.u16("column count")?);
                let params = u64::from(r.u16("parameter count")?);
                if params > 0 {
                    self.state = State::PrepareParams { params, columns };
                    Ok(Progress::More)
                } else {
                    Ok(self.prepare_columns(columns))
                }
            }
            ResponseKind::Query | ResponseKind::Execute => match head {
                0x00 if small => {
                    let status = ok_status(prefix)?;
                    self.note_ok(prefix);
                    self.rows = self.rows.saturating_add(affected_rows(prefix));
                    Ok(self.end_of_result(status))
                }
                0xFB if small && self.kind == ResponseKind::Query => {
                    self.state = State::Infile;
                    Ok(Progress::LocalInfile)
                }
                _ => {
                    let mut r = Reader::new(prefix);
                    let n = r.lenenc_int("column count")?;
                    if n == 0 {
                        return Err(TrackerError::Unexpected("zero column count"));
                    }
                    if n > MAX_COLUMNS {
                        return Err(TrackerError::Unexpected("column count out of range"));
                    }
                    self.state = State::Columns(n);
                    if self.cache_metadata && r.u8("metadata follows")? == 0 {
                        // The client kept the definitions of an earlier execution.
                        self.state = if self.deprecate_eof {
                            State::Rows
                        } else {
                            State::ColumnsEof
                        };
                    }
                    Ok(Progress::More)
                }
            },
            ResponseKind::Fetch | ResponseKind::None => {
                Err(TrackerError::Unexpected("no first packet expected"))
            }
        }
    }

    fn prepare_columns(&mut self, columns: u64) -> Progress {
        if columns > 0 {
            self.state = State::PrepareColumns(columns);
            Progress::More
        } else {
            self.finish(self.last_status, false)
        }
    }

    fn note_ok(&mut self, p: &[u8]) {
        self.fed_ok = true;
        let mut r = Reader::new(p.get(1..).unwrap_or_default());
        let _ = r.lenenc_int("affected rows");
        self.insert_id = r.lenenc_int("last insert id").unwrap_or(0);
        let _ = r.u16("status flags");
        self.warnings = r.u16("warnings").unwrap_or(0);
    }

    fn note_eof(&mut self, p: &[u8]) {
        let mut r = Reader::new(p.get(1..).unwrap_or_default());
        self.warnings = r.u16("warnings").unwrap_or(0);
    }

    fn eof_status(&self, small: bool, prefix: &[u8]) -> Result<u16, TrackerError> {
        if !small || prefix.first() != Some(&0xFE) {
            return Err(TrackerError::Unexpected("expected EOF after definitions"));
        }
        Ok(eof_status(prefix)?)
    }

    fn end_of_result(&mut self, status: u16) -> Progress {
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.last_status = Some(status);
            self.state = State::First;
            Progress::More
        } else {
            self.finish(Some(status), false)
        }
    }

    fn finish(&mut self, status: Option<u16>, error: bool) -> Progress {
        self.state = State::Done;
        Progress::Done(Outcome { status, error })
    }
}

/// Status flags of an OK packet (0x00 or 0xFE header).
pub fn ok_status(p: &[u8]) -> Result<u16, ProtoError> {
    let mut r = Reader::new(p);
    r.u8("header")?;
    r.lenenc_int("affected rows")?;
    r.lenenc_int("last insert id")?;
    r.u16("status flags")
}

/// Affected rows of a well-formed OK packet (0 when it cannot be read).
fn affected_rows(p: &[u8]) -> u64 {
    let mut r = Reader::new(p.get(1..).unwrap_or_default());
    r.lenenc_int("affected rows").unwrap_or(0)
}

/// Status flags of an EOF packet.
pub fn eof_status(p: &[u8]) -> Result<u16, ProtoError> {
    let mut r = Reader::new(p);
    r.u8("header")?;
    r.u16("warnings")?;
    r.u16("status flags")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::status::*;

    fn run(kind: ResponseKind, deprecate: bool, packets: &[&[u8]]) -> Vec<Progress> {
        let mut t = ResponseTracker::new(kind, deprecate);
        packets
            .iter()
            .map(|p| t.feed(p.len(), p).unwrap())
            .collect()
    }

    const COLDEF: &[u8] =
        b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x01\x00\x00\x00\x00";
    const EOF_AC: &[u8] = b"\xfe\x00\x00\x02\x00";
    const OK_AC: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";
    const OKEOF_AC: &[u8] = b"\xfe\x00\x00\x02\x00\x00\x00";

    fn done(status: u16) -> Progress {
        Progress::Done(Outcome {
            status: Some(status),
            error: false,
        })
    }

    #[test]
    fn text_result_classic_eof() {
        let p = run(
            ResponseKind::Query,
            false,
            &[b"\x01", COLDEF, EOF_AC, b"\x011", b"\x012", EOF_AC],
        );
        assert_eq!(p[..5], [Progress::More; 5]);
        assert_eq!(p[5], done(2));
    }

    #[test]
    fn counts_rows_and_affected_rows() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        for p in [
            &b"\x01"[..],
            COLDEF,
            EOF_AC,
            b"\x011",
            b"\x012",
            b"\x013",
            EOF_AC,
        ] {
            t.feed(p.len(), p).unwrap();
        }
        assert_eq!(t.rows(), 3);
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        let ok_7 = b"\x00\x07\x00\x02\x00\x00\x00";
        assert_eq!(t.feed(ok_7.len(), ok_7).unwrap(), done(2));
        assert_eq!(t.rows(), 7);
    }

    #[test]
    fn text_result_deprecate_eof() {
        let p = run(
            ResponseKind::Query,
            true,
            &[b"\x01", COLDEF, b"\x011", OKEOF_AC],
        );
        assert_eq!(p[3], done(2));
    }

    #[test]
    fn multi_results() {
        let more_ok = b"\x00\x01\x00\x0a\x00\x00\x00"; // AUTOCOMMIT | MORE_RESULTS
        let more_eof = b"\xfe\x00\x00\x0a\x00";
        let p = run(
            ResponseKind::Query,
            false,
            &[more_ok, b"\x01", COLDEF, EOF_AC, b"\x011", more_eof, OK_AC],
        );
        assert_eq!(p[..6], [Progress::More; 6]);
        assert_eq!(p[6], done(2));
    }

    #[test]
    fn error_mid_rows_and_first() {
        let err = b"\xff\x15\x04#42000boom";
        let p = run(ResponseKind::Query, true, &[b"\x01", COLDEF, b"\x011", err]);
        assert_eq!(
            p[3],
            Progress::Done(Outcome {
                status: None,
                error: true
            })
        );
        let p = run(ResponseKind::Query, true, &[err]);
        assert_eq!(
            p[0],
            Progress::Done(Outcome {
                status: None,
                error: true
            })
        );
    }

    #[test]
    fn long_rows_are_data() {
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        t.feed(1, b"\x01").unwrap();
        t.feed(COLDEF.len(), COLDEF).unwrap();
        // A 20 MiB row whose first value starts with 0xFE (an 8-byte length).
        assert_eq!(
            t.feed(20 << 20, b"\xfe\x00\x00\x40\x01\x00\x00\x00\x00")
                .unwrap(),
            Progress::More
        );
        assert_eq!(t.feed(7, OKEOF_AC).unwrap(), done(2));
    }

    #[test]
    fn local_infile() {
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        assert_eq!(t.feed(6, b"\xfb/tmp/x").unwrap(), Progress::LocalInfile);
        assert!(t.feed(7, OK_AC).is_err());
        t.local_infile_sent();
        assert_eq!(t.feed(7, OK_AC).unwrap(), done(2));
    }

    #[test]
    fn prepare_with_params_and_columns() {
        let pok = b"\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00";
        let p = run(
            ResponseKind::Prepare,
            false,
            &[pok, COLDEF, COLDEF, EOF_AC, COLDEF, EOF_AC],
        );
        assert_eq!(p[..5], [Progress::More; 5]);
        assert_eq!(p[5], done(2));
        let p = run(ResponseKind::Prepare, true, &[pok, COLDEF, COLDEF, COLDEF]);
        assert_eq!(p[2], Progress::More);
        assert_eq!(
            p[3],
            Progress::Done(Outcome {
                status: None,
                error: false
            })
        );
        let none = b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(
            run(ResponseKind::Prepare, false, &[none])[0],
            Progress::Done(Outcome {
                status: None,
                error: false
            })
        );
    }

    #[test]
    fn cursor_execute_then_fetch() {
        let cursor_eof = b"\xfe\x00\x00\x42\x00"; // AUTOCOMMIT | CURSOR_EXISTS
        let p = run(ResponseKind::Execute, false, &[b"\x01", COLDEF, cursor_eof]);
        assert_eq!(p[2], done(0x42));
        let cursor_ok = b"\xfe\x00\x00\x42\x00\x00\x00";
        let p = run(ResponseKind::Execute, true, &[b"\x01", COLDEF, cursor_ok]);
        assert_eq!(p[2], done(0x42));
        let last = b"\xfe\x00\x00\xc2\x00";
        let p = run(
            ResponseKind::Fetch,
            false,
            &[b"\x00\x00\x01", b"\x00\x00\x02", last],
        );
        assert_eq!(p[2], done(0xc2));
    }

    #[test]
    fn field_list_and_simple() {
        let p = run(ResponseKind::FieldList, false, &[COLDEF, COLDEF, EOF_AC]);
        assert_eq!(p[2], done(2));
        assert_eq!(run(ResponseKind::Simple, true, &[OK_AC])[0], done(2));
        assert_eq!(run(ResponseKind::Simple, false, &[EOF_AC])[0], done(2));
        assert_eq!(
            run(ResponseKind::Statistics, false, &[b"Uptime: 5  Threads: 1"])[0],
            Progress::Done(Outcome {
                status: None,
                error: false
            })
        );
    }

    #[test]
    fn absurd_column_counts_are_errors() {
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        let huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff";
        assert!(t.feed(huge.len(), huge).is_err());
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        assert!(t.feed(3, b"\xfc\x00\x10").is_ok(), "4096 columns are fine");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut t = ResponseTracker::new(ResponseKind::Simple, false);
        assert!(t.feed(3, b"\x05ab").is_err());
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        assert!(t.feed(1, b"\xfc").is_err());
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        assert!(t.feed(0, b"").is_err());
        let _ = SERVER_STATUS_IN_TRANS;
    }

    #[test]
    fn cached_metadata_flag() {
        let feed = |deprecate: bool, packets: &[&[u8]]| {
            let mut t =
                ResponseTracker::new(ResponseKind::Execute, deprecate).with_cache_metadata(true);
            let mut after_count = None;
            let out: Vec<Progress> = packets
                .iter()
                .enumerate()
                .map(|(n, p)| {
                    let start = t.at_result_start();
                    let r = t.feed(p.len(), p).unwrap();
                    if n == 0 {
                        after_count = Some((
                            start && t.in_column_definitions(),
                            start && t.definitions_left_out(),
                        ));
                    }
                    r
                })
                .collect();
            (out, after_count.unwrap())
        };
        // Metadata follows: the definitions are read as without the capability.
        let (p, cols) = feed(true, &[b"\x01\x01", COLDEF, b"\x01a", OKEOF_AC]);
        assert_eq!(cols, (true, false));
        assert_eq!(p[3], done(2));
        // Metadata skipped: rows come right after the count (after the EOF, classic).
        let (p, cols) = feed(true, &[b"\x01\x00", b"\x01a", OKEOF_AC]);
        assert_eq!(cols, (false, true));
        assert_eq!(p[2], done(2));
        let (p, cols) = feed(false, &[b"\x01\x00", EOF_AC, b"\x01a", EOF_AC]);
        assert_eq!(cols, (false, true));
        assert_eq!(p[3], done(2));
        // An OK is not a count.
        let (_, cols) = feed(true, &[b"\x00\x00\x00\x02\x00\x00\x00"]);
        assert_eq!(cols, (false, false));
        // Without the flag byte the count packet is malformed for such a connection.
        let mut t = ResponseTracker::new(ResponseKind::Query, true).with_cache_metadata(true);
        assert!(t.feed(1, b"\x01").is_err());
    }
}
