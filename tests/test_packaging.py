"""The package as a newcomer installs it: `python -m build --sdist`, then `pip install
dist/gemma4stack-*.tar.gz` into a fresh virtual environment (numpy from PyPI, the C core
compiled by pip), under every CPython from 3.10 to 3.13 that pyenv has; then, from a directory
outside the checkout, `gemma4stack detect --json`, `import gemma4stack; gemma4stack.detect()`,
`gemma4stack recommend`, and a greedy generation with the TinyStories test model that must match
the checkout's own.

Minutes, not seconds (one C build per Python), so it runs only when selected:

    python -m pytest -m packaging tests/test_packaging.py      # or GEMMA4STACK_TEST_PACKAGING=1

GEMMA4STACK_PACKAGING_PYTHONS=/path/python3.10,/path/python3.13 chooses the interpreters
(default: pyenv's 3.10-3.13, else this one). The venvs are built in parallel, as many at a time
as there are CPUs; the total time is printed.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma4stack._shared import shared_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL = shared_dir() / "models" / "TinyStories-656K-Q8_0.gguf"
PROMPT, N_TOKENS = "Once upon a time", 16

pytestmark = pytest.mark.packaging


@pytest.fixture(autouse=True)
def _only_when_selected(request):
    selected = "packaging" in (request.config.getoption("markexpr") or "")
    if not (selected or os.environ.get("GEMMA4STACK_TEST_PACKAGING") == "1"):
        pytest.skip("builds and installs the sdist under several Pythons (minutes): "
                    "select with -m packaging or GEMMA4STACK_TEST_PACKAGING=1")


def _pythons() -> list[str]:
    """Interpreters to test: $GEMMA4STACK_PACKAGING_PYTHONS, else pyenv's newest 3.10..3.13."""
    env = os.environ.get("GEMMA4STACK_PACKAGING_PYTHONS")
    if env:
        return [p for p in env.split(",") if p]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    best: dict[tuple[int, int], tuple[tuple[int, ...], Path]] = {}
    for d in root.glob("3.*") if root.is_dir() else []:
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", d.name)
        exe = d / "bin" / "python3"
        if m and 10 <= int(m[1]) <= 13 and exe.exists():
            key, ver = (3, int(m[1])), (3, int(m[1]), int(m[2]))
            if key not in best or ver > best[key][0]:
                best[key] = (ver, exe)
    return [str(exe) for _, (_, exe) in sorted(best.items())] or [sys.executable]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION")}
    env["PIP_NO_INPUT"] = "1"
    return env


def _sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _install_and_run(python: str, sdist: Path, work: Path) -> dict:
    """A fresh venv for `python`, the sdist installed into it, the commands run from `work`."""
    t0 = time.monotonic()
    env = _clean_env()
    ver = _sh([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], work, env).strip()
    venv = work / f"venv-{ver}"
    _sh([python, "-m", "venv", str(venv)], work, env)
    bin_ = venv / "bin"
    _sh([str(bin_ / "python"), "-m", "pip", "install", "-q", str(sdist)], work, env)
    t_install = time.monotonic() - t0

    out: dict = {"python": ver, "install_s": t_install}
    detect = json.loads(_sh([str(bin_ / "gemma4stack"), "detect", "--json", "--no-bandwidth"], work, env))
    out["cores"] = detect["cpu"]["cores"]
    out["where"] = _sh([str(bin_ / "python"), "-c",
                        "import gemma4stack; r = gemma4stack.detect(bandwidth=False); "
                        "assert r.cpu.threads >= 1; print(gemma4stack.__file__)"], work, env).strip()
    rec = json.loads(_sh([str(bin_ / "gemma4stack"), "recommend", "--json", "--no-bandwidth"], work, env))
    out["rows"] = len(rec)
    out["text"] = _sh([str(bin_ / "gemma4stack"), "run", "--model", str(MODEL), "--prompt", PROMPT,
                       "--max-tokens", str(N_TOKENS), "--temperature", "0", "--seed", "1"], work, env)
    # a command whose dependencies are an extra says which one instead of a traceback
    r = subprocess.run([str(bin_ / "gemma4stack"), "serve", "--model", str(MODEL)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    out["serve"] = (r.returncode, r.stderr)
    pip_list = _sh([str(bin_ / "python"), "-m", "pip", "list", "--format", "json"], work, env)
    out["packages"] = sorted(p["name"].lower() for p in json.loads(pip_list))
    out["total_s"] = time.monotonic() - t0
    return out


def test_sdist_installs_and_runs_in_fresh_venvs(tmp_path):
    if not MODEL.exists():
        pytest.skip(f"{MODEL} missing")
    t0 = time.monotonic()
    dist = tmp_path / "dist"
    _sh([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)], ROOT, _clean_env())
    (sdist,) = dist.glob("gemma4stack-*.tar.gz")
    t_sdist = time.monotonic() - t0

    # what the checkout itself generates, greedy: every install must say the same
    from gemma4stack.model import Model
    m = Model(str(MODEL))
    expected = m.generate(PROMPT, max_tokens=N_TOKENS, temperature=0, seed=1)

    pythons = _pythons()
    work = tmp_path / "outside"          # not the checkout: nothing can be imported from it
    work.mkdir()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda p: _install_and_run(p, sdist, work), pythons))
    total = time.monotonic() - t0

    print(f"\npackaging: sdist {t_sdist:.0f} s; " + "; ".join(
        f"Python {r['python']}: install {r['install_s']:.0f} s, all {r['total_s']:.0f} s" for r in results)
        + f"; total {total:.0f} s for {len(results)} interpreters")
    for r in results:
        assert r["cores"] >= 1
        assert "site-packages" in r["where"] and str(ROOT) not in r["where"], r["where"]
        assert r["rows"] > 0
        assert r["text"].strip() and expected.strip() in r["text"].strip(), (r["python"], r["text"], expected)
        code, err = r["serve"]
        assert code == 1 and "gemma4stack[gateway]" in err, err
        # the base install: numpy (+ tomli before 3.11) and pip's own, nothing else
        extra = set(r["packages"]) - {"gemma4stack", "numpy", "pip", "setuptools", "tomli"}
        assert not extra, (r["python"], extra)
        if r["python"] != "3.10":
            assert "tomli" not in r["packages"]
