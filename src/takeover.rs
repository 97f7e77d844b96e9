//! Rolling restart: a new `sluice run` takes the listening sockets of the running one over a
//! Unix socket, so that no client connection is refused while the old process drains.
//!
//! Why descriptors and not `SO_REUSEPORT`: with a reuse-port group the kernel spreads new
//! connections over every listener in the group, and when the old process closes its
//! listener the connections still in *its* accept queue are reset (unless the host enables
//! `net.ipv4.tcp_migrate_req`, which a container cannot). Passing the very same listening
//! socket (`SCM_RIGHTS`) keeps one accept queue for the whole handover: the old process
//! stops accepting, the new one goes on, and the socket never closes.
//!
//! The exchange, on `[proxy] takeover_socket`:
//! 1. the new process connects and sends `TAKEOVER 1\n`;
//! 2. the old one answers `LISTENERS <client> <admin> <metrics>\n` (each `1` or `0`) with
//!    the descriptors attached;
//! 3. the new process serves on them and sends `READY\n`;
//! 4. the old process stops accepting, removes nothing (the path now belongs to the new
//!    process), lets its sessions finish (see docs/operations.md) and exits.
//!
//! If the new process fails before `READY`, the old one keeps serving: a failed upgrade
//! refuses nothing either.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const HELLO: &str = "TAKEOVER 1\n";
const READY: &str = "READY\n";
/// Each step of the exchange is bounded: a stuck peer never stalls a start or a server.
const STEP: Duration = Duration::from_secs(5);

/// The listening sockets one process hands to the next (each may be absent).
#[derive(Default)]
pub struct Listeners {
    pub client: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    pub metrics: Option<std::net::TcpListener>,
}

/// Where the takeover socket lives for a config: `[proxy] takeover_socket`, `"off"` for
/// none, or (empty, the default) a path derived from the client listen address in
/// `$RUNTIME_DIRECTORY` (systemd), `$XDG_RUNTIME_DIR` or the temporary folder. None when the
/// client port is 0 (nothing to take over).
pub fn socket_path(setting: &str, listen: std::net::SocketAddr) -> Option<PathBuf> {
    match setting {
        "off" => None,
        "" if listen.port() == 0 => None,
        "" => {
            let dir = std::env::var_os("RUNTIME_DIRECTORY")
                .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
                .map(PathBuf::from)
                .filter(|d| d.is_dir())
                .unwrap_or_else(std::env::temp_dir);
            let ip = listen.ip().to_string().replace(':', "_");
            Some(dir.join(format!("sluice-{ip}-{}.takeover", listen.port())))
        }
        p => Some(PathBuf::from(p)),
    }
}

/// What a new process got from a running one.
pub struct Inherited {
    pub listeners: Listeners,
    conn: UnixStream,
}

impl Inherited {
    /// Tells the old process that this one serves now; it stops accepting and drains.
    pub fn ready(mut self) -> std::io::Result<()> {
        self.conn.write_all(READY.as_bytes())
    }
}

/// Asks a running process for its listeners. `Ok(None)` when nobody listens on `path`
/// (first start, or a stale file from a process that died).
pub fn request(path: &Path) -> std::io::Result<Option<Inherited>> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    conn.write_all(HELLO.as_bytes())?;
    let mut buf = [0u8; 64];
    let (n, fds) = recv_with_fds(conn.as_raw_fd(), &mut buf, 3)?;
    let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let flags: Vec<&str> = line
        .strip_prefix("LISTENERS ")
        .map(|r| r.trim_end().split(' ').collect())
        .unwrap_or_default();
    if flags.len() != 3 || flags.iter().any(|f| *f != "0" && *f != "1") {
        return Err(std::io::Error::other(format!(
            "unexpected takeover answer {line:?}"
        )));
    }
    let wanted = flags.iter().filter(|f| **f == "1").count();
    if fds.len() != wanted {
        return Err(std::io::Error::other(format!(
            "takeover answer announced {wanted} sockets and carried {}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut take = |present: &str| -> std::io::Result<Option<std::net::TcpListener>> {
        if present != "1" {
            return Ok(None);
        }
        let l = std::net::TcpListener::from(fds.next().expect("counted above"));
        l.set_nonblocking(true)?;
        Ok(Some(l))
    };
    let listeners = Listeners {
        client: take(flags[0])?,
        admin: take(flags[1])?,
        metrics: take(flags[2])?,
    };
    Ok(Some(Inherited { listeners, conn }))
}

/// Binds the takeover socket for this process (replacing a stale file or the previous
/// process's path, whose listener it no longer needs).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    // Only this user (and root) may take the listeners.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves takeover requests until one succeeds (the new process said `READY`), then returns.
/// `fds` are duplicates of this process's listeners. Blocking: run on a blocking thread.
pub fn serve_one(listener: &UnixListener, fds: &[Option<OwnedFd>; 3]) -> std::io::Result<()> {
    loop {
        let (conn, _) = listener.accept()?;
        match answer(conn, fds) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "a takeover was attempted and did not complete; still serving")
            }
        }
    }
}

fn answer(conn: UnixStream, fds: &[Option<OwnedFd>; 3]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let mut reader = BufReader::new(conn.try_clone()?.take(64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line != HELLO {
        return Err(std::io::Error::other(format!(
            "unexpected takeover request {line:?}"
        )));
    }
    let flag = |f: &Option<OwnedFd>| if f.is_some() { "1" } else { "0" };
    let msg = format!(
        "LISTENERS {} {} {}\n",
        flag(&fds[0]),
        flag(&fds[1]),
        flag(&fds[2])
    );
    let raw: Vec<RawFd> = fds.iter().flatten().map(|f| f.as_raw_fd()).collect();
    send_with_fds(conn.as_raw_fd(), msg.as_bytes(), &raw)?;
    // The new process may take a while to start its monitor: wait longer than one step.
    conn.set_read_timeout(Some(STEP * 6))?;
    line.clear();
    reader.read_line(&mut line)?;
    if line != READY {
        return Err(std::io::Error::other(
            "the new process closed before saying it serves",
        ));
    }
    Ok(())
}

/// A duplicate of a listener's descriptor, to hand over later.
pub fn dup(l: &impl AsFd) -> std::io::Result<OwnedFd> {
    l.as_fd().try_clone_to_owned()
}

fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, and the
    // control buffer is CMSG_SPACE bytes long for exactly `fds.len()` descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != data.len() {
            return Err(std::io::Error::other("short takeover write"));
        }
    }
    Ok(())
}

fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in send_with_fds; the kernel writes at most msg_controllen control bytes,
    // and each descriptor it passed is owned by this process from here on (wrapped at once).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other(
                "takeover answer carried too many sockets",
            ));
        }
        n as usize
    };
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_travel_and_keep_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = client.local_addr().unwrap();
        let ul = bind(&path).unwrap();
        let fds = [Some(dup(&client).unwrap()), None, None];
        let old = std::thread::spawn(move || serve_one(&ul, &fds));
        // A connection queued on the old socket before the handover...
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let got = request(&path).unwrap().expect("a running process answers");
        assert!(got.listeners.admin.is_none() && got.listeners.metrics.is_none());
        let Inherited { listeners, conn } = got;
        Inherited {
            listeners: Listeners::default(),
            conn,
        }
        .ready()
        .unwrap();
        // The old process closes every copy it had.
        old.join().unwrap().unwrap();
        drop(client);
        // ...is accepted by the new owner after the old one closed its copies.
        let l = listeners.client.unwrap();
        assert_eq!(l.local_addr().unwrap(), addr);
        l.set_nonblocking(false).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
    }

    #[test]
    fn nobody_listening_is_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        assert!(request(&path).unwrap().is_none());
        // A stale file (a process that died) is a first start too.
        drop(UnixListener::bind(&path).unwrap());
        assert!(request(&path).unwrap().is_none());
    }

    #[test]
    fn paths() {
        let a: std::net::SocketAddr = "127.0.0.1:6033".parse().unwrap();
        assert!(socket_path("off", a).is_none());
        assert!(socket_path("", "127.0.0.1:0".parse().unwrap()).is_none());
        let p = socket_path("", a).unwrap();
        assert!(p
            .to_string_lossy()
            .ends_with("sluice-127.0.0.1-6033.takeover"));
        assert_eq!(
            socket_path("/run/x.sock", a).unwrap(),
            PathBuf::from("/run/x.sock")
        );
    }
}
