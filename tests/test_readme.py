"""README.md's examples, run as written, so the README cannot drift from the code.

Every fenced block in README.md carries a language. `python` blocks run as scripts, each in a
fresh interpreter in a temporary directory; `sh` blocks run command by command (a command is a
line plus its `\\` continuation lines) with bash from the repository root; both against the
shared test models, with this checkout first on PYTHONPATH. Commands in SKIP do not run, each
for the reason it gives. The first `toml` block is the gateway config, loaded by the tests at
the end (the others, several backends per tier, by test_gateway_config.py); `text` blocks are not code. The "Command line" table is checked against the parsers.
Runtime: about 30 s on 2 busy cores, most of it three gateway start-ups and the bench command.

The only changes made to an example before it runs (SUBSTITUTIONS, plus these):
- `g4.pull(...)` downloads from a loopback stand-in for the Hugging Face Hub (tests/test_pull.py's
  FakeHub, via $HF_ENDPOINT, into a temporary $HF_HUB_CACHE) that serves the TinyStories GGUF
  under Gemma 4 E2B's file name, so the rest of the quick tour runs on that model;
- `gemma4stack serve ...` gets `--port` of a free loopback port appended, runs until GET /health
  answers 200, and is stopped with SIGTERM; `serve --config gateway.toml` runs in a folder
  holding the README's TOML block as gateway.toml, with the GGUF it names linked to TinyStories
  and the two API-key variables it names set.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TINY = "TinyStories-656K-Q8_0.gguf"

LANGUAGES = {"python", "sh", "toml", "text"}

# command prefix -> why it does not run here. Keep it short: each entry is a README example
# that no test exercises as written.
SKIP = {
    "apt-get install": "installs Debian packages (root); `make test` installs the same ones",
    "python3 -m venv": "makes a virtual environment: tests/test_packaging.py (`make "
                       "test-packaging`) installs the sdist into fresh ones",
    "pip install": "would install into the environment running these tests; "
                   "tests/test_packaging.py installs the sdist into fresh virtual environments",
    "make demo": "sets the machine up (apt-get, `pip install -e .`); CI's `make test` runs the "
                 "same setup, and `gemma4stack quickstart` is tested in test_quickstart.py",
    "make test": "is the CI run itself",
    "make fuzz FUZZ_SECONDS": "fuzzes for 30 minutes per harness",
    "make fuzz-smoke": "a step of `make test` (minutes of fuzzing)",
    "make test-asan": "a step of `make test` (the whole suite again under ASan)",
    "python -m pytest": "runs other files of this test suite, which CI runs anyway",
    "gemma4stack synth --variant e2b": "writes a 3 GB full-size random-weight model",
    "gemma4stack synth --arch llama": "writes a 0.7 GB full-size random-weight model",
    "CMAKE_ARGS=": "needs the network and builds llama.cpp (minutes)",
    "python benchmarks/compare_llamacpp.py": "needs llama-cpp-python (the command before) and "
                                             "minutes of both cores",
    "chrt -r 10 python benchmarks/bench_gateway.py": "a benchmark: 20 s x 4 rounds at real-time "
                                                     "priority (needs root)",
    "make tests/c/build/libg4.a": "builds the C library: part of `make test-c` in CI",
    "cc -O2 -Icsrc benchmarks/matmul_stream.c": "needs the C library of the command before",
    "/tmp/matmul_stream": "a benchmark of the binary built by the command before",
}

# (pattern, replacement, languages, why): applied to the examples before they run.
SUBSTITUTIONS = [
    (r"(?<![\w/.-])model\.gguf", "{tiny}", ("python", "sh"),
     "a GGUF path: the shared TinyStories test model"),
    (r"\.\./shared/", "{shared}/", ("sh",),
     "../shared is the shared data, which $GEMMA4STACK_SHARED may move (Python's "
     "detect(topology_xml=) follows it by itself)"),
    (r"notebooks/NAME\.ipynb", "{notebook}", ("sh",),
     "a notebook: a copy of one, with outputs added"),
]


@dataclass
class Block:
    lang: str
    text: str
    line: int          # 1-based line of the opening fence
    heading: str       # the nearest heading above

    @property
    def name(self) -> str:
        return f"L{self.line}-{self.lang}-{re.sub(r'[^a-z0-9]+', '-', self.heading.lower()).strip('-')}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced blocks of README.md (CommonMark: a fence is ``` at the start of a line; a
    ``` inside a line, as in the config's code_markers, does not close the block)."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            heading = ln.lstrip("#").strip()
        if ln.startswith("```"):
            lang, start, body = ln[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(lang, "\n".join(body) + "\n", start, heading))
        i += 1
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The commands of an sh block: non-comment lines joined with their continuation lines."""
    cmds, cur = [], ""
    for ln in block.text.splitlines():
        if not cur and (not ln.strip() or ln.lstrip().startswith("#")):
            continue
        cur += ln[:-1] + " " if ln.endswith("\\") else ln
        if not ln.endswith("\\"):
            cmds.append(cur.strip())
            cur = ""
    return cmds


def _matches(cmd: str, prefix: str) -> bool:
    """cmd starts with prefix as whole words ("make test" is not "make test-asan")."""
    return cmd.startswith(prefix) and (len(cmd) == len(prefix) or not prefix[-1].isalnum()
                                       or not (cmd[len(prefix)].isalnum() or cmd[len(prefix)] in "-_/."))


def skip_reason(cmd: str) -> str | None:
    return next((why for prefix, why in SKIP.items() if _matches(cmd, prefix)), None)


BLOCKS = readme_blocks()
PY_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
SH_COMMANDS = [(b, c) for b in BLOCKS if b.lang == "sh" for c in shell_commands(b)]
TOML_BLOCKS = [b for b in BLOCKS if b.lang == "toml"]


# ---------------------------------------------------------------------------- the collector

def test_every_block_has_a_known_language():
    bad = [(b.line, b.lang) for b in BLOCKS if b.lang not in LANGUAGES]
    assert not bad, f"fenced blocks without a language in {sorted(LANGUAGES)}: {bad}"
    assert PY_BLOCKS and SH_COMMANDS and TOML_BLOCKS   # [0]: the reference config


def test_skip_list_is_short_and_current():
    """Every skip entry still names a README command, and most commands run."""
    cmds = [c for _, c in SH_COMMANDS]
    stale = [p for p in SKIP if not any(_matches(c, p) for c in cmds)]
    assert not stale, f"SKIP entries that match no README command: {stale}"
    ran = [c for c in cmds if skip_reason(c) is None]
    assert len(ran) >= 4, ran


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared, models):
    """The environment examples run in: this checkout first on the path, the shared data, an
    empty HF cache, and a loopback Hub serving TinyStories as gemma-4-E2B-it-Q4_K_M.gguf."""
    from test_pull import FakeHub
    payload = (models / TINY).read_bytes()
    hub = FakeHub({"ggml-org/gemma-4-E2B-it-GGUF": {"gemma-4-E2B-it-Q4_K_M.gguf": payload}})
    tmp = tmp_path_factory.mktemp("readme")
    e = dict(os.environ)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        e.pop(k, None)
    e.update(PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [e.get("PYTHONPATH")] if p]),
             GEMMA4STACK_SHARED=str(shared), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp / "hub"),
             HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    # the `python` and `gemma4stack` of the examples: this interpreter and this checkout
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    g4 = bindir / "gemma4stack"
    g4.write_text(f"#!/bin/sh\nexec {sys.executable} -m gemma4stack \"$@\"\n")
    g4.chmod(0o755)
    e["PATH"] = f"{bindir}{os.pathsep}{e.get('PATH', '')}"
    yield {"env": e, "tmp": tmp, "shared": shared, "tiny": models / TINY}
    hub.close()


def substitute(code: str, lang: str, ctx: dict, notebook: Path | None = None) -> str:
    vals = {"tiny": str(ctx["tiny"]), "shared": str(ctx["shared"]), "notebook": str(notebook)}
    for pat, rep, langs, _why in SUBSTITUTIONS:
        if lang in langs:
            code = re.sub(pat, lambda m: rep.format(**vals), code)
    return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: str, ctx: dict, cwd: Path) -> None:
    """Run a `gemma4stack serve` command until /health answers 200, then stop it."""
    import httpx
    port = _free_port()
    cmd = re.sub(r"\s+#.*$", "", cmd)      # the trailing comment, which would swallow --port
    p = subprocess.Popen(["bash", "-c", f"exec {cmd} --port {port}"], cwd=cwd, env=ctx["env"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, last = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            assert p.poll() is None, f"{cmd} exited {p.returncode}:\n{p.stdout.read()}"
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if r.status_code == 200:
                    return
                last = r.status_code
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.1)
        pytest.fail(f"{cmd}: /health not 200 within 60 s ({last})")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _gateway_dir(ctx: dict) -> Path:
    """A folder holding the README's TOML block as gateway.toml and the GGUF it names."""
    d = ctx["tmp"] / "gateway"
    if not d.exists():
        (d / "models").mkdir(parents=True)
        (d / "models" / "gemma-4-e2b-it-Q4_K_M.gguf").symlink_to(ctx["tiny"])
        (d / "gateway.toml").write_text(TOML_BLOCKS[0].text)
    return d


def _run(args: list[str], ctx: dict, cwd: Path, what: str) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=ctx["env"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{what} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.name for b in PY_BLOCKS])
def test_python_example_runs(block, env, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(substitute(block.text, "python", env))
    # from another directory: relative paths in the examples must not depend on the cwd
    p = _run([sys.executable, str(script)], env, tmp_path, f"README.md line {block.line}")
    if "g4.pull(" in block.text:        # the quick tour went through the (fake) Hub
        assert list((env["tmp"] / "hub").glob("models--ggml-org--gemma-4-E2B-it-GGUF/snapshots/*/"
                                              "gemma-4-E2B-it-Q4_K_M.gguf"))
    if "_routing" in block.text:        # the gateway example printed its routing
        assert "'tier': 'primary'" in p.stdout


@pytest.mark.parametrize("block,cmd", SH_COMMANDS,
                         ids=[f"{b.name}:{c[:40]}" for b, c in SH_COMMANDS])
def test_shell_example_runs(block, cmd, env, tmp_path):
    why = skip_reason(cmd)
    if why:
        pytest.skip(why)
    notebook = None
    if "notebooks/NAME.ipynb" in cmd:     # the output-stripping command, on a copy with output
        nbformat = pytest.importorskip("nbformat")
        nb = nbformat.read(REPO / "notebooks" / "gemma4_local_inference.ipynb", 4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        code[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="out\n")]
        code[0].execution_count = 1
        notebook = tmp_path / "NAME.ipynb"
        nbformat.write(nb, notebook)
    run = substitute(cmd, "sh", env, notebook)
    if cmd.startswith("gemma4stack serve"):
        cwd = _gateway_dir(env) if "--config gateway.toml" in cmd else REPO
        env["env"].setdefault("GEMMA4STACK_API_KEYS", "readme-test-key-1")
        env["env"].setdefault("HEAVY_API_KEY", "readme-test-key-2")
        _serve(run, env, cwd)
        return
    _run(["bash", "-euo", "pipefail", "-c", run], env, REPO, cmd)
    if notebook is not None:
        nb = nbformat.read(notebook, 4)
        assert all(c.outputs == [] and c.execution_count is None
                   for c in nb.cells if c.cell_type == "code")


# ------------------------------------------------------------------ the gateway's TOML block

def _load(text: str, ctx: dict, monkeypatch, keys: str = "readme-test-key-1"):
    from gemma4stack.gateway.config import load_config
    d = _gateway_dir(ctx)
    p = d / "variant.toml"
    p.write_text(text)
    monkeypatch.setenv("GEMMA4STACK_API_KEYS", keys)
    monkeypatch.setenv("HEAVY_API_KEY", "readme-test-key-2")
    return load_config(p)


def test_gateway_toml_block_loads_as_written(env, monkeypatch):
    """The block is a working config without edits: its markers are the real defaults and it
    holds no API key of its own (keys come from the variable it names)."""
    from gemma4stack.gateway.config import RoutingConfig, _placeholder
    cfg = _load(TOML_BLOCKS[0].text, env, monkeypatch)
    assert set(cfg.tiers) == {"fast", "heavy"}
    assert Path(cfg.tiers["fast"].model).resolve() == env["tiny"].resolve()
    assert cfg.auth.api_keys == ["readme-test-key-1"]
    d = RoutingConfig()
    assert cfg.routing.code_markers == d.code_markers
    assert cfg.routing.reasoning_markers == d.reasoning_markers
    assert not any(_placeholder(s) for s in cfg.routing.code_markers + cfg.routing.reasoning_markers)


@pytest.mark.parametrize("old,new,error", [
    ("api_keys = []", 'api_keys = ["sk-..."]', r"\[auth\] api_keys holds a placeholder key"),
    ("api_keys = []", 'api_keys = ["<your key>"]', r"placeholder key"),
    ("api_keys = []", 'api_keys = ["changeme"]', r"placeholder key"),
    ('"regex"]', '"regex", "..."]', r"\[routing\] code_markers contains '\.\.\.'"),
    ('"why is"]', '"why is", "\u2026"]', r"reasoning_markers contains"),
    ("heavy_keywords = []", 'heavy_keywords = [""]', r"heavy_keywords contains '', which matches every prompt"),
])
def test_placeholders_in_the_block_are_refused(env, monkeypatch, old, new, error):
    from gemma4stack.gateway.config import ConfigError
    text = TOML_BLOCKS[0].text
    assert text.count(old) == 1
    with pytest.raises(ConfigError, match=error):
        _load(text.replace(old, new), env, monkeypatch)


def test_placeholder_key_from_the_environment_is_refused(env, monkeypatch):
    from gemma4stack.gateway.config import ConfigError
    with pytest.raises(ConfigError, match=r"\$GEMMA4STACK_API_KEYS holds a placeholder key"):
        _load(TOML_BLOCKS[0].text, env, monkeypatch, keys="real-key-1,sk-...")
    monkeypatch.setenv("GEMMA4STACK_API_KEYS", "real-key-1")
    monkeypatch.setenv("HEAVY_API_KEY", "<upstream key>")
    from gemma4stack.gateway.config import load_config
    with pytest.raises(ConfigError, match=r"\[tiers\.heavy\] \$HEAVY_API_KEY holds a placeholder"):
        load_config(_gateway_dir(env) / "gateway.toml")


# ------------------------------------------------------------------ the command-line table

def test_command_table_names_real_commands_and_options():
    """Every `gemma4stack COMMAND ...` row of the "Command line" table names a subcommand that
    exists and only options its parser accepts."""
    from gemma4stack.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `gemma4stack (\w+)([^`]*)` \|", section, re.M)
    assert len(rows) >= 9
    for name, synopsis in rows:
        assert name in sub.choices, f"README names `gemma4stack {name}`, which does not exist"
        known = {s for a in sub.choices[name]._actions for s in a.option_strings}
        flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", synopsis))
        assert flags <= known, f"gemma4stack {name}: README options {sorted(flags - known)} unknown"
