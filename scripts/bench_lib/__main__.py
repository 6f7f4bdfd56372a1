"""``scripts/bench [--quick] [--only SECTION ...] [--out DIR]``: run the benchmarks, print every
headline ratio, write ``<out>/bench-<mode>.md`` and ``.json``."""

from __future__ import annotations

# genbench's OpenMP wait policy is set when genbench.cli is imported, and must be before torch loads
import genbench.cli  # noqa: F401  # isort: skip

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench_lib import common, ddp, evaluation, gpu, memory, ode, runner, sampling, sweeps, threads
from bench_lib.common import ROOT, Result, log, machine, table, verdict

SECTIONS = {
    "runner": runner.run,
    "eval": evaluation.run,
    "sampling": sampling.run,
    "sweeps": sweeps.run_sweeps,
    "quickstart": sweeps.run_quickstart,
    "threads": threads.run,
    "gpu": gpu.run,
    "ddp": ddp.run,
    "memory": memory.run,
    "ode": ode.run,
}


def _jsonable(x: object) -> object:
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def report(mode: str, info: dict, results: list[Result], seconds: float) -> str:
    head = [
        f"## Benchmarks ({mode} mode)",
        "",
        *table(["machine", "value"], [[k, v] for k, v in info.items()]),
        "",
        f"Total benchmark time: {seconds:.0f} s.",
        "",
        "### Headline ratios",
        "",
        *table(
            ["ratio", "measured (median [min-max] n)", "target", "verdict"],
            [[c.name, c.value, c.target or "-", verdict(c.ok)] for r in results for c in r.checks],
        ),
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(r.markdown() for r in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="under 5 minutes on 2 CPU cores")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "outputs" / "bench",
        help="where bench-<mode>.md/.json are written",
    )
    ap.add_argument("--models", nargs="+", help="per-model sections: only these conf/model names")
    args = ap.parse_args(argv)
    common.SELECTED_MODELS = args.models
    mode = "quick" if args.quick else "full"
    torch.set_num_threads(1)
    info = machine()
    log(f"{mode} mode on {info['cpu']} ({info['cores']} cores), load {info['load_average']}")
    start, results = time.perf_counter(), []
    for name in args.only or list(SECTIONS):
        t = time.perf_counter()
        results.append(SECTIONS[name](args.quick))
        log(f"section {name}: {time.perf_counter() - t:.0f} s")
    seconds = time.perf_counter() - start
    info["load_average_end"] = os.getloadavg().__repr__()
    md = report(mode, info, results, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench-{mode}.md").write_text(md)
    raw = {
        "mode": mode,
        "machine": info,
        "seconds": seconds,
        "sections": {r.title: {"checks": r.checks, "raw": r.raw} for r in results},
    }
    (args.out / f"bench-{mode}.json").write_text(json.dumps(raw, indent=1, default=_jsonable))
    print(md)
    print(f"wrote {args.out / f'bench-{mode}.md'} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
