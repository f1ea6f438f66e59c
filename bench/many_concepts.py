"""Many concepts on canvas-mini: scalability and sustainability of every method (issue 26, item 3).

    python bench/many_concepts.py [--methods esd advunlearn doco sfd prune] [--ks 1 2 4 6] [--requests 4]
                                  [--seeds 0-1] [--sampling-steps 25] [--set METHOD.KEY=VALUE ...]
                                  [--out bench/runs/many_concepts] [--results bench/results] [--report-only]

MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models") names the
two properties a product that keeps erasing needs; this bench measures both on canvas-mini, every
method with its shipped style preset (``configs/METHOD/canvas-mini-style.yaml``, ``--set`` overrides
recorded in the results):

- scalability: k styles erased at once (``ErasureRequest(targets=ORDER[:k])``), k in ``--ks``;
  UA averaged over the erased styles, IRA on the styles left, CRA;
- sustainability: ``--requests`` sequential requests, one style each in ``ORDER``, each run started
  from the previous one's pipeline (a chain, as ``erasure erase --model RUN``; the first request is
  the k = 1 run); after every request, UA of every style erased so far (does an earlier one come
  back?), IRA on the styles never erased, CRA. A method whose runs cannot start a chain (SFD: a
  one-step generator) gets its refusal recorded instead.

Both with time, peak memory and the edit size (for a chain: its runs' sum). Every run is scored by
the canvas suite (all 64 captions, ``--seeds``, DDIM ``--sampling-steps``, the shipped evaluator) in
one evaluation. Writes RESULTS/many_concepts.json and .md and two line plots (one panel per metric,
one line per method): RESULTS/many_concepts_scalability.png and many_concepts_sustainability.png.
Runs are reused while their request, preset, overrides and predecessor are unchanged (``_runs.erase_once``),
so the bench can be run a few methods at a time and resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _runs import (ROOT, erase_once, machine, method_overrides, page, parse, results_options, sampling, shown, table,
                   write_results)
from erasure import ErasureRequest
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.errors import ErasureInputError
from erasure.evaluation import evaluate_runs
from erasure.progress import StageBars

NAME = "many_concepts"
METHODS = ("esd", "advunlearn", "doco", "sfd", "prune")
#: The styles in the order they are erased (fixed; canvas-mini's ``solid`` and ``concentric`` are never erased).
ORDER = ("dotted", "striped", "checkered", "gradient", "outline", "noisy")
METRICS = ("UA", "IRA", "CRA")


def preset(method: str) -> Path:
    return preset_path(f"{method}/canvas-mini-style")


def at_once(method: str, k: int, out: Path, overrides: dict) -> Path:
    """The run that erases the first ``k`` styles of ``ORDER`` in one request."""
    return erase_once(out / method / f"at-once-{k}", ErasureRequest(list(ORDER[:k]), kind="style"), method, preset(method),
                      **overrides)


def in_sequence(method: str, requests: int, out: Path, overrides: dict) -> tuple[list[Path], str | None]:
    """The chain of ``requests`` one-style runs (the first is the k = 1 run), and the refusal that cut it short."""
    runs = [at_once(method, 1, out, overrides)]
    for i in range(1, requests):
        try:
            runs.append(erase_once(out / method / f"sequence-{i + 1}", ErasureRequest([ORDER[i]], kind="style"), method,
                                   preset(method), start=runs[-1], **overrides))
        except ErasureInputError as e:  # recorded without this machine's folders
            message = str(e).replace(str(runs[-1].resolve()), shown(runs[-1]))
            return runs, message.replace(str(runs[-1]), shown(runs[-1]))
    return runs, None


def run_record(run: Path, scores: dict) -> dict:
    manifest = read_manifest(run)
    cost = manifest["cost"]
    return {"run": shown(run),
            **{k: scores["after"][k] for k in METRICS}, "per_target_UA": scores["after"]["per_target_UA"],
            "counts": scores["after"]["counts"], "seconds": cost["wall_seconds"],
            "peak_memory_bytes": cost.get("peak_memory_bytes", 0), "edit_bytes": manifest["edit"].get("file_bytes", 0)}


def chain_totals(records: list[dict]) -> list[dict]:
    """Each request's record with the chain's totals so far: time and edit bytes summed, peak memory the largest."""
    out, seconds, size, peak = [], 0.0, 0, 0
    for r in records:
        seconds, size, peak = seconds + r["seconds"], size + r["edit_bytes"], max(peak, r["peak_memory_bytes"])
        out.append({**r, "chain_seconds": seconds, "chain_edit_bytes": size, "chain_peak_memory_bytes": peak})
    return out


# ----------------------------------------------------------------------------- the page and the plots
def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def markdown(result: dict) -> str:
    s = result["sampling"]
    scal = [[m, r["k"], ", ".join(ORDER[:r["k"]]), *(_pct(r[k]) for k in METRICS),
             " / ".join(f"{r['per_target_UA'][t]:.0%}" for t in ORDER[:r["k"]]),
             f"{r['seconds']:.0f}", f"{r['peak_memory_bytes'] / 2**30:.2f}", f"{r['edit_bytes'] / 1e6:.2f}"]
            for m, rows in result["scalability"].items() for r in rows]
    sust = []
    for m, chain in result["sustainability"].items():
        for i, r in enumerate(chain["requests"]):
            sust.append([m, i + 1, ORDER[i], *(_pct(r[k]) for k in METRICS),
                         " / ".join(f"{r['per_target_UA'][t]:.0%}" for t in ORDER[:i + 1]),
                         f"{r['chain_seconds']:.0f}", f"{r['chain_peak_memory_bytes'] / 2**30:.2f}",
                         f"{r['chain_edit_bytes'] / 1e6:.2f}"])
        if chain["refused"]:
            sust.append([m, len(chain["requests"]) + 1, "", "", "", "", f"refused: {chain['refused']}", "", "", ""])
    overrides = "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in o.items())}" for m, o in result["overrides"].items() if o)
    return page(
        "# Many concepts on canvas-mini: scalability and sustainability",
        f"`{result['command']}` on {result['machine']}. Every run is its method's canvas-mini style preset"
        + (f" with {overrides}" if overrides else "") + f"; styles erased in the order {', '.join(ORDER)}. UA / IRA / "
        f"CRA: {result['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, guidance "
        f"{s['guidance']}; judge: {result['judge']}. UA: mean over the erased styles (each listed); IRA: the styles "
        "never erased; CRA: objects.",
        "## Scalability: k styles in one request",
        "![scalability](many_concepts_scalability.png)",
        table(["method", "k", "erased", *METRICS, "UA per erased style", "time (s)", "peak memory (GiB)", "edit (MB)"], scal),
        "## Sustainability: one style per request, each run started from the last",
        "![sustainability](many_concepts_sustainability.png)",
        "Time, peak memory and edit size are the chain's so far (summed; the largest peak).",
        "Peak memory is the peak RSS of the bench's process, which runs every erasure in turn: exact for the first "
        "run made in a process, an upper bound for the later ones (runs reused from an earlier invocation keep what "
        "their own process saw).",
        table(["method", "request", "erased now", *METRICS, "UA of every style erased so far", "chain time (s)",
               "peak memory (GiB)", "chain edit (MB)"], sust),
    )


def plot(result: dict, results: Path) -> None:
    """The two line plots: one panel per metric, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("UA", "UA (mean over the erased styles)"), ("IRA", "IRA (styles never erased)"), ("CRA", "CRA (objects)")]
    for name, series, xkey, xlabel, extra in (
        ("scalability", result["scalability"], "k", "styles erased at once", ("seconds", "time (s)")),
        ("sustainability", {m: c["requests"] for m, c in result["sustainability"].items()}, "request",
         "sequential requests (one style each)", ("first_UA", f"UA of {ORDER[0]} (first erased)")),
    ):
        keys = panels + [extra]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), constrained_layout=True)
        for ax, (key, title) in zip(axes, keys):
            ticks: set[int] = set()
            for method, rows in series.items():
                if not rows:
                    continue
                xs = [r["k"] if xkey == "k" else i + 1 for i, r in enumerate(rows)]
                ys = [r["per_target_UA"][ORDER[0]] if key == "first_UA" else r[key] for r in rows]
                ys = [y * 100 for y in ys] if key != "seconds" else ys
                ax.plot(xs, ys, marker="o", label=method)
                ticks.update(xs)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_xticks(sorted(ticks))
            if key != "seconds":
                ax.set_ylim(-5, 105)
                ax.set_ylabel("%")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"canvas-mini, {name}")
        fig.savefig(results / f"{NAME}_{name}.png", dpi=110)
        plt.close(fig)


def write(results: Path, result: dict) -> None:
    write_results(results, NAME, result, markdown)
    plot(result, results)


# ----------------------------------------------------------------------------- command line
def options() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 6], help=f"styles erased at once (1..{len(ORDER)})")
    ap.add_argument("--requests", type=int, default=4, help=f"sequential requests (1..{len(ORDER)})")
    ap.add_argument("--seeds", default="0-1", help="seeds of the canvas suite (UA/IRA/CRA)")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of the evaluation's images")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="preset override METHOD.KEY=VALUE (repeat), e.g. sfd.steps=200; recorded in the results")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / NAME, help="runs, the evaluation and its image cache")
    results_options(ap, NAME)
    return ap


def main() -> None:
    ap = options()
    args = parse(ap, NAME, markdown)
    if args is None:  # --report-only has rewritten the markdown; the plots too
        results = ap.parse_args().results
        plot(json.loads((results / f"{NAME}.json").read_text()), results)
        return
    if not all(1 <= k <= len(ORDER) for k in args.ks) or not 1 <= args.requests <= len(ORDER):
        raise SystemExit(f"{NAME}: --ks and --requests must lie in 1..{len(ORDER)}")
    overrides = method_overrides(NAME, args.sets, args.methods)

    scalability = {m: [(k, at_once(m, k, args.out, overrides[m])) for k in sorted(set(args.ks))] for m in args.methods}
    chains = {m: in_sequence(m, args.requests, args.out, overrides[m]) for m in args.methods}
    runs = list(dict.fromkeys([r for rows in scalability.values() for _, r in rows]
                              + [r for chain, _ in chains.values() for r in chain]))
    with StageBars() as bars:
        metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=sampling(args), progress=bars)
    scores = dict(zip(runs, metrics["runs"]))
    result = {k: metrics[k] for k in ("suite", "judge", "sampling", "prompts")}
    result["order"] = list(ORDER)
    result["overrides"] = overrides
    result["scalability"] = {m: [{"k": k, **run_record(r, scores[r])} for k, r in rows] for m, rows in scalability.items()}
    result["sustainability"] = {m: {"requests": chain_totals([run_record(r, scores[r]) for r in chain]), "refused": refused}
                                for m, (chain, refused) in chains.items()}
    result["machine"] = machine()
    result["command"] = " ".join(["python bench/many_concepts.py", f"--methods {' '.join(args.methods)}",
                                  f"--ks {' '.join(map(str, args.ks))}", f"--requests {args.requests}", f"--seeds {args.seeds}"]
                                 + ([f"--sampling-steps {args.sampling_steps}"] if args.sampling_steps != 25 else [])
                                 + [f"--set {s}" for s in args.sets])
    write(args.results, result)


if __name__ == "__main__":
    main()
