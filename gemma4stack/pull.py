"""Download Gemma 4 GGUF files from Hugging Face: `gemma4stack pull gemma4:e2b[:q4_k_m]`.

    >>> import gemma4stack as g4
    >>> path = g4.pull("gemma4:e2b")            # Q4_K_M by default; a Path into the HF cache
    >>> m = g4.Model(path)

Tags map to (repo, file) pairs in data/gemma4_gguf_repos.toml; the download itself is
huggingface_hub's `hf_hub_download`, so files land in the ordinary HF cache
(~/.cache/huggingface/hub, or $HF_HUB_CACHE) and are shared with every other HF tool.
On top of it this module adds what a first-time user needs:

- a tqdm progress bar (huggingface_hub's own; `progress=False` hides it);
- resume: when the connection drops mid-file, huggingface_hub re-requests the rest with an
  HTTP Range header (up to 5 times per call). A download interrupted by killing the process
  starts over: huggingface_hub 2.x writes to a per-process temporary file that it deletes.
- checksum: the Hub's ETag for an LFS file (every GGUF) is the sha256 of its content, and the
  cache names the blob after it, so a fresh download is hashed and compared; a mismatch deletes
  the blob and raises ChecksumError. For a non-LFS file the ETag is the git blob sha1, which is
  checked the git way. If no ETag-named blob exists (a cache without symlinks) we say so.
- split files: a file published in shards (llama.cpp's gguf-split names them
  <prefix>-00001-of-00003.gguf ...) is downloaded shard by shard into the same snapshot folder;
  the path returned is the first shard's, which gemma4stack.Model opens with all the others.
- errors that say what to do: GatedModelError (HTTP 401/403: accept the license, set a token),
  OfflineError (no connection or HF_HUB_OFFLINE=1, and the file is not cached: a cached copy is
  returned when there is one), UnknownTagError (lists the tags we know).

The endpoint is $HF_ENDPOINT (read at call time) or https://huggingface.co; tests point it at
a loopback server.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10: the backport (a dependency there)
    import tomli as tomllib        # type: ignore[no-redef]
from dataclasses import asdict, dataclass, field
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data" / "gemma4_gguf_repos.toml"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
# llama.cpp's gguf-split shard names (llama_split_path: "%s-%05d-of-%05d.gguf")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def shard_names(fname: str) -> list[str]:
    """Every file of a split GGUF, given the name of any of its shards (gguf-split's
    <prefix>-%05d-of-%05d.gguf, shards numbered from 1), in order; [fname] for a file that is
    not split. Raises ValueError for a shard number outside 1..count."""
    m = _SPLIT.search(fname)
    if not m:
        return [fname]
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= i <= n:
        raise ValueError(f"{fname}: shard {i} of {n} is not a gguf-split shard name")
    prefix = fname[:m.start()]
    return [f"{prefix}-{k:05d}-of-{n:05d}.gguf" for k in range(1, n + 1)]


# ----------------------------------------------------------------------------------------------
# Errors. Each subclasses the builtin a caller would catch anyway (cli.py reports OSError and
# ValueError as one-line messages).

class UnknownTagError(ValueError):
    """The tag is not in data/gemma4_gguf_repos.toml (message lists the known tags)."""


class GatedModelError(PermissionError):
    """The Hub refused the file (HTTP 401/403): license not accepted or no/invalid token."""


class OfflineError(ConnectionError):
    """The Hub cannot be reached (or HF_HUB_OFFLINE is set) and the file is not cached."""


class ChecksumError(OSError):
    """The downloaded bytes do not hash to the Hub's ETag; the bad blob was deleted."""


# ----------------------------------------------------------------------------------------------
# The tag catalog

@dataclass
class GGUFSource:
    """One downloadable GGUF: which repo and file a tag resolves to.

    confirmed: the repo + file pair was seen in public use (see the data file's header);
    seen: where. file may be corrected at download time from the repo listing.
    """
    tag: str
    variant: str
    quant: str
    repo: str
    file: str
    confirmed: bool
    seen: str = ""

    @property
    def publisher(self) -> str:
        return self.repo.split("/", 1)[0]

    def url(self, endpoint: str | None = None, revision: str = "main") -> str:
        return f"{_endpoint(endpoint)}/{self.repo}/resolve/{revision}/{self.file}"

    def to_dict(self) -> dict:
        return asdict(self)


def load_catalog(path: str | Path | None = None) -> dict:
    """Parse the tag catalog (TOML). Returns {"defaults", "variants", "file": [...]}."""
    with open(path or _DATA, "rb") as f:
        cat = tomllib.load(f)
    cat.setdefault("defaults", {}).setdefault("quant", "q4_k_m")
    cat["defaults"].setdefault("publishers", [])
    cat.setdefault("variants", {})
    cat.setdefault("file", [])
    return cat


def known_tags(catalog: str | Path | None = None) -> list[str]:
    """Every full tag `gemma4:<variant>:<quant>` in the catalog, sorted."""
    cat = load_catalog(catalog)
    return sorted({f"gemma4:{e['variant']}:{e['quant']}" for e in cat["file"]})


def _variant_key(cat: dict, name: str) -> str | None:
    name = name.lower()
    for key, v in cat["variants"].items():
        if name == key.lower() or name in [a.lower() for a in v.get("aliases", [])]:
            return key
    if any(e["variant"] == name for e in cat["file"]):
        return name
    return None


def resolve(tag: str, publisher: str | None = None,
            catalog: str | Path | None = None) -> GGUFSource:
    """Map `gemma4:<variant>[:<quant>]` to a GGUFSource.

    The prefix `gemma4:` may be omitted; case is ignored. Among entries for the same
    (variant, quant) a confirmed one wins, then a plain file over an Unsloth Dynamic ("UD-")
    mix (which may hold types the core cannot run), then the order of [defaults].publishers.
    Raises UnknownTagError (a ValueError) naming the known tags.
    """
    cat = load_catalog(catalog)
    parts = tag.strip().lower().split(":")
    if parts[0] in ("gemma4", "gemma-4"):
        parts = parts[1:]
    if not parts or len(parts) > 2 or not parts[0]:
        raise UnknownTagError(_unknown(tag, cat, "expected gemma4:<variant>[:<quant>]"))
    variant = _variant_key(cat, parts[0])
    quant = parts[1] if len(parts) == 2 else cat["defaults"]["quant"]
    if variant is None:
        raise UnknownTagError(_unknown(tag, cat, f"unknown variant {parts[0]!r}"))
    cands = [e for e in cat["file"] if e["variant"] == variant and e["quant"].lower() == quant]
    if publisher:
        cands = [e for e in cands if e["repo"].split("/", 1)[0].lower() == publisher.lower()]
    if not cands:
        why = f"no {quant!r} file for {variant!r}" + (f" from {publisher!r}" if publisher else "")
        raise UnknownTagError(_unknown(tag, cat, why))
    order = [p.lower() for p in cat["defaults"]["publishers"]]

    def rank(e):
        pub = e["repo"].split("/", 1)[0].lower()
        return (not e.get("confirmed", False), "ud-" in e["file"].lower(),
                order.index(pub) if pub in order else len(order))

    e = min(cands, key=rank)
    return GGUFSource(tag=f"gemma4:{variant}:{quant}", variant=variant, quant=quant,
                      repo=e["repo"], file=e["file"], confirmed=bool(e.get("confirmed", False)),
                      seen=e.get("seen", ""))


def _unknown(tag: str, cat: dict, why: str) -> str:
    tags = sorted({f"gemma4:{e['variant']}:{e['quant']}" for e in cat["file"]})
    return (f"unknown model tag {tag!r} ({why}). Known tags: {', '.join(tags)}. "
            f"The quant may be omitted (default {cat['defaults']['quant']}); "
            f"add entries to {_DATA} for other files.")


# ----------------------------------------------------------------------------------------------
# Download

@dataclass
class PullResult:
    """What `download()` did.

    path: the file in the HF cache (a snapshot symlink to blobs/<etag>), the first shard
    of a split file; shards: all of its files (just path when not split);
    size: bytes (all shards); sha256: hex digest when computed (of path);
    checksum: "verified sha256", "verified git-sha1", "cached (not re-hashed)",
    or "unavailable: <why>"; downloaded: False when the cache already had it.
    """
    source: GGUFSource
    path: Path
    size: int
    downloaded: bool
    checksum: str
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)   # every file of a split GGUF, path first

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["shards"] = [str(p) for p in self.shards]
        return d


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def download(tag: str, *, publisher: str | None = None, revision: str = "main",
             cache_dir: str | Path | None = None, endpoint: str | None = None,
             token: str | bool | None = None, offline: bool | None = None,
             verify: bool | None = None, progress: bool = True,
             catalog: str | Path | None = None) -> PullResult:
    """Resolve `tag` and make sure its GGUF is in the HF cache; see `pull` for arguments."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError)

    src = resolve(tag, publisher=publisher, catalog=catalog)
    ep = _endpoint(endpoint)
    if offline is None:
        offline = _env_true("HF_HUB_OFFLINE")
    notes: list[str] = []
    if not src.confirmed:
        notes.append(f"{src.repo}/{src.file} is an unconfirmed file name (see {_DATA.name})")

    def cached(fname: str) -> bool:
        hit = try_to_load_from_cache(src.repo, fname, cache_dir=cache_dir, revision=revision)
        return isinstance(hit, str) and os.path.exists(hit)

    def fetch(fname: str) -> str:
        return hf_hub_download(src.repo, fname, revision=revision, cache_dir=cache_dir,
                               endpoint=ep, token=token, local_files_only=offline,
                               tqdm_class=None if progress else _SilentTqdm)

    if not offline and not cached(src.file) and not _resolvable(ep):
        # no DNS answer for the Hub: fail now rather than after huggingface_hub's ~24 s of
        # retries (1+2+4+8+8 s), which cannot help when the name does not resolve
        raise OfflineError(_offline_message(src, ep, offline, cache_dir))
    try:
        try:
            names = shard_names(src.file)
            was_cached = all(cached(n) for n in names)
            paths = [fetch(names[0])]
        except RemoteEntryNotFoundError:
            # Unconfirmed names can be off by case or prefix: ask the repo what it has.
            fname = _find_in_listing(src, ep, revision, token)
            notes.append(f"{src.file} not in {src.repo}; the repo listing has {fname}")
            src.file = fname
            names = shard_names(fname)
            was_cached = all(cached(n) for n in names)
            paths = [fetch(names[0])]
        for k, name in enumerate(names[1:], start=2):   # the other shards of a split file
            try:
                paths.append(fetch(name))
            except RemoteEntryNotFoundError as e:
                raise FileNotFoundError(f"{src.repo} has {names[0]} but not {name} (shard {k} of "
                                        f"{len(names)} of the split file)") from e
        if len(names) > 1:
            notes.append(f"split file: {len(names)} shards, {names[0]} ... {names[-1]}")
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise OfflineError(_offline_message(src, ep, offline, cache_dir)) from e
    except RepositoryNotFoundError as e:   # includes GatedRepoError; the Hub says 401 for both
        raise GatedModelError(_gated_message(src, ep, e)) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise GatedModelError(_gated_message(src, ep, e)) from e
        raise
    except Exception as e:   # the transfer itself failed after huggingface_hub's retries
        if _is_transport_error(e):
            raise OfflineError(f"the download of {src.url(ep, revision)} failed: {e}. "
                               "Check the connection and run the same pull again.") from e
        raise

    shards = [Path(p) for p in paths]
    res = PullResult(source=src, path=shards[0], size=sum(p.stat().st_size for p in shards),
                     downloaded=not was_cached, checksum="", notes=notes, shards=shards)
    if verify is None:
        verify = res.downloaded
    if verify:
        _verify(res, progress)
    else:
        res.checksum = "cached (not re-hashed; pass verify=True / --verify)"
    return res


def pull(tag: str, *, publisher: str | None = None, revision: str = "main",
         cache_dir: str | Path | None = None, endpoint: str | None = None,
         token: str | bool | None = None, offline: bool | None = None,
         verify: bool | None = None, progress: bool = True,
         catalog: str | Path | None = None) -> Path:
    """Download the GGUF for `tag` (e.g. "gemma4:e2b", "gemma4:31b:q4_k_m") and return its path.

    publisher: pick a repo owner ("ggml-org", "unsloth", "bartowski") instead of the default
    order. revision: branch, tag or commit. cache_dir: HF cache root (default $HF_HUB_CACHE).
    endpoint: Hub URL (default $HF_ENDPOINT or https://huggingface.co). token: HF token
    (default $HF_TOKEN or the `hf auth login` token). offline: only use the cache (default
    $HF_HUB_OFFLINE). verify: hash the file against the Hub's sha256 ETag (default: only
    when freshly downloaded). catalog: an alternative tag TOML.

    Returns the path of the cached file (bytes on disk = the file size).
    Raises UnknownTagError, GatedModelError, OfflineError, ChecksumError.
    """
    return download(tag, publisher=publisher, revision=revision, cache_dir=cache_dir,
                    endpoint=endpoint, token=token, offline=offline, verify=verify,
                    progress=progress, catalog=catalog).path


def _find_in_listing(src: GGUFSource, ep: str, revision: str, token) -> str:
    from huggingface_hub import HfApi
    files = HfApi(endpoint=ep, token=token).list_repo_files(src.repo, revision=revision)
    want = src.quant.lower() + ".gguf"
    cands = [f for f in files if f.lower().endswith(want) and "mmproj" not in f.lower()
             and "/" not in f]
    if not cands:   # a split file, named by its first shard (possibly in a folder)
        cands = [f for f in files if _SPLIT.search(f) and "mmproj" not in f.lower()
                 and _SPLIT.sub(".gguf", f).lower().endswith(want)
                 and int(_SPLIT.search(f).group(1)) == 1]
    plain = [f for f in cands if "ud-" not in f.lower()] or cands
    if len(plain) == 1:
        return plain[0]
    if not plain:
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        raise UnknownTagError(f"{src.repo} has no *{src.quant.upper()}.gguf file; its GGUF files: "
                              f"{', '.join(ggufs) or 'none'}")
    raise UnknownTagError(f"{src.repo} has several *{src.quant.upper()}.gguf files "
                          f"({', '.join(plain)}); name one in {_DATA.name}")


def _gated_message(src: GGUFSource, ep: str, e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", "401/403")
    has_token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    return (f"{ep}/{src.repo} refused {src.file} (HTTP {status}): Gemma models are gated. "
            f"Open {ep}/{src.repo} in a browser, log in and accept the Gemma license, then give "
            "gemma4stack a token with read access: `export HF_TOKEN=hf_...` or `hf auth login`"
            + (" (HF_TOKEN is set: check that it is valid and that its account accepted the "
               "license)." if has_token else ".")
            + " A repo that does not exist also answers 401 without a token.")


def _offline_message(src: GGUFSource, ep: str, offline: bool, cache_dir) -> str:
    from huggingface_hub import constants
    where = cache_dir or constants.HF_HUB_CACHE
    if offline:
        why = ("offline mode is on (HF_HUB_OFFLINE=1 or offline=True) and "
               f"{src.repo}/{src.file} is not in the cache {where}")
        todo = ("unset HF_HUB_OFFLINE (or pass offline=False) on a connected machine and pull "
                "again, or copy the HF cache from a machine that has the file")
    else:
        why = f"cannot reach {ep} and {src.repo}/{src.file} is not in the cache {where}"
        todo = ("check the network (and HF_ENDPOINT / proxy settings), then pull again; "
                "once pulled, the file is used offline (`gemma4stack pull --offline`, "
                "offline=True or HF_HUB_OFFLINE=1 read the cache without trying the network)")
    return (f"{why}. To fix: {todo}. Or download the GGUF by other means and pass its path "
            f"to gemma4stack.Model(path) / --model PATH.")


def _resolvable(endpoint: str) -> bool:
    """Whether the endpoint's host name resolves (a proxy in $HTTPS_PROXY / $HTTP_PROXY / $ALL_PROXY
    may resolve it for us, so then we assume it does)."""
    import socket
    from urllib.parse import urlsplit
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                       "ALL_PROXY", "all_proxy")):
        return True
    host = urlsplit(endpoint).hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, None)
        return True
    except (socket.gaierror, UnicodeError):
        return False


def _is_transport_error(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectError", "TimeoutException",
                         "RemoteProtocolError", "NetworkError"})


def _verify(res: PullResult, progress: bool) -> None:
    """Hash each file (every shard of a split one) and compare with the ETag the cache named
    its blob after. res.checksum tells the outcome; the first file's sha256 goes to res.sha256."""
    outcomes = []
    for k, path in enumerate(res.shards or [res.path]):
        label = f"{res.source.repo}/{path.name}"
        checksum, digest = _verify_file(path, label, progress)
        if k == 0:
            res.sha256 = digest
        outcomes.append(checksum)
    # one message when every shard agrees ("verified sha256"), else each shard's
    res.checksum = outcomes[0] if len(set(outcomes)) == 1 else "; ".join(
        f"shard {k + 1}: {c}" for k, c in enumerate(outcomes))


def _verify_file(path: Path, label: str, progress: bool) -> tuple[str, str | None]:
    """(checksum outcome, sha256 or None) of one cached file; a mismatch deletes it and
    raises ChecksumError."""
    blob = Path(os.path.realpath(path))
    etag = blob.name if blob.parent.name == "blobs" else None
    if etag is None:
        return ("unavailable: the cache stores no ETag-named blob (symlinks disabled); "
                "compare sha256 by hand with the Hub's file page"), None
    sha = None
    if _SHA256.fullmatch(etag):
        digest = sha = sha256_file(blob, progress=progress)
        ok, kind = digest == etag, "sha256"
    elif _SHA1.fullmatch(etag):
        h = hashlib.sha1(b"blob %d\0" % blob.stat().st_size)   # git blob id: sha1("blob <size>\0" + data)
        _hash_into(h, blob)
        ok, kind, digest = h.hexdigest() == etag, "git-sha1", h.hexdigest()
    else:
        return f"unavailable: the Hub's ETag {etag!r} is not a content hash", None
    if not ok:
        for p in (path, blob):
            try:
                os.unlink(p)
            except OSError:
                pass
        raise ChecksumError(f"{label}: {kind} of the downloaded bytes is {digest} but the Hub "
                            f"says {etag}. The corrupt copy was deleted from the cache; run the "
                            "same pull again.")
    return f"verified {kind}", sha


def _hash_into(h, path: Path, progress: bool = False) -> None:
    total = path.stat().st_size
    bar = None
    if progress and total > (256 << 20):
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="sha256", leave=False)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()


def sha256_file(path: str | Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    _hash_into(h, Path(path), progress)
    return h.hexdigest()


class _SilentTqdm:
    """A tqdm stand-in that shows nothing (progress=False)."""
    def __init__(self, *a, **k): pass
    def update(self, n=1): pass
    def close(self): pass
    def __enter__(self): return self
    def __exit__(self, *a): return False


# ----------------------------------------------------------------------------------------------
# CLI

def register_cli(sub) -> None:
    p = sub.add_parser("pull", help="download a Gemma 4 GGUF from Hugging Face (gemma4:e2b[:q4_k_m])",
                       description="Download a Gemma 4 GGUF into the Hugging Face cache. "
                                   "Tags: gemma4:<variant>[:<quant>]; --list shows them.")
    p.add_argument("tag", nargs="?", help="e.g. gemma4:e2b or gemma4:31b:q4_k_m")
    p.add_argument("--publisher", help="repo owner to use: ggml-org, unsloth, bartowski")
    p.add_argument("--revision", default="main")
    p.add_argument("--cache-dir", help="HF cache root (default $HF_HUB_CACHE)")
    p.add_argument("--offline", action="store_true", default=None,
                   help="only use the cache (also HF_HUB_OFFLINE=1)")
    p.add_argument("--verify", action="store_true", default=None,
                   help="re-hash a cached file against the Hub's sha256")
    p.add_argument("--list", action="store_true", help="list known tags and their files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.list or not args.tag:
        for t in known_tags():
            s = resolve(t)
            mark = "" if s.confirmed else "  (unconfirmed name)"
            print(f"{t:24s} {s.repo}/{s.file}{mark}")
        return 0 if args.list else 2
    res = download(args.tag, publisher=args.publisher, revision=args.revision,
                   cache_dir=args.cache_dir, offline=args.offline, verify=args.verify,
                   progress=not args.quiet)
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"{res.source.tag}: {res.source.repo}/{res.source.file}")
    print(f"  {'downloaded' if res.downloaded else 'already cached'}, {res.size / 1e9:.2f} GB, "
          f"checksum: {res.checksum}")
    print(res.path)
    return 0


# g4.pull(...) works even after `import gemma4stack.pull` (see _callable.py)
from gemma4stack._callable import make_callable  # noqa: E402

make_callable(__name__)
