"""`gemma4stack pull` against a loopback stand-in for the Hugging Face Hub.

The fake hub speaks the part of the Hub protocol hf_hub_download uses (huggingface_hub
file_download.py: get_hf_file_metadata + http_get; hf_api.py: list_repo_tree):

  HEAD/GET /{repo}/resolve/{rev}/{file}  -> 302 to /cdn/{sha256} with X-Repo-Commit,
                                            X-Linked-Etag (sha256), X-Linked-Size, as the Hub
                                            does for LFS files
  GET /cdn/{sha256}                      -> the bytes, with Range support (206)
  GET /api/models/{repo}/tree/{rev}      -> JSON listing (path, size, oid, lfs)

The payload is a real GGUF from shared/models, so "correct bytes" is checked against the
sha256 recorded in shared/models/SOURCES.md, not against anything this code computed.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import importlib

import pytest

# the module, not gemma4stack.pull (the package attribute is the function)
P = importlib.import_module("gemma4stack.pull")

TINY = "TinyStories-656K-Q8_0.gguf"
TINY_SHA256 = "c773a9eb8883751131f30e0c1965c56b1102a4972fdac6a6f71fe156ba6d8cb7"  # SOURCES.md
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 serving {repo: {filename: bytes}}."""

    def __init__(self, files: dict[str, dict[str, bytes]]):
        self.files = files
        self.gated: dict[str, int] = {}       # repo -> 401/403
        self.drop_once: set[str] = set()      # sha256s whose first GET stops halfway
        self.corrupt: set[str] = set()        # sha256s served with one byte flipped
        self.log: list[tuple[str, str, str | None]] = []   # (method, path, Range)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):   # keep pytest output clean
                pass

            def do_HEAD(self):
                self.route(head=True)

            def do_GET(self):
                self.route(head=False)

            def reply(self, code, headers=None, body=b"", head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def route(self, head):
                path = unquote(urlsplit(self.path).path)
                hub.log.append((self.command, path, self.headers.get("Range")))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
                if m:
                    return self.tree(m.group(1))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self.resolve(m.group(1), m.group(3), head)
                m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
                if m:
                    return self.cdn(m.group(1), head)
                self.reply(404, {"X-Error-Code": "RepoNotFound"}, b"{}", head)

            def tree(self, repo):
                if repo not in hub.files:
                    return self.reply(404, {"X-Error-Code": "RepoNotFound"}, b"{}")
                items = [{"type": "file", "path": n, "size": len(b), "oid": _git_sha1(b),
                          "lfs": {"oid": _sha256(b), "size": len(b), "pointerSize": 134}}
                         for n, b in hub.files[repo].items()]
                self.reply(200, {"Content-Type": "application/json"}, json.dumps(items).encode())

            def resolve(self, repo, fname, head):
                if repo in hub.gated:
                    code = hub.gated[repo]
                    msg = f"Access to model {repo} is restricted. You must have access to it."
                    return self.reply(code, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg},
                                      json.dumps({"error": msg}).encode(), head)
                if repo not in hub.files:
                    return self.reply(401, {"X-Error-Code": "RepoNotFound"}, b"{}", head)
                data = hub.files[repo].get(fname)
                if data is None:
                    return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT,
                                            "X-Error-Message": "Entry not found"}, b"{}", head)
                sha = _sha256(data)
                self.reply(302, {"Location": f"{hub.cdn_url}/cdn/{sha}", "X-Repo-Commit": COMMIT,
                                 "ETag": f'"{_git_sha1(data)}"', "X-Linked-Etag": f'"{sha}"',
                                 "X-Linked-Size": str(len(data))}, b"", head)

            def cdn(self, sha, head):
                data = next((b for fs in hub.files.values() for b in fs.values()
                             if _sha256(b) == sha), None)
                if data is None:
                    return self.reply(404, {}, b"", head)
                if sha in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if sha in hub.drop_once and not rng:
                    hub.drop_once.discard(sha)
                    self.wfile.write(body[: len(body) // 2])   # then hang up mid-body
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        # Two origins, as on the Hub: resolve URLs on the hub, LFS bytes on a CDN host (a
        # different port here). huggingface_hub follows same-origin redirects on HEAD but stops
        # at a CDN redirect and takes the metadata from the 302 itself.
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)
        for s in self.servers:
            threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def cdn_gets(self):
        return [(m, p, r) for m, p, r in self.log if p.startswith("/cdn/") and m == "GET"]


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _git_sha1(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


CATALOG = """
[defaults]
quant = "q8_0"
publishers = ["test-org", "other-org"]

[variants.tiny]
name = "TinyStories 656K"
aliases = ["tiny-it"]

[[file]]
variant = "tiny"
quant = "q8_0"
repo = "test-org/tiny-GGUF"
file = "TinyStories-656K-Q8_0.gguf"
confirmed = true

[[file]]
variant = "tiny"
quant = "q4_0"
repo = "test-org/tiny-GGUF"
file = "tiny-Q4_0.gguf"
confirmed = false

[[file]]
variant = "gated"
quant = "q8_0"
repo = "google/gated-GGUF"
file = "gated-Q8_0.gguf"
confirmed = true
"""


@pytest.fixture
def payload(models) -> bytes:
    return (models / TINY).read_bytes()


@pytest.fixture
def hub(payload):
    h = FakeHub({
        "test-org/tiny-GGUF": {TINY: payload, "tiny-q4_0.gguf": payload[::-1]},
        "ggml-org/gemma-4-E2B-it-GGUF": {"gemma-4-E2B-it-Q4_K_M.gguf": payload},
        "google/gated-GGUF": {"gated-Q8_0.gguf": payload},
    })
    yield h
    h.close()


@pytest.fixture
def env(tmp_path, monkeypatch, hub):
    """Isolated cache and catalog; small download chunks so a half-sent body yields bytes."""
    import huggingface_hub.constants as C
    monkeypatch.setattr(C, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    cat = tmp_path / "repos.toml"
    cat.write_text(CATALOG)
    return {"cache_dir": tmp_path / "hub", "catalog": cat, "token": False, "progress": False}


def test_full_download_has_the_published_bytes_and_verified_checksum(env, hub):
    res = P.download("gemma4:tiny", **env)
    assert res.downloaded and res.checksum == "verified sha256"
    assert P.sha256_file(res.path) == TINY_SHA256 == res.sha256
    assert res.size == 749728                                   # SOURCES.md
    # it lives in the HF cache layout: snapshots/<commit>/<file> -> blobs/<sha256>
    assert res.path.parts[-2:] == (COMMIT, TINY)
    assert Path(res.path).resolve().name == TINY_SHA256
    # a second pull is served from the cache: no new GET of the bytes
    n = len(hub.cdn_gets())
    again = P.download("gemma4:tiny:q8_0", **env)
    assert again.path == res.path and not again.downloaded and len(hub.cdn_gets()) == n


def test_real_catalog_tag_maps_to_ggml_org_file(env, hub):
    """The shipped catalog: gemma4:e2b -> Q4_K_M from the first confirmed publisher."""
    src = P.resolve("gemma4:e2b")
    assert (src.repo, src.file, src.quant) == ("ggml-org/gemma-4-E2B-it-GGUF",
                                               "gemma-4-E2B-it-Q4_K_M.gguf", "q4_k_m")
    assert P.resolve("gemma4:e2b", publisher="unsloth").repo == "unsloth/gemma-4-E2B-it-GGUF"
    # a plain Q4_K_M file beats Unsloth's "UD-" mix, even from a later publisher
    assert P.resolve("gemma4:26b").file == "google_gemma-4-26B-A4B-it-Q4_K_M.gguf"
    kw = {k: v for k, v in env.items() if k != "catalog"}
    path = P.pull("gemma4:E2B:Q4_K_M", **kw)
    assert P.sha256_file(path) == TINY_SHA256
    assert ("HEAD", "/ggml-org/gemma-4-E2B-it-GGUF/resolve/main/gemma-4-E2B-it-Q4_K_M.gguf",
            None) in hub.log


def test_resume_after_connection_dropped_halfway(env, hub, payload):
    hub.drop_once.add(TINY_SHA256)
    res = P.download("gemma4:tiny", **env)
    assert P.sha256_file(res.path) == TINY_SHA256 and res.checksum == "verified sha256"
    gets = hub.cdn_gets()
    assert len(gets) == 2
    assert gets[0][2] is None
    # the second request asks only for the missing tail (a multiple of the chunk size)
    start = int(re.fullmatch(r"bytes=(\d+)-", gets[1][2]).group(1))
    assert 0 < start <= len(payload) // 2


def test_corrupted_payload_is_detected_and_removed(env, hub):
    hub.corrupt.add(TINY_SHA256)
    with pytest.raises(P.ChecksumError, match="sha256.*run the same pull again"):
        P.download("gemma4:tiny", **env)
    blobs = list((env["cache_dir"]).rglob("blobs/*"))
    assert blobs == []          # the bad copy is not left for the next call to trust
    hub.corrupt.clear()
    assert P.sha256_file(P.pull("gemma4:tiny", **env)) == TINY_SHA256


@pytest.mark.parametrize("status", [401, 403])
def test_gated_repo_error_says_accept_license_and_token(env, hub, status):
    hub.gated["google/gated-GGUF"] = status
    with pytest.raises(P.GatedModelError) as ei:
        P.pull("gemma4:gated", **env)
    msg = str(ei.value)
    assert f"HTTP {status}" in msg and "accept the Gemma license" in msg
    assert "HF_TOKEN" in msg and "hf auth login" in msg
    assert f"{hub.url}/google/gated-GGUF" in msg
    assert isinstance(ei.value, PermissionError)


def test_offline_without_cache_says_what_to_do(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(P.OfflineError, match="HF_HUB_OFFLINE.*not in the cache") as ei:
        P.pull("gemma4:tiny", **env)
    assert "unset HF_HUB_OFFLINE" in str(ei.value)
    assert isinstance(ei.value, ConnectionError)


def test_offline_with_cache_returns_cached_file(env, hub, monkeypatch):
    path = P.pull("gemma4:tiny", **env)
    n = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert P.pull("gemma4:tiny", **env) == path
    assert len(hub.log) == n                      # offline: no request at all
    # an unreachable hub (nothing listens on the port) falls back to the cache as well
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    res = P.download("gemma4:tiny", **env)
    assert res.path == path and not res.downloaded


def test_unknown_tag_lists_known_tags(env):
    with pytest.raises(P.UnknownTagError) as ei:
        P.pull("gemma4:e9b", **env)
    msg = str(ei.value)
    assert "unknown variant 'e9b'" in msg
    assert "gemma4:tiny:q8_0" in msg and "gemma4:tiny:q4_0" in msg
    with pytest.raises(ValueError, match="no 'q2_k' file for 'tiny'"):
        P.resolve("gemma4:tiny:q2_k", catalog=env["catalog"])
    # the shipped catalog's tags all parse back to themselves
    for t in P.known_tags():
        assert P.resolve(t).tag == t


def test_unconfirmed_file_name_is_corrected_from_repo_listing(env, hub, payload):
    res = P.download("gemma4:tiny:q4_0", **env)   # catalog says tiny-Q4_0, repo has tiny-q4_0
    assert res.source.file == "tiny-q4_0.gguf"
    assert any("repo listing" in n for n in res.notes)
    assert res.path.read_bytes() == payload[::-1] and res.checksum == "verified sha256"
    assert any(p == "/api/models/test-org/tiny-GGUF/tree/main" for _, p, _ in hub.log)


def test_cli_pull_prints_path(env, hub, capsys, monkeypatch):
    from gemma4stack.cli import main
    monkeypatch.setattr(P, "_DATA", env["catalog"])
    rc = main(["pull", "gemma4:tiny", "--cache-dir", str(env["cache_dir"]), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "verified sha256" in out
    assert Path(out.strip().splitlines()[-1]).read_bytes()[:4] == b"GGUF"
