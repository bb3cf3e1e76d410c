#!/usr/bin/env python3
"""faultproxy.py: a fault-injecting, logging HTTP proxy in front of a registry (test helper).

Usage:
    faultproxy.py --upstream 127.0.0.1:5000 [--port 0] [--faults ignore-range,log,...]
                  [--log FILE] [--ready FILE]

Listens on 127.0.0.1 (port 0 = a free one) and forwards every request to the upstream
registry. On start it prints one JSON line `{"port": P, "object_port": Q, "pid": N}` to stdout
and, with --ready FILE, writes the same line to FILE (atomically), so the caller can wait for
it. Stops on SIGTERM/SIGINT. Python 3.11 standard library only.

Faults (`FAULT=` environment variable or --faults; comma-separated; settings as `NAME=VALUE`
environment variables or --set NAME=VALUE):
  ignore-range  drop the Range header of blob GETs and answer 200 with the whole blob.
  range-200     honour Range but answer 200 (not 206), with a correct Content-Range and only
                the partial body.
  redirect      answer blob GETs with `307 Location: http://127.0.0.1:<object_port>/o/<name>/
                <digest>?exp=<unix>&sig=<hmac>`. The object server on <object_port> serves the
                bytes and honours Range; it answers 400 when an Authorization header is present
                (like S3 presigned URLs), 400 for HEAD (unless `allow-head`), 403 once `exp`
                has passed, 403 for a wrong signature. EXP= sets the URL lifetime (seconds, 60).
  allow-head    let the object server answer HEAD.
  auth          a token server at /token hands out bearer tokens with lifetime TTL= seconds
                (default 60); requests to /v2/ without a valid token get 401 with
                `WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service="t",
                scope="repository:<r>:pull"`.
  429           every Nth request (N= , default 3) to /v2/ gets 429 with Retry-After: 1.
  truncate      on the first try of each (blob, range), send only K= body bytes (default 100)
                of the answer and close the connection.
  bad-byte      on the first try of each (blob, range) with a Range header, flip one byte
                (the middle one) of the body (status and length unchanged).
  log           write one JSON line per request to --log FILE (or LOG=FILE, default stderr):
                {"t", "server" (proxy|object|token), "method", "path", "range", "status",
                 "bytes" (body bytes sent), "length" (Content-Length announced), "auth"
                 (Authorization present), "fault" (what was injected, or null)}.
"""
import argparse
import hashlib
import hmac
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.urandom(16)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


class State:
    def __init__(self, upstream, faults, settings, log_path):
        self.upstream = upstream
        self.faults = faults
        self.settings = settings
        self.lock = threading.Lock()
        self.count = 0
        self.seen = set()  # (path, range) already faulted once (truncate, bad-byte)
        self.tokens = {}  # token -> expiry
        self.port = 0
        self.object_port = 0
        self.log_fh = None
        if "log" in faults:
            self.log_fh = open(log_path, "a", buffering=1) if log_path else sys.stderr

    def setting(self, name, default):
        return type(default)(self.settings.get(name, default))

    def log(self, **rec):
        if self.log_fh is None:
            return
        rec["t"] = round(time.time(), 6)
        line = json.dumps(rec, sort_keys=True)
        with self.lock:
            self.log_fh.write(line + "\n")
            self.log_fh.flush()

    def first_time(self, key):
        with self.lock:
            if key in self.seen:
                return False
            self.seen.add(key)
            return True

    def next_count(self):
        with self.lock:
            self.count += 1
            return self.count


def parse_range(value, total):
    """`bytes=a-b` (one range) → (start, end inclusive), or None if absent/unsupported."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    a, _, b = value[len("bytes="):].partition("-")
    try:
        if a == "":
            n = int(b)
            return max(0, total - n), total - 1
        start = int(a)
        end = int(b) if b else total - 1
    except ValueError:
        return None
    return start, min(end, total - 1)


def sign(path, exp):
    return hmac.new(SECRET, f"{path}:{exp}".encode(), hashlib.sha256).hexdigest()[:32]


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy/1"
    state: State = None  # set per server
    server_name_ = "proxy"

    def log_message(self, fmt, *args):  # silence the default stderr access log
        pass

    def send_body(self, status, headers, body, fault=None, limit=None, flip=False, length=None):
        """Send status + headers + body (bytes); limit cuts the body after that many bytes and
        closes the connection; flip inverts the middle byte; length overrides the announced
        Content-Length (HEAD answers)."""
        if flip and body:
            b = bytearray(body)
            b[len(b) // 2] ^= 0xFF
            body = bytes(b)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if length is None:
            length = len(body)
        self.send_header("Content-Length", str(length))
        if limit is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        sent = 0
        if self.command != "HEAD":
            data = body if limit is None else body[:limit]
            try:
                self.wfile.write(data)
                self.wfile.flush()
                sent = len(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.state.log(server=self.server_name_, method=self.command, path=self.path,
                       range=self.headers.get("Range"), status=status, bytes=sent,
                       length=length, auth=self.headers.get("Authorization") is not None,
                       fault=fault)
        if limit is not None:
            try:
                self.connection.shutdown(2)
            except OSError:
                pass

    def error(self, status, code, msg, extra=(), fault=None):
        body = json.dumps({"errors": [{"code": code, "message": msg}]}).encode()
        self.send_body(status, [("Content-Type", "application/json"), *extra], body, fault=fault)


class ProxyHandler(Base):
    server_name_ = "proxy"

    def do_GET(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_PATCH(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def upstream(self, method, path, headers, body=None):
        conn = http.client.HTTPConnection(self.state.upstream, timeout=120)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def handle_any(self):
        # A keep-alive connection may carry a /token request and then registry requests:
        # the log label is per request (token() sets "token").
        self.server_name_ = ProxyHandler.server_name_
        st = self.state
        faults = st.faults
        url = urllib.parse.urlsplit(self.path)
        body = None
        if self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))

        if url.path == "/token":
            return self.token(url)
        if "429" in faults and url.path.startswith("/v2/"):
            n = st.setting("N", 3)
            if st.next_count() % n == 0:
                return self.error(429, "TOOMANYREQUESTS", "slow down", [("Retry-After", "1")],
                                  fault="429")
        if "auth" in faults and url.path.startswith("/v2/"):
            auth = self.headers.get("Authorization", "")
            tok = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            with st.lock:
                exp = st.tokens.get(tok)
            if exp is None or exp < time.time():
                parts = url.path.split("/")
                repo = "/".join(parts[2:-2]) if len(parts) > 4 else ""
                chal = (f'Bearer realm="http://127.0.0.1:{st.port}/token",service="t",'
                        f'scope="repository:{repo}:pull"')
                return self.error(401, "UNAUTHORIZED", "authentication required",
                                  [("WWW-Authenticate", chal)],
                                  fault="auth-expired" if exp else "auth-missing")

        is_blob = "/blobs/sha256:" in url.path and self.command in ("GET", "HEAD")
        headers = {}
        for k, v in self.headers.items():  # repeated headers (Go sends one Accept per type)
            if k.lower() not in HOP_BY_HOP:
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
        headers.pop("Authorization", None)  # the upstream registry has no auth
        rng = self.headers.get("Range")

        if is_blob and self.command == "GET" and "redirect" in faults:
            parts = url.path.split("/")
            name = "/".join(parts[2:-2])
            digest = parts[-1]
            exp = int(time.time()) + st.setting("EXP", 60)
            opath = f"/o/{name}/{digest}"
            loc = (f"http://127.0.0.1:{st.object_port}{opath}?exp={exp}"
                   f"&sig={sign(opath, exp)}")
            return self.send_body(307, [("Location", loc)], b"", fault="redirect")

        if is_blob and self.command == "GET":
            return self.blob_get(url, headers, rng)

        resp, data = self.upstream(self.command, self.path, headers, body)
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        length = None
        if self.command == "HEAD" and resp.getheader("Content-Length") is not None:
            length = int(resp.getheader("Content-Length"))
        self.send_body(resp.status, out, data, length=length)

    def blob_get(self, url, headers, rng):
        st = self.state
        faults = st.faults
        fault = []
        if "ignore-range" in faults and rng:
            headers.pop("Range", None)
            fault.append("ignore-range")
        resp, data = self.upstream("GET", self.path, headers)
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        status = resp.status
        if "ignore-range" in fault:
            out = [(k, v) for k, v in out if k.lower() != "content-range"]
        if status == 206 and "range-200" in faults:
            status = 200
            fault.append("range-200")
        key = (url.path, rng)
        limit = None
        flip = False
        if status in (200, 206) and "truncate" in faults and st.first_time(("t",) + key):
            limit = min(st.setting("K", 100), max(len(data) - 1, 0))
            fault.append("truncate")
        if (status in (200, 206) and rng and "bad-byte" in faults and len(data) > 0
                and st.first_time(("b",) + key)):
            flip = True
            fault.append("bad-byte")
        self.send_body(status, out, data, fault=",".join(fault) or None, limit=limit, flip=flip)

    def token(self, url):
        st = self.state
        ttl = st.setting("TTL", 60)
        tok = os.urandom(12).hex()
        with st.lock:
            st.tokens[tok] = time.time() + ttl
        q = urllib.parse.parse_qs(url.query)
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": ttl,
                           "scope": " ".join(q.get("scope", []))}).encode()
        self.server_name_ = "token"
        self.send_body(200, [("Content-Type", "application/json")], body)


class ObjectHandler(Base):
    """The object store a `redirect` points to: presigned URLs, Range, S3-like refusals."""
    server_name_ = "object"

    def do_GET(self):
        self.serve()

    def do_HEAD(self):
        self.serve()

    def serve(self):
        st = self.state
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        if self.headers.get("Authorization") is not None:
            return self.error(400, "InvalidArgument",
                              "Only one auth mechanism allowed", fault="object-auth")
        if self.command == "HEAD" and "allow-head" not in st.faults:  # noqa: SIM102
            return self.error(400, "BadRequest", "HEAD not allowed on signed URLs",
                              fault="object-head")
        try:
            exp = int(q["exp"][0])
            sig = q["sig"][0]
        except (KeyError, ValueError, IndexError):
            return self.error(403, "AccessDenied", "missing signature")
        if not hmac.compare_digest(sig, sign(url.path, exp)):
            return self.error(403, "AccessDenied", "bad signature")
        if exp < time.time():
            return self.error(403, "AccessDenied", "Request has expired", fault="expired")
        if not url.path.startswith("/o/"):
            return self.error(404, "NoSuchKey", "no such object")
        rest = url.path[len("/o/"):]
        name, _, digest = rest.rpartition("/")
        rng = self.headers.get("Range")
        conn = http.client.HTTPConnection(st.upstream, timeout=120)
        # Ask the registry for the range only (not the whole blob once per chunk read); a
        # single `bytes=a-b` it answers 206 is relayed as is, anything else is cut here.
        conn.request("GET", f"/v2/{name}/blobs/{digest}",
                     headers={"Range": rng} if rng and rng.startswith("bytes=")
                     and "," not in rng else {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status == 206 and resp.getheader("Content-Range"):
            return self.send_body(206, [("Content-Type", "application/octet-stream"),
                                        ("Content-Range", resp.getheader("Content-Range"))],
                                  data)
        if resp.status == 416:
            return self.send_body(416, [("Content-Range",
                                         resp.getheader("Content-Range") or "bytes */0")], b"")
        if resp.status != 200:
            return self.error(404, "NoSuchKey", f"upstream {resp.status}")
        r = parse_range(rng, len(data))
        if r is None:
            return self.send_body(200, [("Content-Type", "application/octet-stream"),
                                        ("Accept-Ranges", "bytes")], data)
        a, b = r
        if a >= len(data) or a > b:
            return self.send_body(416, [("Content-Range", f"bytes */{len(data)}")], b"")
        self.send_body(206, [("Content-Type", "application/octet-stream"),
                             ("Content-Range", f"bytes {a}-{b}/{len(data)}")], data[a:b + 1])


def make_server(handler, state, port):
    cls = type(handler.__name__ + "Bound", (handler,), {"state": state})
    srv = ThreadingHTTPServer(("127.0.0.1", port), cls)
    srv.daemon_threads = True
    return srv


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="host:port of the registry")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--object-port", type=int, default=0)
    ap.add_argument("--faults", default=os.environ.get("FAULT", ""))
    ap.add_argument("--log", default=os.environ.get("LOG"))
    ap.add_argument("--ready", help="write the ports line here once listening")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE setting")
    a = ap.parse_args()
    faults = {f.strip() for f in a.faults.split(",") if f.strip()}
    known = {"ignore-range", "range-200", "redirect", "allow-head", "auth", "429", "truncate",
             "bad-byte", "log"}
    unknown = faults - known
    if unknown:
        ap.error(f"unknown faults: {', '.join(sorted(unknown))}")
    settings = {k: os.environ[k] for k in ("EXP", "TTL", "N", "K") if k in os.environ}
    for s in a.set:
        k, _, v = s.partition("=")
        settings[k] = v
    state = State(a.upstream, faults, settings, a.log)
    proxy = make_server(ProxyHandler, state, a.port)
    state.port = proxy.server_address[1]
    obj = make_server(ObjectHandler, state, a.object_port)
    state.object_port = obj.server_address[1]
    for s in (proxy, obj):
        threading.Thread(target=s.serve_forever, daemon=True).start()

    line = json.dumps({"port": state.port, "object_port": state.object_port, "pid": os.getpid(),
                       "faults": sorted(faults)})
    print(line, flush=True)
    if a.ready:
        tmp = a.ready + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(line + "\n")
        os.replace(tmp, a.ready)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    proxy.shutdown()
    obj.shutdown()


if __name__ == "__main__":
    main()
