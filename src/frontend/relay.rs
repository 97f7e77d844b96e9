//! Relays one command's response from the backend to the client as raw bytes.
//!
//! Frames are forwarded as they arrive, in chunks of whatever one read returned, without
//! copying and without waiting for whole rows: only the first bytes of each packet are looked
//! at (by the [`ResponseTracker`]) to find where the response ends. Memory stays bounded by the
//! read buffer, whatever the size of the result; a slow client slows the backend reads
//! (back-pressure) instead of growing a buffer.

use bytes::Buf;
use sluice_proto::framing::{FrameHeader, HEADER_LEN};
use sluice_proto::tracker::{Outcome, Progress, ResponseKind, ResponseTracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::ClientConn;
use super::SessionError;
use crate::backend::BackendConn;

/// Packets up to this size are inspected whole (OK packets with session state fit easily).
const INSPECT_WHOLE: usize = 16 << 10;
/// Of longer packets (rows), only this many bytes are needed.
const INSPECT_PREFIX: usize = 64;
/// Read granularity from the backend.
const READ_CHUNK: usize = 64 << 10;

/// Relays the response to the command the client just sent. `seq` is the sequence id the
/// server's first packet must carry. Returns how the response ended.
pub async fn relay_response(
    client: &mut ClientConn,
    backend: &mut BackendConn,
    kind: ResponseKind,
    mut seq: u8,
    client_local_files: bool,
) -> Result<Outcome, SessionError> {
    let mut tracker = ResponseTracker::new(kind, backend.deprecate_eof());
    // Session-state changes the server reports (CLIENT_SESSION_TRACK) are kept for the
    // session to learn from (state changed by statements Sluice does not parse).
    let track = backend.capabilities & sluice_proto::flags::cap::CLIENT_SESSION_TRACK != 0;
    backend.session_state = None;
    let mut body_left = 0usize;
    let mut cont = false;
    let mut outcome = None;
    let mut infile = false;
    let mut forwarded = false;
    loop {
        // Walk the buffered frames; `pos` is how far they may be forwarded.
        let mut pos = 0usize;
        loop {
            let buf = &backend.rbuf[..];
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
                    note_session_state(&mut backend.session_state, prefix);
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
            client.write_all(&backend.rbuf[..pos]).await?;
            backend.rbuf.advance(pos);
        }
        if body_left == 0 {
            if let Some(o) = outcome {
                backend.last_rows = tracker.rows();
                backend.last_warnings = tracker.warnings();
                backend.last_insert_id = tracker.insert_id();
                return Ok(o);
            }
            if infile {
                seq = upload_local_file(client, backend, seq).await?;
                tracker.local_infile_sent();
                infile = false;
                continue;
            }
        }
        if backend.rbuf.capacity() - backend.rbuf.len() < READ_CHUNK / 4 {
            backend.rbuf.reserve(READ_CHUNK);
        }
        let partial = forwarded || !backend.rbuf.is_empty();
        let lost = |detail: String| {
            if partial {
                SessionError::BackendLost(detail)
            } else {
                SessionError::BackendGone(detail)
            }
        };
        match backend.stream.read_buf(&mut backend.rbuf).await {
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
async fn upload_local_file(
    client: &mut ClientConn,
    backend: &mut BackendConn,
    mut seq: u8,
) -> Result<u8, SessionError> {
    let mut body_left = 0usize;
    let mut cont = false;
    let mut last = false;
    loop {
        let mut pos = 0usize;
        loop {
            let buf = &client.rbuf[..];
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
                .stream
                .write_all(&client.rbuf[..pos])
                .await
                .map_err(|e| SessionError::BackendLost(e.to_string()))?;
            client.rbuf.advance(pos);
        }
        if last && body_left == 0 {
            return Ok(seq);
        }
        client.fill().await?;
    }
}
