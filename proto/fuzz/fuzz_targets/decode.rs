//! Every decoder in sluice-proto, fed arbitrary bytes: none may panic, and framing must never
//! report more than the buffer holds.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_proto::{auth_switch, command, eof, err, framing, handshake, handshake_response, ok, ssl_request};

fuzz_target!(|data: &[u8]| {
    let caps = data.first().map_or(0, |&b| u64::from(b) << 16 | 0x200);
    let _ = handshake::HandshakeV10::parse(data);
    let _ = handshake_response::HandshakeResponse41::parse(data);
    let _ = ssl_request::SslRequest::parse(data);
    let _ = auth_switch::AuthSwitchRequest::parse(data);
    let _ = auth_switch::AuthMoreData::parse(data);
    if let Ok(o) = ok::OkPacket::parse(data, caps) {
        let _ = o.session_state_entries().count();
        let _ = o.system_variable(b"last_gtid");
    }
    let _ = err::ErrPacket::parse(data);
    let _ = eof::EofPacket::parse(data);
    let _ = command::Command::parse(data, caps);
    let mut buf = BytesMut::from(data);
    while let Ok(ext) = framing::check(&buf, 1 << 20) {
        assert!(ext.wire_len <= buf.len());
        let p = framing::parse(&mut buf, ext);
        assert_eq!(p.payload.len(), ext.payload_len);
    }
});
