//! A relay in front of a real server that turns it hostile on demand: when a server-to-client
//! chunk contains a marker string (the answer to `SELECT 'EVIL-…'`), the chunk is replaced by
//! a forged packet. Everything else (logins, the monitor's probes) passes unchanged.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Markers and what replaces the answer that carries them.
pub const FORGERIES: &[(&str, &[u8])] = &[
    // A LOCAL INFILE request for a file, in answer to a plain SELECT.
    ("EVIL-INFILE", b"\x0c\x00\x00\x01\xfb/etc/passwd"),
    // A column count of 2^64 - 1 (lenenc 0xFE).
    (
        "EVIL-LENENC",
        b"\x09\x00\x00\x01\xfe\xff\xff\xff\xff\xff\xff\xff\xff",
    ),
    // A packet with the wrong sequence id.
    ("EVIL-SEQ", b"\x07\x00\x00\x09\x00\x00\x00\x02\x00\x00\x00"),
    // A header announcing 16 MiB, then the connection closes.
    ("EVIL-SHORT", b"\xff\xff\xff\x01\x03def"),
];

pub struct HostileRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HostileRelay {
    pub async fn start(target: String) -> HostileRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let forged = FORGERIES
                            .iter()
                            .find(|(m, _)| chunk.windows(m.len()).any(|w| w == m.as_bytes()));
                        match forged {
                            Some((m, bytes)) => {
                                let _ = cw.write_all(bytes).await;
                                if *m == "EVIL-SHORT" {
                                    break;
                                }
                            }
                            None => {
                                if cw.write_all(chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    up.abort();
                });
            }
        });
        HostileRelay { addr, task }
    }
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
