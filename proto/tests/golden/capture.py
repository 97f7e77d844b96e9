#!/usr/bin/env python3
"""Captures golden packets from a real MariaDB/MySQL server, independently of sluice-proto.

Usage: capture.py PORT USER PASSWORD OUTDIR

Each exchange is written to OUTDIR/<name>.hex, one packet per line: "<seq> <hex payload>".
Only the server's packets are recorded (the client's are documented here, in the code).
"""
import hashlib, os, socket, struct, sys

CLIENT_LONG_PASSWORD = 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24

BASE = (CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS
        | CLIENT_PS_MULTI_RESULTS | CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC
        | CLIENT_LOCAL_FILES)


def scramble(password, salt):
    if not password:
        return b""
    s1 = hashlib.sha1(password).digest()
    s2 = hashlib.sha1(s1).digest()
    mix = hashlib.sha1(salt + s2).digest()
    return bytes(a ^ b for a, b in zip(s1, mix))


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def read(self):
        while len(self.buf) < 4:
            self._more()
        n = self.buf[0] | self.buf[1] << 8 | self.buf[2] << 16
        seq = self.buf[3]
        while len(self.buf) < 4 + n:
            self._more()
        p = self.buf[4:4 + n]
        self.buf = self.buf[4 + n:]
        return seq, p

    def _more(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("closed")
        self.buf += d

    def write(self, seq, payload):
        self.s.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)


def parse_greeting(p):
    ver_end = p.index(b"\0", 1)
    pos = ver_end + 1 + 4
    salt = p[pos:pos + 8]
    pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    salt += p[pos:pos + 12]
    return salt


def login(port, user, password, caps, plugin=b"mysql_native_password", record=None):
    c = Conn(port)
    seq, hello = c.read()
    if record is not None:
        record["handshake"] = [(seq, hello)]
    salt = parse_greeting(hello)
    token = scramble(password, salt)
    if plugin != b"mysql_native_password":
        token = b"\x01" * 32  # a token for another plugin: the server switches
    resp = struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23 + user + b"\0"
    resp += bytes([len(token)]) + token + plugin + b"\0"
    c.write(1, resp)
    seq, p = c.read()
    packets = [(seq, p)]
    if p[:1] == b"\xfe":
        new_salt = p[p.index(b"\0", 1) + 1:].rstrip(b"\0")
        c.write(seq + 1, scramble(password, new_salt))
        seq, p = c.read()
        packets.append((seq, p))
    c.caps = caps
    return c, packets


def command(c, payload, tracker_end):
    """Sends a command and reads packets until tracker_end(packets) says the response ended."""
    c.write(0, payload)
    packets = []
    while not tracker_end(packets):
        packets.append(c.read())
    return packets


def ok_or_err(pk):
    return len(pk) >= 1


def result_end(deprecate):
    """End of a (multi-)result COM_QUERY response, for the shapes captured here."""
    def end(pk):
        if not pk:
            return False
        state = "first"
        cols = 0
        for _, p in pk:
            if state == "first":
                if p[0] == 0x00:
                    status = ok_status(p)
                    if status & 8:
                        continue
                    return True
                if p[0] == 0xFF:
                    return True
                if p[0] == 0xFB:
                    return True
                cols = p[0]
                state = "cols"
            elif state == "cols":
                cols -= 1
                if cols == 0:
                    state = "rows" if deprecate else "coleof"
            elif state == "coleof":
                state = "rows"
                if struct.unpack("<H", p[3:5])[0] & 0x40:
                    return True
            elif state == "rows":
                if p[0] == 0xFE and len(p) < 0xFFFFFF:
                    status = ok_status(p) if deprecate else struct.unpack("<H", p[3:5])[0]
                    if status & 8:
                        state = "first"
                        continue
                    return True
                if p[0] == 0xFF:
                    return True
        return False
    return end


def lenenc(p, i):
    b = p[i]
    if b < 0xFB:
        return b, i + 1
    if b == 0xFC:
        return struct.unpack("<H", p[i + 1:i + 3])[0], i + 3
    if b == 0xFD:
        return struct.unpack("<I", p[i + 1:i + 4] + b"\0")[0], i + 4
    return struct.unpack("<Q", p[i + 1:i + 9])[0], i + 9


def ok_status(p):
    _, i = lenenc(p, 1)
    _, i = lenenc(p, i)
    return struct.unpack("<H", p[i:i + 2])[0]


def save(outdir, name, packets):
    with open(os.path.join(outdir, name + ".hex"), "w") as f:
        for seq, p in packets:
            f.write("%d %s\n" % (seq, p.hex()))


def main():
    port, user, password, outdir = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4]
    rec = {}
    c, pk = login(port, user, password, BASE, record=rec)
    save(outdir, "handshake", rec["handshake"])
    save(outdir, "login_ok", pk)
    q = lambda sql: b"\x03" + sql.encode()

    classic = result_end(False)
    save(outdir, "query_resultset_classic", command(c, q("SELECT 1 AS a, 'x' AS b, NULL AS c"), classic))
    save(outdir, "query_multi_classic", command(c, q("SELECT 1; DO 1; SELECT 2"), classic))
    save(outdir, "query_error", command(c, q("SELECT * FROM nope.t"), ok_or_err))
    save(outdir, "query_ok_begin", command(c, q("BEGIN"), ok_or_err))
    save(outdir, "query_ok_commit", command(c, q("COMMIT"), ok_or_err))
    c.write(0, q("CREATE DATABASE IF NOT EXISTS golden")); c.read()
    c.write(0, q("CREATE OR REPLACE TABLE golden.t (id INT PRIMARY KEY, v VARCHAR(10))")); c.read()
    save(outdir, "query_ok_insert", command(c, q("INSERT INTO golden.t VALUES (1, 'a'), (2, 'b'), (3, 'c')"), ok_or_err))
    # COM_FIELD_LIST: column definitions then EOF.
    def field_list_end(pk):
        return bool(pk) and pk[-1][1][0] in (0xFE, 0xFF) and len(pk[-1][1]) < 0xFFFFFF
    c.write(0, b"\x02golden"); c.read()
    save(outdir, "field_list_classic", command(c, b"\x04t\0", field_list_end))
    # COM_STMT_PREPARE with 1 parameter and 2 columns.
    prep = command(c, b"\x16SELECT id, v FROM t WHERE id > ?", lambda pk: len(pk) == 6)
    save(outdir, "prepare_classic", prep)
    sid = struct.unpack("<I", prep[0][1][1:5])[0]
    # COM_STMT_EXECUTE with a cursor: id > 0 as a LONGLONG parameter.
    exe = b"\x17" + struct.pack("<IBI", sid, 1, 1) + b"\x00\x01" + b"\x08\x00" + struct.pack("<q", 0)
    save(outdir, "execute_cursor_classic", command(c, exe, classic))
    save(outdir, "fetch_classic", command(c, b"\x1c" + struct.pack("<II", sid, 2), lambda pk: bool(pk) and pk[-1][1][0] == 0xFE))
    save(outdir, "fetch_last_classic", command(c, b"\x1c" + struct.pack("<II", sid, 10), lambda pk: bool(pk) and pk[-1][1][0] == 0xFE))
    save(outdir, "statistics", command(c, b"\x09", lambda pk: len(pk) == 1))
    save(outdir, "set_option_eof", command(c, b"\x1b\x01\x00", lambda pk: len(pk) == 1))
    save(outdir, "ping_ok", command(c, b"\x0e", lambda pk: len(pk) == 1))
    # LOCAL INFILE: the request, then (after the client's data) the OK.
    c.write(0, q("LOAD DATA LOCAL INFILE 'golden.csv' INTO TABLE golden.t FIELDS TERMINATED BY ','"))
    req = c.read()
    c.write(req[0] + 1, b"10,x\n11,y\n")
    c.write(req[0] + 2, b"")
    save(outdir, "local_infile", [req, c.read()])

    # CLIENT_DEPRECATE_EOF + CLIENT_SESSION_TRACK.
    d, _ = login(port, user, password, BASE | CLIENT_DEPRECATE_EOF | CLIENT_SESSION_TRACK)
    dep = result_end(True)
    save(outdir, "query_resultset_deprecate", command(d, q("SELECT id, v FROM golden.t ORDER BY id LIMIT 2"), dep))
    save(outdir, "query_multi_deprecate", command(d, q("SELECT 1; SELECT 2"), dep))
    d.write(0, q("SET SESSION session_track_system_variables = 'last_gtid'")); d.read()
    save(outdir, "ok_session_track_gtid", command(d, q("INSERT INTO golden.t VALUES (20, 'g')"), ok_or_err))
    d.write(0, b"\x02golden"); d.read()
    prep = command(d, b"\x16SELECT id, v FROM t WHERE id > ?", lambda pk: len(pk) == 4)
    save(outdir, "prepare_deprecate", prep)
    sid = struct.unpack("<I", prep[0][1][1:5])[0]
    exe = b"\x17" + struct.pack("<IBI", sid, 1, 1) + b"\x00\x01" + b"\x08\x00" + struct.pack("<q", 0)
    save(outdir, "execute_cursor_deprecate", command(d, exe, dep))
    save(outdir, "field_list_deprecate", command(d, b"\x04t\0", field_list_end))
    d.write(0, q("DROP DATABASE golden")); d.read()

    # Authentication failures and plugin switches.
    _, pk = login(port, user, b"wrong-password", BASE)
    save(outdir, "err_access_denied", pk)
    _, pk = login(port, user, password, BASE, plugin=b"caching_sha2_password")
    save(outdir, "auth_switch", pk)


if __name__ == "__main__":
    main()
