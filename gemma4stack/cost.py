"""What a token costs on your machine, next to hosted API prices, and when hardware pays off.

    >>> import gemma4stack as g4
    >>> g4.cost(tokens_per_s=12.0)                      # a measured decode speed
    >>> g4.cost(variant="e4b", quant="q4_k_m")          # predicted by recommend() for this machine
    >>> g4.cost(machine="mac-mini-m4-24gb", hardware_price=999, electricity_per_kwh=0.30)

The arithmetic (per 1M generated tokens, all in the currency of the API price table):

    hours per 1M tokens   = 1e6 / tokens_per_s / 3600
    energy per 1M tokens  = power_watts / 1000 * hours            (kWh)
    local cost per 1M     = energy * electricity_per_kwh
    monthly local cost    = local cost per 1M * monthly_tokens / 1e6
    monthly API cost      = api output price per 1M * monthly_tokens / 1e6
    break-even (months)   = hardware_price / (monthly API cost - monthly local cost)
                            (None when the API is as cheap or cheaper: never pays off)

This is the marginal cost of the electricity spent generating; idle draw, cooling and the
machine's other uses are left out. Defaults, both to be replaced with your own numbers:

- power_watts = 120 W at the wall: our assumption for a desktop running inference on all
  cores (a 65 W-TDP CPU may draw 88 W package power under AMD's PPT = 1.35 x TDP rule, plus
  ~30 W for board, RAM, storage and PSU losses). A plug-in meter gives the real figure.
- electricity_per_kwh = 0.17 USD: the US average residential price, about 16.5 cents/kWh in
  2024 (U.S. EIA, Electric Power Monthly, table 5.6.A), rounded. European prices are often
  0.25-0.40 EUR/kWh.
- monthly_tokens = 10M generated tokens.
API prices come from data/api_prices.toml (user-editable, dated, sourced per entry).
"""
from __future__ import annotations

import html
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_PRICES = Path(__file__).resolve().parent / "data" / "api_prices.toml"

DEFAULT_POWER_WATTS = 120.0
DEFAULT_ELECTRICITY_PER_KWH = 0.17
DEFAULT_MONTHLY_TOKENS = 10_000_000
HOURS_PER_MONTH = 730.0   # 8760 h / 12

ASSUMPTIONS = [
    f"power_watts default {DEFAULT_POWER_WATTS:g} W at the wall: assumed desktop under an "
    "all-core load (65 W-TDP CPU at 88 W PPT + ~30 W platform); measure yours",
    f"electricity_per_kwh default {DEFAULT_ELECTRICITY_PER_KWH:g}: US average residential price "
    "2024, ~16.5 cents/kWh (EIA Electric Power Monthly table 5.6.A), rounded",
    "marginal electricity only: idle draw, cooling and amortization of the hardware are not in "
    "the per-token cost (the break-even months account for the hardware price)",
    "compared per 1M generated tokens at the API's output price; API input tokens cost extra",
]


# ----------------------------------------------------------------------------------------------
# Data

@dataclass
class ApiPrice:
    """One hosted model's price, per 1M tokens, from the price table."""
    provider: str
    model: str
    input_per_1m: float
    output_per_1m: float
    date: str
    source: str
    illustrative: bool

    @property
    def label(self) -> str:
        return f"{self.provider} {self.model}"


@dataclass
class LocalRun:
    """Local generation at one speed and power draw.

    tokens_per_s: decode tokens/s; tps_source: "measured" or "predicted (recommend)";
    hours_per_1m: h; kwh_per_1m: kWh; cost_per_1m: currency per 1M generated tokens;
    capacity_per_month: tokens one machine can generate in a month running 24/7.
    """
    label: str
    tokens_per_s: float
    tps_source: str
    power_watts: float
    electricity_per_kwh: float
    hours_per_1m: float
    kwh_per_1m: float
    cost_per_1m: float
    capacity_per_month: float
    variant: str | None = None
    quant: str | None = None


@dataclass
class Comparison:
    """A local run against one API at monthly_tokens generated tokens per month.

    breakeven_months: hardware_price / monthly saving, None if no hardware price was given or
    the API is cheaper; over_capacity: the monthly volume needs more hours than a month has.
    """
    local: str
    api: str
    local_cost_per_1m: float
    api_cost_per_1m: float
    monthly_local: float
    monthly_api: float
    monthly_saving: float
    breakeven_months: float | None
    local_hours_per_month: float
    over_capacity: bool
    illustrative: bool


@dataclass
class CostReport:
    """Local cost per 1M tokens vs hosted APIs. to_dict() for JSON, a table in Jupyter, plot()."""
    local: list[LocalRun]
    apis: list[ApiPrice]
    comparisons: list[Comparison]
    currency: str
    monthly_tokens: float
    hardware_price: float | None
    prices_file: str
    prices_updated: str
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))

    def to_dict(self) -> dict:
        return asdict(self)

    def comparison(self, local: str | None = None, api: str | None = None,
                   exact: bool = False) -> Comparison:
        """The Comparison for a local label and an API label (substring match, or equality
        with exact=True; the first one when None). KeyError if there is none."""
        match = (lambda want, have: want == have) if exact else (lambda want, have: want in have)
        for c in self.comparisons:
            if (local is None or match(local, c.local)) and (api is None or match(api, c.api)):
                return c
        raise KeyError(f"no comparison for local={local!r} api={api!r}")

    def _repr_html_(self) -> str:
        cur = html.escape(self.currency)
        e = html.escape
        out = [f"<b>Local generation</b> (per 1M generated tokens, {cur})",
               "<table><tr><th>local</th><th>tokens/s</th><th>from</th><th>W</th>"
               f"<th>{cur}/kWh</th><th>h / 1M</th><th>kWh / 1M</th><th>{cur} / 1M</th>"
               "<th>max tokens/month</th></tr>"]
        for r in self.local:
            out.append(f"<tr><td>{e(r.label)}</td><td>{r.tokens_per_s:.1f}</td><td>{e(r.tps_source)}"
                       f"</td><td>{r.power_watts:g}</td><td>{r.electricity_per_kwh:g}</td>"
                       f"<td>{r.hours_per_1m:.1f}</td><td>{r.kwh_per_1m:.2f}</td>"
                       f"<td><b>{r.cost_per_1m:.3f}</b></td><td>{r.capacity_per_month / 1e6:.1f}M"
                       "</td></tr>")
        out.append("</table>")
        hw = (f", hardware {self.hardware_price:g} {cur}" if self.hardware_price else
              " (pass hardware_price= for break-even months)")
        what = "break-even months (saving per month)" if self.hardware_price else \
            f"saving per month ({cur})"
        out.append(f"<b>Against hosted APIs</b>: {what} at {self.monthly_tokens / 1e6:g}M "
                   f"generated tokens/month{hw}")
        out.append("<table><tr><th>local \\ API</th>" + "".join(
            f"<th>{e(a.label)}{' *' if a.illustrative else ''}<br>{a.output_per_1m:g} / 1M</th>"
            for a in self.apis) + "</tr>")
        for r in self.local:
            cells = []
            for a in self.apis:
                c = self.comparison(r.label, a.label, exact=True)
                txt = e(_cell(c, bool(self.hardware_price)))
                same = _same_model(r, a)
                cells.append(f"<td>{'<b>' + txt + '</b>' if same else txt}</td>")
            out.append(f"<tr><td>{e(r.label)}</td>{''.join(cells)}</tr>")
        out.append("</table>")
        out.append(f"<small>API prices: {e(self.prices_file)} (updated {e(self.prices_updated)}); "
                   "* = illustrative (single third-party source); bold = the same Gemma model "
                   "hosted; !cap = one machine cannot generate that much in a month. "
                   + "; ".join(e(a) for a in self.assumptions) + ".</small>")
        return "\n".join(out)

    def __str__(self) -> str:
        cur = self.currency
        lines = [f"{'local':24s} {'tok/s':>7s} {'W':>5s} {cur + '/1M':>9s}  from"]
        for r in self.local:
            lines.append(f"{r.label:24s} {r.tokens_per_s:7.1f} {r.power_watts:5.0f} "
                         f"{r.cost_per_1m:9.3f}  {r.tps_source}")
        what = "break-even months" if self.hardware_price else f"saving {cur}/month"
        lines += ["", f"vs hosted APIs ({what}, {self.monthly_tokens / 1e6:g}M tokens/month"
                  + (f", hardware {self.hardware_price:g} {cur})" if self.hardware_price else ")")]
        for a in self.apis:
            row = f"  {a.label[:38]:38s} {a.output_per_1m:6.3f}/1M{' *' if a.illustrative else '  '}"
            cells = [_cell(self.comparison(r.label, a.label, exact=True),
                           bool(self.hardware_price)) for r in self.local[:6]]
            lines.append(row + " " + " | ".join(f"{c:>14s}" for c in cells))
        if len(self.local) > 1:
            lines.append("  columns: " + ", ".join(r.label for r in self.local[:6])
                         + (" (first 6)" if len(self.local) > 6 else ""))
        legend = []
        if any(a.illustrative for a in self.apis):
            legend.append("* = illustrative price (a single third-party source)")
        if any(c.over_capacity for c in self.comparisons):
            legend.append("!cap = one machine cannot generate that many tokens in a month")
        if legend:
            lines.append("  " + "; ".join(legend))
        lines.append(f"  API prices: {self.prices_file} (updated {self.prices_updated})")
        if self.local:     # the inputs that change the local figures most
            r = self.local[0]
            lines.append(f"  assumed: {r.power_watts:g} W at the wall while generating, "
                         f"{r.electricity_per_kwh:g} {cur}/kWh (pass power_watts=, "
                         "electricity_per_kwh=)")
        lines += [f"  note: {a}" for a in self.assumptions if a.startswith("power_watts was not")]
        return "\n".join(lines)

    def plot(self, months: int | None = None):
        """A matplotlib Figure: cost per 1M tokens (local vs APIs) and, with a hardware price,
        cumulative cost over months with the break-even points. Returns the Figure."""
        import matplotlib.pyplot as plt

        two = bool(self.hardware_price) and bool(self.local)
        fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 7, 4.2),
                                 squeeze=False)
        ax = axes[0][0]
        labels = [r.label for r in self.local] + [a.label for a in self.apis]
        values = [r.cost_per_1m for r in self.local] + [a.output_per_1m for a in self.apis]
        colors = ["tab:green"] * len(self.local) + [
            "tab:gray" if a.illustrative else "tab:blue" for a in self.apis]
        y = range(len(labels))
        ax.barh(list(y), values, color=colors)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{self.currency} per 1M generated tokens")
        ax.set_title("local electricity (green) vs API output price (gray: illustrative)",
                     fontsize=9)
        if two:
            ax2 = axes[0][1]
            best = self.local[0]
            monthly_local = best.cost_per_1m * self.monthly_tokens / 1e6
            be = [c.breakeven_months for c in self.comparisons
                  if c.local == best.label and c.breakeven_months]
            horizon = months or int(min(max(be) * 1.3 if be else 36, 120)) or 12
            m = list(range(0, horizon + 1))
            ax2.plot(m, [self.hardware_price + monthly_local * i for i in m], color="tab:green",
                     lw=2, label=f"local: {self.hardware_price:g} + electricity")
            for c in self.comparisons:
                if c.local != best.label:
                    continue
                ax2.plot(m, [c.monthly_api * i for i in m], lw=1, label=c.api)
                if c.breakeven_months and c.breakeven_months <= horizon:
                    ax2.plot([c.breakeven_months], [c.monthly_api * c.breakeven_months], "ko",
                             ms=4)
            ax2.set_xlabel("months")
            ax2.set_ylabel(f"cumulative {self.currency}")
            ax2.set_title(f"{best.label} at {self.monthly_tokens / 1e6:g}M tokens/month",
                          fontsize=9)
            ax2.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _cell(c: Comparison, with_hw: bool) -> str:
    if c.monthly_saving <= 0:
        s = "never" if with_hw else f"{c.monthly_saving:.2f}"
    elif with_hw and c.breakeven_months is not None:
        s = f"{c.breakeven_months:.1f} ({c.monthly_saving:.2f})"
    else:
        s = f"{c.monthly_saving:.2f}"
    return s + (" !cap" if c.over_capacity else "")


def _same_model(r: LocalRun, a: ApiPrice) -> bool:
    """The API serves the same Gemma 4 variant as the local run (by name, e.g. 'e2b', '31b')."""
    if not r.variant:
        return False
    m = a.model.lower().replace("_", "-")
    return "gemma-4" in m and f"-{r.variant.lower()}" in m


# ----------------------------------------------------------------------------------------------
# Price table

def load_prices(path: str | Path | None = None) -> tuple[list[ApiPrice], str, str, str]:
    """Read an API price TOML. Returns (prices, currency, updated, path).

    Path: argument, else $GEMMA4STACK_API_PRICES, else the packaged data/api_prices.toml.
    Raises ValueError naming the entry and field when one is malformed.
    """
    p = Path(path or os.environ.get("GEMMA4STACK_API_PRICES") or _PRICES)
    with open(p, "rb") as f:
        data = tomllib.load(f)
    prices = []
    for i, a in enumerate(data.get("api", [])):
        try:
            prices.append(ApiPrice(provider=str(a["provider"]), model=str(a["model"]),
                                   input_per_1m=float(a.get("input_per_1m", 0.0)),
                                   output_per_1m=float(a["output_per_1m"]),
                                   date=str(a.get("date", data.get("updated", "?"))),
                                   source=str(a.get("source", "")),
                                   illustrative=bool(a.get("illustrative", True))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{p}: [[api]] entry {i + 1}: missing or bad field {e}") from e
    return prices, str(data.get("currency", "USD")), str(data.get("updated", "?")), str(p)


# ----------------------------------------------------------------------------------------------
# Arithmetic

def local_run(tokens_per_s: float, power_watts: float, electricity_per_kwh: float,
              label: str = "local", tps_source: str = "measured",
              variant: str | None = None, quant: str | None = None) -> LocalRun:
    """Cost of generating 1M tokens at tokens_per_s drawing power_watts. Raises ValueError
    for a non-positive speed or a negative power/price."""
    if not tokens_per_s or tokens_per_s <= 0:
        raise ValueError(f"tokens_per_s must be > 0, got {tokens_per_s!r}")
    if power_watts < 0 or electricity_per_kwh < 0:
        raise ValueError("power_watts and electricity_per_kwh must be >= 0")
    hours = 1e6 / tokens_per_s / 3600.0
    kwh = power_watts / 1000.0 * hours
    return LocalRun(label=label, tokens_per_s=float(tokens_per_s), tps_source=tps_source,
                    power_watts=float(power_watts), electricity_per_kwh=float(electricity_per_kwh),
                    hours_per_1m=hours, kwh_per_1m=kwh, cost_per_1m=kwh * electricity_per_kwh,
                    capacity_per_month=tokens_per_s * HOURS_PER_MONTH * 3600.0,
                    variant=variant, quant=quant)


def breakeven_months(hardware_price: float, monthly_api: float, monthly_local: float) -> float | None:
    """Months until hardware_price is recovered by the monthly saving; None if it never is."""
    saving = monthly_api - monthly_local
    if saving <= 0:
        return None
    return hardware_price / saving


def compare(run: LocalRun, api: ApiPrice, monthly_tokens: float,
            hardware_price: float | None) -> Comparison:
    monthly_local = run.cost_per_1m * monthly_tokens / 1e6
    monthly_api = api.output_per_1m * monthly_tokens / 1e6
    hours = monthly_tokens / run.tokens_per_s / 3600.0
    return Comparison(local=run.label, api=api.label, local_cost_per_1m=run.cost_per_1m,
                      api_cost_per_1m=api.output_per_1m, monthly_local=monthly_local,
                      monthly_api=monthly_api, monthly_saving=monthly_api - monthly_local,
                      breakeven_months=(breakeven_months(hardware_price, monthly_api, monthly_local)
                                        if hardware_price else None),
                      local_hours_per_month=hours, over_capacity=hours > HOURS_PER_MONTH,
                      illustrative=api.illustrative)


# ----------------------------------------------------------------------------------------------
# The report

def _get(row: Any, key: str):
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


def _check_modelled(variant: str | None, quant: str | None) -> None:
    """ValueError when variant / quant is not in the recommend() catalog (data/gemma4_catalog.toml),
    rather than a misleading "nothing that fits" later."""
    from gemma4stack.recommend import quants, variants
    if variant is not None:
        names = {v.name.lower() for v in variants()} | {v.key.lower() for v in variants()}
        if variant.lower() not in names:
            raise ValueError(f"variant {variant!r} is not modelled; known: "
                             + ", ".join(v.key for v in variants()))
    if quant is not None and quant.lower() not in {q.name.lower() for q in quants()}:
        raise ValueError(f"quant {quant!r} is not modelled by recommend() (known: "
                         + ", ".join(q.name for q in quants())
                         + "); for another quantization, measure it (gemma4stack bench) and "
                         "pass tokens_per_s=")


def _predicted(variant, quant, machine, report, context) -> list[LocalRun]:
    """(label, tokens/s) rows from recommend(); only rows that fit and have a prediction."""
    from gemma4stack.recommend import recommend
    _check_modelled(variant, quant)
    rec = recommend(report=report, context=context, machine=machine)
    rows = []
    for r in rec.rows:
        v, q, tps = _get(r, "variant"), _get(r, "quant"), _get(r, "predicted_decode_tps")
        if variant and str(v).lower() != variant.lower():
            continue
        if quant and str(q).lower() != quant.lower():
            continue
        if not _get(r, "fits") or not tps:
            continue
        rows.append((str(v), str(q), float(tps)))
    best = getattr(rec, "best", None)
    if best is not None:   # the recommended tier first: plot() features the first row
        key = (str(_get(best, "variant")), str(_get(best, "quant")))
        rows.sort(key=lambda r: (r[0], r[1]) != key)
    if not rows:
        where = f" on {machine}" if machine else ""
        fitting = [r for r in rec.rows if r.fits
                   and (not variant or r.variant.lower() == variant.lower())
                   and (not quant or r.quant.lower() == quant.lower())]
        why = ("it fits, but no bandwidth is known there, so no speed is predicted"
               if fitting else "nothing that matches fits in memory")
        raise ValueError(f"recommend() predicts no speed for variant={variant!r} quant={quant!r}"
                         f"{where} ({why}); pass tokens_per_s= with a measured speed")
    return rows


def cost(tokens_per_s: float | None = None, variant: str | None = None,
         quant: str | None = None, machine: str | None = None,
         power_watts: float | None = None,
         electricity_per_kwh: float = DEFAULT_ELECTRICITY_PER_KWH,
         hardware_price: float | None = None,
         monthly_tokens: float = DEFAULT_MONTHLY_TOKENS,
         prices: str | Path | list[ApiPrice] | None = None,
         context: int = 8192, report=None, label: str | None = None) -> CostReport:
    """Local cost per 1M generated tokens against hosted API prices.

    tokens_per_s: measured decode speed (tokens/s). Without it, speeds are predicted by
    recommend(report, context, machine) for every fitting variant x quant, filtered by
    variant / quant when given. power_watts: wall draw while generating (W; default 120).
    electricity_per_kwh: price per kWh in the price table's currency (default 0.17 USD).
    hardware_price: for break-even months. monthly_tokens: generated tokens per month.
    prices: a TOML path or a list of ApiPrice (default data/api_prices.toml or
    $GEMMA4STACK_API_PRICES).

    Returns a CostReport. Raises ValueError for a non-positive speed or when no prediction
    exists for the requested variant/quant.
    """
    watts = DEFAULT_POWER_WATTS if power_watts is None else float(power_watts)
    if isinstance(prices, list):
        apis, currency, updated, pfile = prices, "USD", "?", "(given)"
    else:
        apis, currency, updated, pfile = load_prices(prices)

    if tokens_per_s is not None:
        name = label or ("measured" + (f" {variant}" if variant else "")
                         + (f" {quant}" if quant else ""))
        runs = [local_run(tokens_per_s, watts, electricity_per_kwh, label=name,
                          variant=variant, quant=quant)]
    else:
        src = "predicted" + (f" for {machine}" if machine else "")
        runs = [local_run(tps, watts, electricity_per_kwh, label=f"{v} {q}", tps_source=src,
                          variant=v, quant=q)
                for v, q, tps in _predicted(variant, quant, machine, report, context)]

    comps = [compare(r, a, monthly_tokens, hardware_price) for r in runs for a in apis]
    notes = list(ASSUMPTIONS)
    if machine and power_watts is None:
        notes.insert(0, f"power_watts was not given for {machine}: the {DEFAULT_POWER_WATTS:g} W "
                        "desktop default was used; set the machine's wall draw under load")
    return CostReport(local=runs, apis=list(apis), comparisons=comps, currency=currency,
                      monthly_tokens=float(monthly_tokens), hardware_price=hardware_price,
                      prices_file=pfile, prices_updated=updated, assumptions=notes)


# g4.cost(...) works even after `import gemma4stack.cost` (see _callable.py)
from gemma4stack._callable import make_callable  # noqa: E402

make_callable(__name__)
