//! A minimal raw protocol client built on `sluice-proto`, for byte-level comparisons between a
//! direct connection and one through Sluice.

use bytes::BytesMut;
use sluice_proto::flags::cap;
use sluice_proto::framing::{self, FrameError, Packet};
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::native_token;
use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub caps: u64,
    pub handshake: HandshakeV10,
}

/// Capabilities a modern client asks for.
pub const CLIENT_CAPS: u64 = cap::CLIENT_LONG_PASSWORD
    | cap::CLIENT_LONG_FLAG
    | cap::CLIENT_PROTOCOL_41
    | cap::CLIENT_TRANSACTIONS
    | cap::CLIENT_SECURE_CONNECTION
    | cap::CLIENT_MULTI_STATEMENTS
    | cap::CLIENT_MULTI_RESULTS
    | cap::CLIENT_PS_MULTI_RESULTS
    | cap::CLIENT_PLUGIN_AUTH
    | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | cap::CLIENT_LOCAL_FILES;

impl RawConn {
    pub async fn read_packet(&mut self) -> Packet {
        loop {
            match framing::check(&self.buf, 1 << 30) {
                Ok(ext) => return framing::parse(&mut self.buf, ext),
                Err(FrameError::Incomplete) => {}
                Err(e) => panic!("{e}"),
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "connection closed");
        }
    }

    /// Reads a packet, or `None` if the peer closed first.
    pub async fn try_read_packet(&mut self) -> Option<Packet> {
        loop {
            if let Ok(ext) = framing::check(&self.buf, 1 << 30) {
                return Some(framing::parse(&mut self.buf, ext));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn write(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        framing::write_packet(&mut out, seq, payload);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Connects and logs in. Returns the final auth packet's payload (OK or ERR).
    pub async fn login(
        port: u16,
        user: &str,
        password: &str,
        extra_caps: u64,
    ) -> (RawConn, Vec<u8>) {
        Self::login_caps(port, user, password, CLIENT_CAPS | extra_caps).await
    }

    /// [`RawConn::login`] asking for exactly `caps` (as far as the server offers them).
    pub async fn login_caps(
        port: u16,
        user: &str,
        password: &str,
        caps: u64,
    ) -> (RawConn, Vec<u8>) {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        Self::login_on(stream, user, password, caps, 45).await
    }

    /// [`RawConn::login`] with the handshake's character set (collation id) `charset`.
    pub async fn login_charset(
        port: u16,
        user: &str,
        password: &str,
        charset: u8,
    ) -> (RawConn, Vec<u8>) {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        Self::login_on(stream, user, password, CLIENT_CAPS, charset).await
    }

    /// [`RawConn::login`] from a chosen loopback source address (127.0.0.x).
    pub async fn login_from(
        source: std::net::Ipv4Addr,
        port: u16,
        user: &str,
        password: &str,
    ) -> std::io::Result<(RawConn, Vec<u8>)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
        Ok(Self::login_on(stream, user, password, CLIENT_CAPS, 45).await)
    }

    async fn login_on(
        stream: TcpStream,
        user: &str,
        password: &str,
        wanted: u64,
        charset: u8,
    ) -> (RawConn, Vec<u8>) {
        let mut c = RawConn {
            stream,
            buf: BytesMut::new(),
            caps: 0,
            handshake: HandshakeV10::default(),
        };
        let hello = c.read_packet().await;
        if hello.payload.first() == Some(&0xFF) {
            // Refused before the greeting (a blocked address, too many connections).
            return (c, hello.payload.to_vec());
        }
        c.handshake = HandshakeV10::parse(&hello.payload).expect("handshake");
        c.caps = wanted & (c.handshake.capabilities | cap::CLIENT_LONG_PASSWORD) & 0xFFFF_FFFF;
        // MariaDB extended capabilities: asked for by clearing CLIENT_MYSQL, when offered.
        let ext = wanted & c.handshake.capabilities & !0xFFFF_FFFF;
        if ext != 0 && c.handshake.capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            c.caps = (c.caps & !cap::CLIENT_LONG_PASSWORD) | ext;
        }
        let resp = HandshakeResponse41 {
            capabilities: c.caps,
            max_packet: 1 << 30,
            charset,
            username: user.as_bytes().to_vec(),
            auth_response: native_token(password.as_bytes(), &c.handshake.auth_data),
            database: None,
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            connect_attrs: None,
            zstd_level: (c.caps & cap::CLIENT_ZSTD_COMPRESSION != 0).then_some(3),
        };
        c.write(1, &resp.encode()).await;
        let ok = c.read_packet().await;
        (c, ok.payload.to_vec())
    }

    /// Sends a command and returns every response packet (seq, payload) until the tracker says
    /// the response is complete.
    pub async fn command(&mut self, payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.write(0, payload).await;
        let kind = ResponseKind::for_command(payload[0]);
        let mut t = ResponseTracker::new(kind, self.caps & cap::CLIENT_DEPRECATE_EOF != 0)
            .with_cache_metadata(self.caps & cap::MARIADB_CLIENT_CACHE_METADATA != 0);
        let mut out = Vec::new();
        if kind == ResponseKind::None {
            return out;
        }
        loop {
            let p = self.read_packet().await;
            let progress = t
                .feed(p.payload.len(), &p.payload)
                .expect("trackable response");
            out.push((p.seq, p.payload.to_vec()));
            if let Progress::Done(_) = progress {
                return out;
            }
            assert!(
                progress != Progress::LocalInfile,
                "use a LOCAL INFILE aware helper"
            );
        }
    }
}
