//! A load generator for many client connections (the multiplexing benchmark,
//! `bench/multiplex.py`): thousands of raw MySQL-protocol clients on one tokio runtime, spread
//! over several loopback source addresses.
//!
//! ```text
//! loadgen active PORT CLIENTS SECONDS SOURCES   # each client runs point selects in a loop
//! loadgen idle   PORT CLIENTS SECONDS SOURCES   # each client logs in, runs one query, idles
//! ```
//! `SOURCES` is how many source addresses to use (127.0.0.1 … 127.0.0.N). Prints one line of
//! `key=value` results. Users `app`/`app` and tables `sbtest.sbtest1..4` (sysbench's) are
//! assumed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_proto::flags::cap;
use sluice_proto::framing::{self, FrameError};
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::native_token;
use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CAPS: u64 = cap::CLIENT_LONG_PASSWORD
    | cap::CLIENT_LONG_FLAG
    | cap::CLIENT_PROTOCOL_41
    | cap::CLIENT_TRANSACTIONS
    | cap::CLIENT_SECURE_CONNECTION
    | cap::CLIENT_PLUGIN_AUTH
    | cap::CLIENT_CONNECT_WITH_DB
    | cap::CLIENT_DEPRECATE_EOF;

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

type Res<T> = Result<T, String>;

impl Client {
    async fn read_packet(&mut self) -> Res<bytes::Bytes> {
        loop {
            match framing::check(&self.buf, 1 << 24) {
                Ok(ext) => return Ok(framing::parse(&mut self.buf, ext).payload),
                Err(FrameError::Incomplete) => {}
                Err(e) => return Err(e.to_string()),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err("closed".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn write(&mut self, seq: u8, payload: &[u8]) -> Res<()> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        framing::write_packet(&mut out, seq, payload);
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }

    async fn connect(source: IpAddr, port: u16) -> Res<Client> {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| e.to_string())?;
        let stream = socket
            .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut c = Client {
            stream,
            buf: BytesMut::with_capacity(512),
        };
        let hello = c.read_packet().await?;
        if hello.first() == Some(&0xFF) {
            return Err(String::from_utf8_lossy(&hello[3..]).into_owned());
        }
        let hs = HandshakeV10::parse(&hello).map_err(|e| e.to_string())?;
        let resp = HandshakeResponse41 {
            capabilities: CAPS & (hs.capabilities | cap::CLIENT_LONG_PASSWORD),
            max_packet: 1 << 24,
            charset: 45,
            username: b"app".to_vec(),
            auth_response: native_token(b"app", &hs.auth_data),
            database: Some(b"sbtest".to_vec()),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            connect_attrs: None,
            zstd_level: None,
        };
        c.write(1, &resp.encode()).await?;
        let ok = c.read_packet().await?;
        if ok.first() != Some(&0) {
            return Err(format!("login refused: {}", String::from_utf8_lossy(&ok)));
        }
        Ok(c)
    }

    /// Runs a query; `Err` on an ERR answer or a broken connection.
    async fn query(&mut self, sql: &[u8]) -> Res<()> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(0x03);
        p.extend_from_slice(sql);
        self.write(0, &p).await?;
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        let mut first = true;
        loop {
            let pk = self.read_packet().await?;
            if first && pk.first() == Some(&0xFF) {
                return Err(String::from_utf8_lossy(&pk[3..]).into_owned());
            }
            first = false;
            match t.feed(pk.len(), &pk).map_err(|e| e.to_string())? {
                Progress::Done(o) if o.error => return Err("error".into()),
                Progress::Done(_) => return Ok(()),
                Progress::More => {}
                Progress::LocalInfile => return Err("local infile".into()),
            }
        }
    }
}

fn source(i: usize, sources: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: loadgen active|idle PORT CLIENTS SECONDS SOURCES");
        std::process::exit(2);
    }
    let mode = args[1].clone();
    let port: u16 = args[2].parse().expect("port");
    let clients: usize = args[3].parse().expect("clients");
    let seconds: u64 = args[4].parse().expect("seconds");
    let sources: usize = args[5].parse::<usize>().expect("sources").clamp(1, 250);
    let errors = Arc::new(AtomicU64::new(0));
    let queries = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    // Connect in waves so that the listener's backlog is not overrun.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(clients.max(1));
    // At most this many logins in flight, as an application fleet opening its pools would.
    let logins = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..clients {
        let (errors, queries, connected, stop, first_error) = (
            errors.clone(),
            queries.clone(),
            connected.clone(),
            stop.clone(),
            first_error.clone(),
        );
        let mode = mode.clone();
        let tx = tx.clone();
        let logins = logins.clone();
        tasks.push(tokio::spawn(async move {
            let permit = logins.acquire_owned().await;
            let fail = |e: String| {
                errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = first_error.lock() {
                    f.get_or_insert(e);
                }
            };
            let mut c = match Client::connect(source(i, sources), port).await {
                Ok(c) => c,
                Err(e) => {
                    fail(format!("connect: {e}"));
                    drop(permit);
                    let _ = tx.send(()).await;
                    return Vec::new();
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let _ = tx.send(()).await;
            let mut lat = Vec::new();
            if mode == "idle" {
                if let Err(e) = c.query(b"SELECT 1").await {
                    fail(e);
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return lat;
            }
            let mut n = i as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let sql = format!(
                    "SELECT c FROM sbtest{} WHERE id={}",
                    1 + (n >> 33) % 4,
                    1 + (n >> 40) % 10000
                );
                let t = Instant::now();
                match c.query(sql.as_bytes()).await {
                    Ok(()) => {
                        queries.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                    Err(e) => {
                        fail(e);
                        break;
                    }
                }
            }
            lat
        }));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    let mut done = 0;
    while done < clients && rx.recv().await.is_some() {
        done += 1;
    }
    let connect_s = start.elapsed().as_secs_f64();
    println!(
        "connected={} connect_seconds={connect_s:.1}",
        connected.load(Ordering::Relaxed)
    );
    let measure_from = queries.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let in_window = queries.load(Ordering::Relaxed) - measure_from;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        all[((all.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    };
    println!(
        "mode={mode} clients={clients} connected={} errors={} qps={:.0} p50_ms={:.2} p99_ms={:.2} first_error={:?}",
        connected.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        in_window as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        first_error.lock().ok().and_then(|f| f.clone()),
    );
}
