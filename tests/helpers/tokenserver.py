#!/usr/bin/env python3
"""tokenserver.py: a Docker registry token server for tests (Docker token auth, as
docker/distribution's `auth: token` verifies it).

Usage:
    tokenserver.py --key KEY.pem --cert CERT.pem --user USER --password PASSWORD
                   [--issuer ISSUER] [--service SERVICE] [--namespace NS] [--port 0]
                   [--log FILE] [--ready FILE]

Listens on 127.0.0.1 (port 0 = a free one). `GET /token?service=&scope=&account=` with
`Authorization: Basic base64(USER:PASSWORD)` answers 200 with
`{"token", "access_token", "expires_in": 300, "issued_at"}`: a JWT signed RS256 with KEY
(through `openssl dgst -sha256 -sign`), whose header carries CERT as its `x5c` chain (the
registry's `rootcertbundle` holds CERT, so the chain verifies), and whose claims are
`iss`=ISSUER, `sub`=USER, `aud`=SERVICE, `exp`/`nbf`/`iat`, `jti`, and `access`: the actions
asked for in each `repository:<name>:<actions>` scope, granted only for names under
`NS/` (default: the part of USER before its first `/`, OCIR style `tenancy/alice`).
Other scopes are granted nothing. No scope at all (as `docker login` asks) gives an empty
`access` list, which the registry accepts for `/v2/`.

Refusals: no or wrong Basic credentials -> 401 with `{"details": "..."}`; an `account`
parameter that is not USER -> 403; a `service` that is not SERVICE -> 400.

On start it prints `{"port": P, "pid": N}` on one line to stdout and, with --ready FILE,
writes the same line to FILE (atomically). With --log FILE it appends one JSON line per
request: {"path", "query" (name -> list of values), "user" (Basic user or null),
"status"}. Never logs a password or a token. Stops on SIGTERM/SIGINT.
Python 3 standard library and the openssl command only.
"""
import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der_b64(cert_path: str) -> str:
    """The certificate's DER as standard base64 (the PEM body, joined)."""
    lines = open(cert_path).read().strip().splitlines()
    body = []
    inside = False
    for line in lines:
        if line.startswith("-----BEGIN CERTIFICATE"):
            inside = True
        elif line.startswith("-----END CERTIFICATE"):
            break
        elif inside:
            body.append(line.strip())
    return "".join(body)


class Issuer:
    def __init__(self, args):
        self.args = args
        self.x5c = [cert_der_b64(args.cert)]
        self.namespace = args.namespace or args.user.split("/", 1)[0]
        self.lock = threading.Lock()

    def sign(self, signing_input: bytes) -> bytes:
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.args.key],
            input=signing_input,
            capture_output=True,
            check=True,
        )
        return out.stdout

    def grant(self, scopes):
        access = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) < 3 or parts[0] != "repository":
                    continue
                name = ":".join(parts[1:-1])
                actions = [a for a in parts[-1].split(",") if a in ("pull", "push")]
                if name.startswith(self.namespace + "/") and actions:
                    access.append({"type": "repository", "name": name, "actions": actions})
        return access

    def token(self, scopes):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {
            "iss": self.args.issuer,
            "sub": self.args.user,
            "aud": self.args.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.grant(scopes),
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + b64url(self.sign(signing_input.encode()))


def make_handler(issuer: Issuer, log_path):
    args = issuer.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet: the JSON log is the record
            pass

        def reply(self, status, body, user, query):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if log_path:
                line = json.dumps(
                    {"path": urlsplit(self.path).path, "query": query, "user": user, "status": status}
                )
                with issuer.lock, open(log_path, "a") as f:
                    f.write(line + "\n")

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            user, password = None, None
            auth = self.headers.get("Authorization", "")
            if auth[:6].lower() == "basic ":
                try:
                    user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except Exception:
                    user, password = None, None
            if url.path != "/token":
                return self.reply(404, {"details": "not found"}, user, query)
            if user != args.user or password != args.password:
                return self.reply(401, {"details": "invalid user name or password"}, user, query)
            if query.get("service", [args.service]) != [args.service]:
                return self.reply(400, {"details": "unknown service"}, user, query)
            if "account" in query and query["account"] != [args.user]:
                return self.reply(403, {"details": "account is not the authenticated user"}, user, query)
            token = issuer.token(query.get("scope", []))
            issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            body = {"token": token, "access_token": token, "expires_in": 300, "issued_at": issued}
            return self.reply(200, body, user, query)

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--issuer", default="lazysnap-test-issuer")
    p.add_argument("--service", default="lazysnap-test-registry")
    p.add_argument("--namespace", default=None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", default=None)
    p.add_argument("--ready", default=None)
    args = p.parse_args()

    issuer = Issuer(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(issuer, args.log))
    server.daemon_threads = True
    line = json.dumps({"port": server.server_address[1], "pid": os.getpid()})
    if args.ready:
        tmp = args.ready + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.rename(tmp, args.ready)
    print(line, flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
