"""Leaderboard sections: runs grouped into comparable tables, one per dataset and sample-metric
protocol, with their cells formatted by kind.

The metric columns, their titles, order and ranking direction come from the metrics' own
declarations (:class:`~genbench.eval.metric.MetricSpec`, registered beside the stage that writes
each metric); this module adds only the run's own fields around them. FID / IS / KID / precision /
recall computed with another extractor, sample count or reference split are never ranked
together. Bounds print as ``≤ 1.23``, exact values plain, stochastic estimates as ``≈ 1.23``; a
model without a likelihood shows ``n/a``; a missing value is ``–``, never 0. Published results
(``references.yaml``) are listed under the runs of their dataset, apart, and never ranked with
them; so are the floor rows of :mod:`~genbench.leaderboard.floor_rows` (``data``, ``uniform``).
Cells are :mod:`~genbench.leaderboard.cells`; intervals and the tie marks (every entry within the
95 % interval of its column's best) come from :mod:`~genbench.leaderboard.ties`. The renderers
are in :mod:`genbench.leaderboard.report`, :mod:`~genbench.leaderboard.html` and
:mod:`~genbench.leaderboard.plots`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from genbench.errors import ConfigError
from genbench.eval.metric import MetricSpec
from genbench.eval.registry import metric_spec, metric_specs
from genbench.leaderboard.cells import Cell, Row
from genbench.leaderboard.cells import fmt_number as fmt_number  # re-exported
from genbench.leaderboard.floor_rows import floor_note, is_floor, levels_of, uniform_run
from genbench.leaderboard.nll_settings import split_by_nll_settings
from genbench.leaderboard.references import reference_notes
from genbench.leaderboard.ties import TIE_NOTE, t_interval, tied_for_first

Run = dict[str, Any]
#: (column title, run field) before and after the metric columns
RUN_HEAD = (("model", "model"), ("family", "family"), ("likelihood", "likelihood"))
RUN_TAIL = (
    ("params", "params"),
    ("steps", "steps"),
    ("train s", "train_seconds"),
    ("device", "device"),
    ("status", "status"),
)
TEXT_FIELDS = ("model", "family", "likelihood", "device", "status")
RUN_NUMBERS = ("params", "steps", "train_seconds")  # run fields; rank smaller first
RUN_INTEGERS = frozenset({"params", "steps"})
#: protocol fields that must agree for two sample-quality numbers to be ranked together (the
#: sampler, seed, batch size and device may differ: they belong to the run, not the metric)
PROTOCOL_FIELDS = (
    "extractor",
    "extractor_weights_sha256",
    "n_generated",
    "reference_split",
    "n_reference",
    "reference_sha256",
)
TOY_ANCHORS = ("high_quality_share", "modes_covered", "sample_ll")
LEGEND = "≤ upper bound · ≈ estimate · n/a no likelihood in this family · – not measured"


def metric_columns(section: str | None = None) -> list[MetricSpec]:
    """Specs of the metric columns, left to right: every one, or those a ``toy`` / ``image``
    section shows."""
    return sorted(
        (
            s
            for s in metric_specs()
            if s.column is not None and (section is None or s.column.sections in ("all", section))
        ),
        key=lambda s: s.column.order,
    )


def columns() -> list[tuple[str, str]]:
    """(title, key) of every column any section can show, left to right; a metric's key is its
    name, ``<name>@`` for per-extractor metrics (matching every ``<name>@<extractor>``)."""
    return [*RUN_HEAD, *((s.label, s.key) for s in metric_columns()), *RUN_TAIL]


def key_spec(key: str) -> MetricSpec | None:
    """The spec of a column key (``fid@`` -> ``fid``), None for run fields."""
    return None if key in TEXT_FIELDS or key in RUN_NUMBERS else metric_spec(key.rstrip("@"))


def lower_first(key: str) -> bool:
    """Whether column ``key`` ranks smaller values first (run fields do)."""
    spec = key_spec(key)
    return spec is None or bool(spec.lower_is_better)


@dataclass(frozen=True)
class View:
    """Options of a leaderboard view (``conf/leaderboard.yaml``)."""

    sort: str | None = None  # metric name or column title; None: bits/dim, then FID
    best: bool = False  # keep the best run per model
    agg: bool = False  # mean ± 95 % t-interval over runs whose configs differ only in seed
    refs: bool = True  # list published results under the runs of their dataset


@dataclass
class Section:
    """Rows of one dataset whose sample metrics share one protocol, with their published peers."""

    dataset: str
    title: str  # the dataset, with the protocol when it has several sections
    toy: bool
    protocol: str | None  # description of the sample-metric protocol
    columns: list[tuple[str, str]]
    rows: list[Row]
    refs: list[Row] = field(default_factory=list)
    floors: list[Row] = field(default_factory=list)  # ``data`` and ``uniform``: never ranked
    notes: list[str] = field(default_factory=list)
    likelihood: str | None = None  # the likelihood settings of its bits/dim, when they split


def pick(run: Run, key: str, sampler: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's metric ``key`` (``fid@`` matches ``fid@<extractor>``) measured with ``sampler``
    (default: the run's own sampler; sweep rows carry other samplers in their protocol)."""
    ms = [
        m
        for m in run["metrics"]
        if (m["name"].startswith(key) if key.endswith("@") else m["name"] == key)
    ]
    sampler = ((run.get("config") or {}).get("sampler") or {}) if sampler is None else sampler
    same = [m for m in ms if m["protocol"].get("sampler", sampler) == sampler]
    return (same or ms or [None])[0]


def cell(run: Run, key: str) -> Cell:
    """The cell of column ``key`` for one run (or run-like published result)."""
    if key in TEXT_FIELDS:
        text = str(run.get(key) or "–")
        if key == "model" and (sampler := (run.get("config") or {}).get("sampler")):
            words = [str(v) if k == "name" else f"{k}={v}" for k, v in sampler.items()]
            text += " [" + " ".join(sorted(words, key=lambda w: "=" in w)) + "]"
        return Cell(label=text)
    if key in RUN_NUMBERS:
        v = run.get(key)
        return Cell(None if v is None else float(v), integer=key in RUN_INTEGERS)
    spec = key_spec(key)
    m = pick(run, key)
    if m is None:
        no_likelihood = run.get("likelihood") == "none" and spec is not None and spec.likelihood
        return Cell(label="n/a" if no_likelihood else None)
    suffix = ""
    if key == "modes_covered" and (total := pick(run, "modes_total")):
        suffix = f"/{total['value']:.0f}"
    if run.get("published") and key.endswith("@"):
        suffix = "†"
    return Cell(
        m["value"],
        m["kind"],
        m.get("lo"),
        m.get("hi"),
        suffix=suffix,
        integer=spec is not None and spec.integer,
    )


def sample_protocol(run: Run, toy: bool) -> tuple[tuple[Any, ...], str] | None:
    """(comparison key, description) of the run's sample metrics, or None without any."""
    anchors = TOY_ANCHORS if toy else [s.key for s in metric_columns("image") if s.per_extractor]
    for key in anchors:
        if (m := pick(run, key)) is None:
            continue
        p = m["protocol"]
        n = p.get("n_generated", m["n"])  # the data floor may score fewer real images than N
        sig = (m["name"].partition("@")[2], n, *(p.get(f) for f in PROTOCOL_FIELDS))
        sha = (
            f" ({str(p['extractor_weights_sha256'])[:8]})"
            if p.get("extractor_weights_sha256")
            else ""
        )
        ref = (
            f" vs {p['n_reference']} {p.get('reference_split', '')} images"
            if p.get("n_reference")
            else ""
        )
        return sig, (
            f"{m['n']} samples"
            if toy
            else f"{p.get('extractor', sig[0])}{sha}, {p.get('n_generated', m['n'])} samples{ref}"
        )
    return None


def sort_keys(view: View, toy: bool) -> tuple[str, ...]:
    """Column keys to rank by; ``ConfigError`` for an unknown ``sort``."""
    if view.sort is None:
        return ("nll_gap", "bpd", "high_quality_share") if toy else ("bpd", "fid@")
    want = str(view.sort).lower()
    for title, key in columns():
        if key not in TEXT_FIELDS and (
            want in (title.lower(), key, key.rstrip("@")) or want.split("@")[0] + "@" == key
        ):
            return (key,)
    valid = sorted(k.rstrip("@") for _, k in columns() if k not in TEXT_FIELDS)
    raise ConfigError(f"sort={view.sort!r} is invalid: expected one of {valid}")


def _rank(row: Row, keys: Sequence[str]) -> tuple[Any, ...]:
    """Sort key: missing values last; each metric in its own direction."""
    out: list[Any] = []
    for key in keys:
        c = row.cells.get(key) or cell(row.run, key)
        out += [1, 0.0] if c.missing else [0, c.value if lower_first(key) else -c.value]
    return tuple(out)


def _comparable_config(run: Run) -> dict[str, Any]:
    """The run's config without seed and bookkeeping (``{}`` when unknown)."""
    cfg = dict(run.get("config") or {})
    if not cfg:
        return {}
    for k in ("seed", "paths", "logger"):
        cfg.pop(k, None)
    cfg["trainer"] = {
        k: v for k, v in (cfg.get("trainer") or {}).items() if k not in ("resume", "rerun")
    }
    return cfg


def _config_key(run: Run) -> str:
    """A key shared exactly by runs whose configs differ only in seed and bookkeeping."""
    cfg = _comparable_config(run)
    if not cfg:
        return str(run["run_id"])  # unknown config: never merged
    return json.dumps([run["model"], run["status"], cfg], sort_keys=True, default=str)


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"a.b": "<json of the leaf>"}`` of a nested config (lists are leaves)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: json.dumps(tree, sort_keys=True, default=str)} if prefix else {}
    out: dict[str, str] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differing_settings(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per row, the config keys (dotted, with the row's values) in which rows of the same model
    differ, apart from seed and bookkeeping: what tells apart the rows of a sweep
    (``model.augment``, ``dataset.train_fraction``, a learning rate); ``{}`` for a model with
    one row and for rows without a config (published results, floors)."""
    flats = [_flat(_comparable_config(r.run)) for r in rows]
    out: list[dict[str, Any]] = [{} for _ in rows]
    models: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if flats[i] and not r.published and not r.floor:
            models.setdefault(str(r.run.get("model")), []).append(i)
    for members in models.values():
        keys = sorted({k for i in members for k in flats[i]})
        varying = [k for k in keys if len({flats[i].get(k) for i in members}) > 1]
        for i in members:
            out[i] = {k: json.loads(flats[i][k]) for k in varying if k in flats[i]}
    return out


def settings_text(settings: dict[str, Any]) -> str:
    """``augment=ada train_fraction=0.1``: each key by its last part where no other key of the
    row ends the same, else in full (``–`` when empty)."""
    leaves = [k.rpartition(".")[2] for k in settings]
    return (
        " ".join(
            f"{leaf if leaves.count(leaf) == 1 else k}={v}"
            for leaf, (k, v) in zip(leaves, settings.items(), strict=True)
        )
        or "–"
    )


def aggregate(rows: Sequence[Row], keys: Sequence[str]) -> list[Row]:
    """Merge rows whose runs differ only in seed: numbers become their mean with its 95 %
    t-interval over the seeds (a number measured in one seed only keeps its own interval)."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(_config_key(r.run), []).append(r)
    out = []
    for group in groups.values():
        cells = {"seeds": Cell(float(len(group)), integer=True)}
        for key in keys:
            cs = [r.cells[key] for r in group]
            vals = [c.value for c in cs if not c.missing]
            cells[key] = cs[0]  # all missing (or n/a)
            if key in TEXT_FIELDS:
                cells[key] = Cell(label=", ".join(dict.fromkeys(c.text() for c in cs)))
            elif len(vals) == 1:
                cells[key] = next(c for c in cs if not c.missing)
            elif vals:
                mean, lo, hi = t_interval(vals)
                cells[key] = Cell(mean, cs[0].kind, lo, hi, None, cs[0].suffix, cs[0].integer)
        out.append(Row([r.run for r in group], cells))
    return out


def _objective(row: Row) -> tuple[Any, ...]:
    """Selection key of ``best``: runs with a validation objective (the ``objective`` row,
    split ``val``, lower is better; the mean over a row's seeds) first, grouped by what it
    measures, then by its value; never a test metric."""
    found = [
        m
        for run in row.runs
        for m in run["metrics"]
        if m["name"] == "objective" and m["split"] == "val" and m["value"] is not None
    ]
    if not found:
        return (1,)
    return (0, str(found[0]["protocol"].get("metric")), sum(m["value"] for m in found) / len(found))


def _best_per_model(rows: Sequence[Row], keys: Sequence[str]) -> list[Row]:
    """Each model's best row: by validation objective where its runs have one (tuning trials),
    by the ranking ``keys`` only among runs that have none."""
    best: dict[str, Row] = {}
    for r in rows:
        name = str(r.run["model"])
        if name not in best or (_objective(r), _rank(r, keys)) < (
            _objective(best[name]),
            _rank(best[name], keys),
        ):
            best[name] = r
    return list(best.values())


def _columns(toy: bool, rows: Sequence[Row], agg: bool) -> list[tuple[str, str]]:
    specs = [
        s
        for s in metric_columns("toy" if toy else "image")
        if not s.column.optional or any(not r.cells[s.key].missing for r in rows)
    ]
    head = [*RUN_HEAD[:1], ("settings", "settings"), *RUN_HEAD[1:]]
    varied = any(r.settings for r in rows)  # a sweep: which setting each row of a model has
    cols = [*(head if varied else RUN_HEAD), *((s.label, s.key) for s in specs), *RUN_TAIL]
    if not toy:
        per_extractor = [s.key for s in specs if s.per_extractor]
        found = (pick(r.run, k) for r in rows if not r.published for k in per_extractor)
        extractor = next((m["name"].partition("@")[2] for m in found if m), None)
        if extractor:
            cols = [(f"{t}@{extractor}" if k.endswith("@") else t, k) for t, k in cols]
    return cols + ([("seeds", "seeds")] if agg else [])


def _notes(sec: Section, view: View, levels: int | None) -> list[str]:
    """Footnotes of a section: its protocol, caveats, intervals and ties, the floor rows, the
    sources of published rows, a legend."""
    notes = [f"sample metrics: {sec.protocol}"] if sec.protocol else []
    notes += [f"bits/dim: {sec.likelihood}"] if sec.likelihood else []
    if len(ns := sorted({m["n"] for r in sec.rows if (m := pick(r.run, "bpd")) and m["n"]})) > 1:
        notes.append(f"bits/dim over different numbers of test examples: {ns}")
    if view.agg:
        notes.append(
            "seeds: runs differing only in seed, shown as their mean ± the 95 % t-interval of "
            "the mean (t with seeds − 1 degrees of freedom; a number from one seed keeps its "
            "own interval)"
        )
    cells = [r.cells[k] for r in sec.rows + sec.floors for _, k in sec.columns]
    if any(c.lo is not None and not c.exact_int for c in cells):
        notes.append("± h or [lo, hi]: 95 % interval")
    if any(c.best for c in cells):
        notes.append(TIE_NOTE)
    if sec.floors:
        notes.append(floor_note([str(r.run.get("floor") or "data") for r in sec.floors], levels))
    return notes + reference_notes([r.run for r in sec.refs]) + [LEGEND]


def _floor_cells(run: Run, keys: Sequence[str]) -> dict[str, Cell]:
    """Cells of a floor row: its metrics; no ``n/a``, no model size or training cost."""
    cells = {k: cell(run, k) for k in keys}
    for k, c in cells.items():
        if k in RUN_NUMBERS or k == "likelihood" or c.label == "n/a":
            cells[k] = Cell()
    return cells


def _floors(
    sec: Section, data: Sequence[Run], sig: Any, levels: int | None, keys: Sequence[str]
) -> list[Row]:
    """The ``data`` row (the latest floor run whose sample protocol is the section's) and, in an
    image section with likelihood numbers, the ``uniform`` row."""
    rows = []
    same = [r for r in data if sig is not None and (sample_protocol(r, sec.toy) or (0,))[0] == sig]
    if same:
        rows.append(Row([same[-1]], _floor_cells(same[-1], keys)))
    bits = [
        k
        for _, k in sec.columns
        if (spec := key_spec(k)) is not None and spec.unit == "bits/dim" and spec.likelihood
    ]
    measured = any(not r.cells[k].missing for r in sec.rows for k in bits)
    if not sec.toy and measured and levels is not None:
        rows.append(Row([u := uniform_run(sec.dataset, levels, bits)], _floor_cells(u, keys)))
    return rows


def conditional(run: Run) -> bool:
    """Whether the run's model was conditional (``model.conditional=true``): its numbers are
    conditional on the class (bits/dim of -log p(x | y), samples drawn per class) and form
    their own sections, never ranked against unconditional runs."""
    model = (run.get("config") or {}).get("model") or {}
    return bool(model.get("conditional", False)) if isinstance(model, dict) else False


def mark_ties(sec: Section) -> None:
    """Mark (``Cell.best``) every run entry of each ranked metric column that is best or within
    the 95 % interval of the best (:func:`~genbench.leaderboard.ties.tied_for_first`); floor
    and published rows are never marked."""
    for _, key in sec.columns:
        spec = key_spec(key)
        if spec is None or spec.lower_is_better is None:
            continue
        cells = [c for r in sec.rows if not (c := r.cells[key]).missing]
        for c, tied in zip(cells, tied_for_first(cells, spec.lower_is_better), strict=True):
            c.best = tied


def build_sections(
    runs: Sequence[Run], view: View = View(), references: Sequence[Run] = ()
) -> list[Section]:
    """Group ``runs`` into sections (dataset × conditional or not × sample protocol × the
    likelihood settings of
    :mod:`~genbench.leaderboard.nll_settings`), apply ``view`` and attach the ``references`` of
    each dataset to its first section."""
    sections = []
    all_keys = [k for _, k in columns()]
    floors = [r for r in runs if is_floor(r)]
    runs = [r for r in runs if not is_floor(r)]
    for dataset, cond in dict.fromkeys((r["dataset"], conditional(r)) for r in runs):
        group = [r for r in runs if (r["dataset"], conditional(r)) == (dataset, cond)]
        data = [r for r in floors if r["dataset"] == dataset]
        levels = levels_of(group)
        toy = dataset.startswith("toy") or any(pick(r, "nll_gap") for r in group)
        keys = sort_keys(view, toy)
        protos = {r["run_id"]: sample_protocol(r, toy) for r in group}
        distinct = list(dict.fromkeys(p for p in protos.values() if p is not None))
        buckets = [distinct[0] if distinct else None] if len(distinct) < 2 else distinct + [None]
        parts = [
            (proto, part, lik)
            for proto in buckets  # runs without sample metrics join the only one
            for part, lik in split_by_nll_settings(
                [r for r in group if len(buckets) == 1 or protos[r["run_id"]] == proto]
            )
            if part
        ]
        for i, (proto, members, lik) in enumerate(parts):
            rows = [Row([r], {k: cell(r, k) for k in all_keys}) for r in members]
            if view.agg:
                rows = aggregate(rows, all_keys)
            if view.best:
                rows = _best_per_model(rows, keys)
            for row, settings in zip(rows, differing_settings(rows), strict=True):
                row.settings = settings
                row.cells["settings"] = Cell(label=settings_text(settings))
            rows.sort(key=lambda r: _rank(r, keys))
            refs = [
                Row([r], {k: cell(r, k) for k in (*all_keys, "seeds")})
                for r in references
                if r["dataset"] == dataset and view.refs and i == 0 and not cond
            ]
            refs.sort(key=lambda r: _rank(r, keys))
            desc = proto[1] if proto else "no sample metrics" if len(buckets) > 1 else None
            split = "; ".join(d for d in (desc if len(buckets) > 1 else None, lik) if d)
            name = f"{dataset} | conditional on the class" if cond else dataset
            sec = Section(
                dataset,
                f"{name} [{split}]" if split else name,
                toy,
                desc,
                _columns(toy, rows + refs, view.agg),
                rows,
                refs,
                likelihood=lik,
            )
            sig = proto[0] if proto else None
            sec.floors = _floors(sec, data, sig, levels, [*all_keys, "seeds"])
            for row in sec.refs + sec.floors:
                row.cells["settings"] = Cell()
            mark_ties(sec)
            sec.notes = _notes(sec, view, levels)
            sections.append(sec)
    return sections
