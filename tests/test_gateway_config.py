"""Gateway config: the TOML shape from the issue loads, bad configs fail naming the key."""
from __future__ import annotations

import textwrap

import pytest

from gemma4stack.gateway.cli import config_from_args
from gemma4stack.gateway.config import ConfigError, default_config, load_config, parse_config


def write(tmp_path, text: str, name: str = "gateway.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def gguf(tmp_path, models):
    """The demo GGUF, reachable as models/tiny.gguf relative to the config file."""
    (tmp_path / "models").mkdir()
    dst = tmp_path / "models" / "tiny.gguf"
    dst.symlink_to(models / "TinyStories-656K-Q8_0.gguf")
    return dst


def test_issue_example_loads(tmp_path, gguf, monkeypatch):
    monkeypatch.setenv("HEAVY_API_KEY", "upstream-secret")
    p = write(tmp_path, """
        [server]
        host = "127.0.0.1"
        port = 8080
        [auth]
        api_keys = ["sk-one"]
        [tiers.fast]
        backend = "local"
        model = "models/tiny.gguf"
        [tiers.heavy]
        backend = "openai"
        url = "http://gpu-box:8000/v1"
        model = "gemma-4-26b-a4b"
        api_key_env = "HEAVY_API_KEY"
    """)
    cfg = load_config(p)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert cfg.auth.api_keys == ["sk-one"]
    fast, heavy = cfg.tiers["fast"], cfg.tiers["heavy"]
    assert fast.is_local and fast.model == str(gguf) and fast.id == "tiny"
    assert heavy.url == "http://gpu-box:8000/v1" and heavy.id == "gemma-4-26b-a4b"
    assert heavy.api_key == "upstream-secret"
    # defaults from the issue: 30 requests/min, breaker 3 failures in 30 s, 30 s cooldown
    assert cfg.limits.requests_per_minute == 30
    assert (cfg.breaker.failures, cfg.breaker.window_s, cfg.breaker.cooldown_s) == (3, 30, 30)
    # keys never appear in a dump
    dump = repr(cfg) + str(cfg.to_dict())
    assert "sk-one" not in dump and "upstream-secret" not in dump


def test_api_keys_from_env(tmp_path, gguf, monkeypatch):
    monkeypatch.setenv("G4_KEYS", "k1, k2,")
    p = write(tmp_path, """
        [auth]
        api_keys_env = "G4_KEYS"
        [tiers.fast]
        backend = "local"
        model = "models/tiny.gguf"
    """)
    assert load_config(p).auth.api_keys == ["k1", "k2"]
    monkeypatch.delenv("G4_KEYS")
    with pytest.raises(ConfigError, match=r"\[auth\] api_keys_env names \$G4_KEYS"):
        load_config(p)


@pytest.mark.parametrize("body, match", [
    ('[tiers.x]\nbackend = "vllm"\nmodel = "m"', r"\[tiers.x\] backend must be 'local' or 'openai', got 'vllm'"),
    ('[tiers.x]\nbackend = "openai"\nmodel = "m"', r"\[tiers.x\] missing required key 'url'"),
    ('[tiers.x]\nbackend = "openai"\nmodel = "m"\nurl = "gpu:8000"', r"url must start with http"),
    ('[tiers.x]\nbackend = "openai"\nmodel = "m"\nurl = "http://h/v1"\nurll = 1', r"unknown key 'urll'"),
    ('[tiers.x]\nbackend = "openai"\nmodel = "m"\nurl = "http://h/v1"\nconnect_timeout_s = "5"',
     r"connect_timeout_s must be a number"),
    ('[tiers.x]\nbackend = "openai"\nmodel = "m"\nurl = "http://h/v1"\napi_key_env = "G4_NOPE_UNSET"',
     r"api_key_env names \$G4_NOPE_UNSET, which is not set"),
    ('[tiers.x]\nbackend = "local"\nmodel = "missing.gguf"', r"GGUF file not found"),
    ('[tiers.auto]\nbackend = "local"\nmodel = "m"', r"not 'auto'"),
    ('[server]\nport = 70000\n[tiers.x]\nbackend = "openai"\nmodel = "m"\nurl = "http://h/v1"', r"port must be in"),
    ('[limits]\nrequests_per_minute = -1', r"requests_per_minute must be >= 0"),
    ('[routing]\nmin_available_memory = 1.5', r"min_available_memory"),
    ('[breaker]\nfailures = 0', r"failures must be > 0"),
    ('[server]\nhost = "127.0.0.1"', r"no \[tiers.NAME\] table"),
    ('[tiers.x\nbackend=', r"not valid TOML"),
])
def test_bad_configs_name_the_key(tmp_path, body, match):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError, match=match) as ei:
        load_config(p)
    assert str(p) in str(ei.value)


def test_model_shortcut_and_cli_overrides(models):
    gguf = models / "TinyStories-656K-Q8_0.gguf"
    cfg = default_config(gguf)
    assert list(cfg.tiers) == ["primary"] and cfg.tiers["primary"].is_local
    assert cfg.server.host == "127.0.0.1"          # loopback by default
    import argparse
    args = argparse.Namespace(config=None, model=str(gguf), host="127.0.0.2", port=0)
    cfg = config_from_args(args)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.2", 0)


def test_json_config_same_shape(tmp_path, models):
    p = tmp_path / "g.json"
    p.write_text('{"tiers": {"fast": {"backend": "local", "model": "%s"}}}'
                 % (models / "TinyStories-656K-Q8_0.gguf"))
    cfg = load_config(p)
    assert cfg.tiers["fast"].id == "TinyStories-656K-Q8_0"
    again = parse_config(cfg.to_dict(secrets=True))          # to_dict round-trips
    assert again.tiers["fast"].to_dict() == cfg.tiers["fast"].to_dict()
    with pytest.raises(ConfigError, match="must be a table"):
        parse_config({"tiers": {"fast": 3}})


def test_readme_config_reference_parses(models, monkeypatch):
    """The TOML block in README.md's Gateway section is a valid config (with a real GGUF)."""
    import re
    import tomllib
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Gateway\n"):]
    block = re.search(r"^```toml\n(.*?)^```", section, re.S | re.M).group(1)
    block = block.replace("models/gemma-4-e2b-it-Q4_K_M.gguf",
                          str(models / "TinyStories-656K-Q8_0.gguf"))
    monkeypatch.setenv("GEMMA4STACK_API_KEYS", "k1")
    monkeypatch.setenv("HEAVY_API_KEY", "k2")
    cfg = parse_config(tomllib.loads(block), source="README.md")
    assert set(cfg.tiers) == {"fast", "heavy"} and cfg.auth.api_keys[-1] == "k1"
    # the examples of several backends per tier load as they are
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)[1:]
    pools = [parse_config(tomllib.loads(b), source="README.md",
                          base_dir=Path(__file__).resolve().parent.parent) for b in blocks]
    assert [[len(t.backends) for t in c.tiers.values() if t.pooled] for c in pools] == [[3], [3]]


def test_local_tier_draft_key(tmp_path, gguf):
    """draft = "ngram" | "model:PATH" | "PATH" (resolved like model; reaches Model(draft=...))."""
    from gemma4stack.gateway.app import load_model
    for value, want in (('"ngram"', "ngram"), ('"model:models/tiny.gguf"', f"model:{gguf}"),
                        ('"models/tiny.gguf"', f"model:{gguf}")):
        cfg = load_config(write(tmp_path, f'[tiers.x]\nbackend = "local"\nmodel = "models/tiny.gguf"\n'
                                          f'draft = {value}\n'))
        tier = cfg.tiers["x"]
        assert tier.draft == want
        assert parse_config(cfg.to_dict(secrets=True)).tiers["x"].draft == want     # round trip
    m = load_model(tier)
    try:
        assert m.draft == f"model:{gguf}" and m._draft[2]
        m.generate("Once upon a time", max_tokens=8, temperature=0)
        assert m.last_stats.draft_tokens > 0
    finally:
        m.close()
    assert load_config(write(tmp_path, '[tiers.x]\nbackend = "local"\nmodel = "models/tiny.gguf"\n')
                       ).tiers["x"].draft is None
    for bad, match in (('"model:nope.gguf"', "draft must be 'ngram', 'model:PATH' or 'mtp:PATH'"),
                       ('"mtp:nope.gguf"', "not found: .*nope.gguf"), ("3", "draft")):
        with pytest.raises(ConfigError, match=match):
            load_config(write(tmp_path, f'[tiers.x]\nbackend = "local"\nmodel = "models/tiny.gguf"\n'
                                        f'draft = {bad}\n'))
