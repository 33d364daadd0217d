"""gemma4stack.cost: the arithmetic against hand-computed figures, and the price table."""
from __future__ import annotations

import importlib
import json

import pytest

C = importlib.import_module("gemma4stack.cost")   # the module (gemma4stack.cost is the function)


def test_cost_per_million_tokens_by_hand():
    # 100 W, 10 tokens/s, 0.20 per kWh:
    #   1e6 tokens take 1e5 s = 27.777... h; 0.1 kW * 27.777 h = 2.7777 kWh; * 0.20 = 0.5555...
    r = C.cost(tokens_per_s=10, power_watts=100, electricity_per_kwh=0.20, prices=[])
    run = r.local[0]
    assert run.hours_per_1m == pytest.approx(27.7777778)
    assert run.kwh_per_1m == pytest.approx(2.7777778)
    assert run.cost_per_1m == pytest.approx(0.5555556)
    # one month of 24/7 generation at 10 tok/s: 10 * 730 h * 3600 s = 26.28M tokens
    assert run.capacity_per_month == pytest.approx(26.28e6)


def test_breakeven_months_by_hand():
    api = C.ApiPrice("Acme", "big-model", 1.0, 2.0, "2026-01-01", "test", False)
    r = C.cost(tokens_per_s=10, power_watts=100, electricity_per_kwh=0.20, prices=[api],
               hardware_price=1000, monthly_tokens=10e6)
    c = r.comparisons[0]
    # API: 2.00 * 10 = 20.00 / month; local: 0.5556 * 10 = 5.556 / month; saving 14.444
    assert c.monthly_api == pytest.approx(20.0)
    assert c.monthly_local == pytest.approx(5.5555556)
    assert c.monthly_saving == pytest.approx(14.4444444)
    assert c.breakeven_months == pytest.approx(1000 / 14.4444444)   # 69.23 months
    assert c.local_hours_per_month == pytest.approx(277.777778) and not c.over_capacity


def test_api_cheaper_than_electricity_never_breaks_even():
    cheap = C.ApiPrice("Acme", "tiny", 0.01, 0.05, "2026-01-01", "test", True)
    r = C.cost(tokens_per_s=2, power_watts=200, electricity_per_kwh=0.30, prices=[cheap],
               hardware_price=500, monthly_tokens=50e6)
    c = r.comparisons[0]
    assert c.monthly_saving < 0 and c.breakeven_months is None
    # 50M tokens at 2 tok/s need 6944 h, more than a month has
    assert c.over_capacity
    assert "never" in r._repr_html_()


def test_user_edited_price_table_is_honored(tmp_path, monkeypatch):
    p = tmp_path / "prices.toml"
    p.write_text('currency = "EUR"\nupdated = "2030-01-01"\n'
                 '[[api]]\nprovider = "MyCloud"\nmodel = "m1"\ninput_per_1m = 0.5\n'
                 'output_per_1m = 3.0\ndate = "2030-01-01"\nsource = "my invoice"\n'
                 'illustrative = false\n')
    r = C.cost(tokens_per_s=20, power_watts=50, electricity_per_kwh=0.35, prices=p)
    assert r.currency == "EUR" and [a.label for a in r.apis] == ["MyCloud m1"]
    assert r.comparisons[0].api_cost_per_1m == 3.0
    # the environment variable points cost() at the same file
    monkeypatch.setenv("GEMMA4STACK_API_PRICES", str(p))
    assert [a.model for a in C.cost(tokens_per_s=20).apis] == ["m1"]
    # a malformed entry names itself
    p.write_text('[[api]]\nprovider = "x"\nmodel = "y"\n')
    with pytest.raises(ValueError, match="entry 1.*output_per_1m"):
        C.load_prices(p)


def test_shipped_price_table_has_date_and_source_for_every_entry():
    apis, currency, updated, _ = C.load_prices()
    assert currency == "USD" and updated
    assert len(apis) >= 5
    for a in apis:
        assert a.date and a.source and a.output_per_1m > 0, a


def test_report_serializes_renders_and_plots():
    import matplotlib
    matplotlib.use("Agg")
    r = C.cost(tokens_per_s=15, hardware_price=800)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["local"][0]["tokens_per_s"] == 15 and len(d["comparisons"]) == len(r.apis)
    assert "<table>" in r._repr_html_() and "break-even" in r._repr_html_()
    fig = r.plot()
    assert len(fig.axes) == 2
    assert "gpt-4o-mini" in str(r)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="tokens_per_s"):
        C.cost(tokens_per_s=0, prices=[])
    with pytest.raises(ValueError):
        C.local_run(10, -1, 0.2)


def test_predicted_speed_comes_from_recommend_for_a_machine():
    from gemma4stack.recommend import recommend
    row = recommend(machine="mac-mini-m4-16gb").row("e2b", "q4_k_m")
    r = C.cost(variant="e2b", quant="q4_k_m", machine="mac-mini-m4-16gb", power_watts=40,
               electricity_per_kwh=0.30)
    assert len(r.local) == 1
    run = r.local[0]
    assert run.tokens_per_s == pytest.approx(row.predicted_decode_tps)
    assert run.cost_per_1m == pytest.approx(40 / 1000 * 1e6 / row.predicted_decode_tps / 3600 * 0.30)
    assert run.tps_source.startswith("predicted")
    # the same Gemma model hosted is marked in the table
    assert "<b>" in r._repr_html_().split("Against hosted APIs")[1]
    # 31B does not fit in 16 GB: there is nothing to predict, and the error says what to do
    with pytest.raises(ValueError, match="tokens_per_s="):
        C.cost(variant="31b", machine="mac-mini-m4-16gb")
    # without power_watts the report says the desktop default was used for that machine
    r = C.cost(variant="e2b", quant="q4_0", machine="mac-mini-m4-16gb")
    assert "mac-mini-m4-16gb" in r.assumptions[0]
