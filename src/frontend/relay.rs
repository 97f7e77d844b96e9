//! Relays one command's response from the backend to the client as raw bytes.
//!
//! Frames are forwarded as they arrive, in chunks of whatever one read returned, without
//! copying and without waiting for whole rows: only the first bytes of each packet are looked
//! at (by the [`ResponseTracker`]) to find where the response ends. Memory stays bounded by the
//! read buffer, whatever the size of the result; a slow client slows the backend reads
//! (back-pressure) instead of growing a buffer.

use bytes::{Buf, BytesMut};
use sluice_proto::framing::{FrameHeader, HEADER_LEN};
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
    /// The command is the client's own `LOAD DATA LOCAL` and the client enabled local files.
    pub local_files: bool,
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
}

/// Relays the response to the command the client just sent, over a session's connections,
/// and records what the final OK/EOF said on the backend connection.
pub async fn relay_response(
    client: &mut ClientConn,
    backend: &mut BackendConn,
    kind: ResponseKind,
    seq: u8,
    client_local_files: bool,
) -> Result<Outcome, SessionError> {
    let opts = RelayOptions {
        deprecate_eof: backend.deprecate_eof(),
        session_track: backend.capabilities & sluice_proto::flags::cap::CLIENT_SESSION_TRACK != 0,
        local_files: client_local_files,
    };
    backend.session_state = None;
    let (io, buf) = backend.io_parts();
    let r = relay(
        End {
            io: &mut client.stream,
            buf: &mut client.rbuf,
        },
        End { io, buf },
        kind,
        seq,
        opts,
    )
    .await;
    let r = r?;
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

/// Relays the response to the command the client just sent, from `backend` to `client`, as
/// raw bytes. `seq` is the sequence id the server's first packet must carry. Generic over the
/// streams so that it runs on sockets, TLS streams and, in tests, in-memory pipes.
pub async fn relay<C, B>(
    client: End<'_, C>,
    backend: End<'_, B>,
    kind: ResponseKind,
    mut seq: u8,
    opts: RelayOptions,
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
    let mut tracker = ResponseTracker::new(kind, opts.deprecate_eof);
    let track = opts.session_track;
    let client_local_files = opts.local_files;
    let mut session_state = None;
    let mut body_left = 0usize;
    let mut cont = false;
    let mut outcome = None;
    let mut infile = false;
    let mut forwarded = false;
    loop {
        // Walk the buffered frames; `pos` is how far they may be forwarded.
        let mut pos = 0usize;
        loop {
            let buf = &rbuf[..];
            if body_left > 0 {
                let n = body_left.min(buf.len() - pos);
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
            seq = seq.wrapping_add(1);
            if !cont {
                let prefix = &buf[pos + HEADER_LEN..pos + HEADER_LEN + want];
                if track && prefix.first() == Some(&0x00) && want == h.len {
                    note_session_state(&mut session_state, prefix);
                }
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
            }
            cont = h.continues();
            pos += HEADER_LEN;
            body_left = h.len;
        }
        if pos > 0 {
            forwarded = true;
            write_client(client, &rbuf[..pos]).await?;
            rbuf.advance(pos);
        }
        if body_left == 0 {
            if let Some(o) = outcome {
                return Ok(Relayed {
                    outcome: o,
                    rows: tracker.rows(),
                    warnings: tracker.warnings(),
                    insert_id: tracker.insert_id(),
                    session_state,
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
        let lost = |detail: String| {
            if between_packets {
                SessionError::BackendCut { detail, seq }
            } else if partial {
                SessionError::BackendLost(detail)
            } else {
                SessionError::BackendGone(detail)
            }
        };
        match backend.read_buf(rbuf).await {
            Ok(0) => return Err(lost("server closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(lost(e.to_string())),
        }
    }
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
        local_files: false,
    };

    /// Runs one relay: the "server" writes `server_bytes` in chunks of `chunk`; returns what
    /// the client received and the relay's result.
    async fn run(
        server_bytes: Vec<u8>,
        chunk: usize,
        kind: ResponseKind,
        opts: RelayOptions,
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
        )
        .await;
        drop(proxy_client);
        writer.await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        (got, r)
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
}
