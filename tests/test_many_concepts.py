"""Many concepts (issue 26): several targets in one run for every method, chains of runs (sequential
erasure) through the CLI, Python and the app, their refusals, and the scoring of both.

Everything at tiny size on canvas-mini (the embedded 4M-parameter model): a step or two per method,
no evaluation-size generation (the canvas suite's scoring is tested on hand-made judge outputs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from erasure import ErasureRequest, erase
from erasure.cli import main
from erasure.edit import Edit, fingerprint
from erasure.erased import chain_edit, chain_links, erased_concepts, load_erased
from erasure.errors import ErasureInputError
from erasure.pipelines import load_pipeline

CANVAS = "canvas-mini"
TWO_STYLES = ErasureRequest(["dotted", "striped style"], kind="style")
# Each method's canvas-mini style preset with its schedule cut to a step or two.
TINY = {
    "esd": dict(steps=4, ddim_steps=2, precompute_batch=8, checkpoint_every=0),
    "advunlearn": dict(steps=4, warmup=2, attack_steps=2, ddim_steps=2, retain_batch=1, sample_pool=0,
                       precompute_batch=16, checkpoint_every=0),
    "doco": dict(steps=2, batch_size=2, warmup_steps=1, anchor_images=4, anchor_steps=2, anchor_batch=4,
                 checkpoint_every=0),
    "sfd": dict(steps=2, batch_size=1, checkpoint_every=0),
    "prune": dict(ddim_steps=4, tau=2, seeds=1, batch_size=16),
}
CLI_TINY = {m: [a for k, v in o.items() for a in ("--set", f"{k}={v}")] for m, o in TINY.items()}


def canvas():
    return load_pipeline(CANVAS, device="cpu")


def params(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder")
            for n, p in getattr(pipe, c).named_parameters()}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ----------------------------------------------------------------------------- several targets, one run
@pytest.mark.parametrize("method", list(TINY))
def test_every_method_erases_two_canvas_styles_in_one_run(method, tmp_path):
    edit = erase(canvas(), TWO_STYLES, method, out=tmp_path / method, **TINY[method])
    manifest = json.loads((tmp_path / method / "manifest.json").read_text())
    assert manifest["request"]["targets"] == ["dotted", "striped style"]
    spread = manifest["extra"]["targets"]
    assert spread == edit.extra["targets"] and spread["count"] == 2
    assert list(spread["per_target"]) == ["dotted", "striped style"] and all(spread["per_target"].values())
    assert not spread["schedule"].startswith(("shared", "one target")), spread  # the prompts were told apart
    if method == "esd":  # the targets take turns: 4 steps x batch 1, two samples each
        assert spread["per_target"] == {"dotted": 2, "striped style": 2}
    if method == "doco":  # every training sample belongs to one target's prompt pairs
        assert sum(spread["per_target"].values()) == TINY["doco"]["steps"] * TINY["doco"]["batch_size"]
    if method == "prune":  # the edit is the union of the two targets' own masks
        assert manifest["edit"]["zeroed_entries"] >= max(spread["per_target"].values())


def test_canvas_styles_resolve_with_the_styles_not_erased_as_retain_set():
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    req = TWO_STYLES.resolve(CANVAS)
    assert req.prompts == ["dotted style", "striped style"]
    kept = [s for s in STYLES if s not in ("dotted", "striped")]
    assert req.retain == [caption(o, s) for s in kept for o in OBJECTS]
    assert req.target_groups(CANVAS) == [[0], [1]]
    # Stable Diffusion: each concept's text is its prompt; prompts naming several or none are shared
    assert ErasureRequest(["a cat", "a dog"], kind="object").target_groups("stable-diffusion") == [[0], [1]]
    mixed = ErasureRequest(["a cat", "a dog"], kind="object", prompts=["a cat and a dog", "a dog"])
    assert mixed.target_groups("stable-diffusion") is None


def test_a_request_has_one_kind():
    # Mixing kinds cannot be expressed: ErasureRequest holds one kind, refused in one line if unknown
    with pytest.raises(ErasureInputError, match="unknown kind"):
        ErasureRequest(["dotted", "star"], kind="style+object")


def test_esd_targets_take_turns_and_one_target_plans_are_unchanged():
    from erasure.diffusion import ddim_for
    from erasure.methods.esd import ESD

    esd = ESD(steps=6, ddim_steps=4)
    ddim = ddim_for(canvas().scheduler, 4)
    alone = esd.plan(2, ddim, 1000)
    assert esd.plan(2, ddim, 1000, groups=[[0, 1]]) == alone  # one target with two prompts: as before
    turns = esd.plan(2, ddim, 1000, groups=[[0], [1]])
    assert [p.prompt for p in turns] == [0, 1] * 3
    assert [(p.depth, p.noise_seed) for p in turns] == [(p.depth, p.noise_seed) for p in alone]


def test_advunlearn_targets_take_turns_round_by_round():
    from erasure.diffusion import ddim_for
    from erasure.methods.advunlearn import AdvUnlearnConfig, _Planner

    c = AdvUnlearnConfig(steps=8, warmup=2, attack_every=2, ddim_steps=4, retain_batch=1)
    ddim = ddim_for(canvas().scheduler, 4)
    plan = _Planner(c, 2, 4, ddim, 1000, 1, [[0], [1]]).plan()
    # warm-up steps 0, 1 take a turn each; then every attack round (steps 2, 4, 6) keeps its prompt
    assert [st.prompt for st in plan] == [0, 1, 0, 0, 1, 1, 0, 0]
    one = _Planner(c, 2, 4, ddim, 1000, 1).plan()
    assert [st.prompt for st in _Planner(c, 2, 4, ddim, 1000, 1, [[0, 1]]).plan()] == [st.prompt for st in one]


def test_prune_unites_the_targets_own_masks(tmp_path):
    both = erase(canvas(), TWO_STYLES, "prune", **TINY["prune"])
    alone = [erase(canvas(), ErasureRequest([s], kind="style"), "prune", **TINY["prune"]) for s in ("dotted", "striped")]
    for key in both.zeroed:
        union = torch.unique(torch.cat([a.zeroed[key] for a in alone if key in a.zeroed]))
        assert torch.equal(both.zeroed[key].sort().values, union.sort().values), key
    assert set(both.zeroed) == {k for a in alone for k in a.zeroed}


# ----------------------------------------------------------------------------- chains of runs
@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """ESD on dotted (first run), then AdvUnlearn on striped and noisy through the CLI, then pruning
    on checkered through Python: a chain of three runs made on canvas-mini."""
    root = tmp_path_factory.mktemp("chain")
    runs = {"esd": root / "esd-dotted", "advunlearn": root / "adv-striped", "prune": root / "prune-checkered"}
    erase(canvas(), ErasureRequest(["dotted"], kind="style"), "esd", out=runs["esd"], **TINY["esd"])
    with pytest.raises(SystemExit) as exit_info:
        main(["erase", "--method", "advunlearn", "--model", str(runs["esd"]), "--concept", "striped", "--concept", "noisy",
              "--kind", "style",
              "--out", str(runs["advunlearn"]), "--device", "cpu", *CLI_TINY["advunlearn"]])
    assert exit_info.value.code == 0
    erase(load_erased(runs["advunlearn"], device="cpu"), ErasureRequest(["checkered"], kind="style"), "prune",
          out=runs["prune"], **TINY["prune"])
    return runs


def test_a_chain_records_its_origin_and_every_earlier_run(chain):
    first = json.loads((chain["esd"] / "manifest.json").read_text())
    third = json.loads((chain["prune"] / "manifest.json").read_text())
    assert "chain" not in first
    origin, runs = third["chain"]["origin"], third["chain"]["runs"]
    assert origin["source"] == CANVAS and origin["fingerprint"] == first["base"]["fingerprint"]
    assert [(r["method"], r["targets"], Path(r["path"])) for r in runs] == [
        ("esd", ["dotted"], chain["esd"].resolve()), ("advunlearn", ["striped", "noisy"], chain["advunlearn"].resolve())]
    assert runs[0]["relative"] == "../esd-dotted"
    second = json.loads((chain["advunlearn"] / "manifest.json").read_text())
    assert runs[0]["fingerprint"] == second["base"]["fingerprint"]  # what ESD produced, AdvUnlearn started from
    assert runs[1]["fingerprint"] == third["base"]["fingerprint"]
    # Each run stores only its own change: AdvUnlearn the text encoder, pruning its masks alone
    assert second["edit"]["components"] == ["text_encoder"]
    assert third["edit"]["tensors"] == 0 and third["edit"]["zeroed_entries"] > 0
    assert [e["targets"] for e in erased_concepts(third)] == [["dotted"], ["striped", "noisy"], ["checkered"]]
    assert list(second["extra"]["targets"]["per_target"]) == ["striped", "noisy"]  # two concepts in one CLI run


def test_load_erased_of_a_chain_applies_every_edit_in_order(chain):
    expected = canvas()
    for run in chain.values():
        Edit.load(run).apply(expected)
    loaded = load_erased(chain["prune"], device="cpu")
    want = params(expected)
    assert all(torch.equal(v, want[k]) for k, v in params(loaded).items())
    # from the original, or from the pipeline of an earlier run: the rest of the chain is applied
    assert fingerprint(load_erased(chain["prune"], base=load_erased(chain["esd"], device="cpu"))) == fingerprint(expected)
    # the app's merged edit is the same weights
    merged = canvas()
    chain_edit(chain["prune"]).apply(merged)
    assert fingerprint(merged) == fingerprint(expected)


def test_a_chain_with_a_missing_or_replaced_run_is_refused_in_one_line(chain, tmp_path, capsys):
    copied = {name: tmp_path / run.name for name, run in chain.items()}
    for name, run in chain.items():
        shutil.copytree(run, copied[name])
    # the copies find each other by their relative paths (the originals are still in place)
    assert [p for p, _ in chain_links(copied["prune"])][:2] == [copied["esd"], copied["advunlearn"]]

    # another base: not the chain's original, nor any earlier run's pipeline
    other = canvas()
    with torch.no_grad():
        other.unet.conv_in.bias.add_(1.0)
    with pytest.raises(ErasureInputError) as exc:
        load_erased(copied["prune"], base=other)
    assert "differ from the model this edit was made for" in one_line(exc)

    # an earlier run whose edit changed: it no longer produces what the next run was erased from
    from safetensors.torch import load_file, save_file

    stored = load_file(str(copied["esd"] / "edit.safetensors"))
    save_file({k: v + 0.5 if v.is_floating_point() else v for k, v in stored.items()},
              str(copied["esd"] / "edit.safetensors"), metadata={"format": "erasure-run", "method": "esd"})
    with pytest.raises(ErasureInputError) as exc:
        load_erased(copied["advunlearn"], device="cpu")
    assert "does not produce the model" in one_line(exc)

    # an earlier run's folder now holding another run
    shutil.rmtree(copied["esd"])
    shutil.copytree(chain["prune"], copied["esd"])
    assert "now holds another" in _refused(copied["advunlearn"])

    # the first run deleted (here and where the absolute path points: moved away)
    shutil.rmtree(copied["esd"])
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(copied["advunlearn"], moved / "adv")
    record = json.loads((moved / "adv" / "manifest.json").read_text())
    record["chain"]["runs"][0]["path"] = str(tmp_path / "deleted")
    (moved / "adv" / "manifest.json").write_text(json.dumps(record))
    message = _refused(moved / "adv")
    assert "which is missing" in message and "esd: dotted" in message
    # the CLI refuses to continue it in one line, before any weight loads
    code, _, err = run_cli(capsys, "erase", "--method", "esd", "--model", moved / "adv", "--concept", "noisy",
                           "--kind", "style", "--out", tmp_path / "next")
    assert code == 2 and "which is missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "next").exists()


def _refused(run: Path) -> str:
    with pytest.raises(ErasureInputError) as exc:
        load_erased(run, device="cpu")
    return one_line(exc)


def test_python_chains_continue_on_the_same_pipeline(tmp_path):
    pipe = canvas()
    erase(pipe, ErasureRequest(["noisy"], kind="style"), "prune", out=tmp_path / "a", **TINY["prune"])
    erase(pipe, ErasureRequest(["outline"], kind="style"), "esd", out=tmp_path / "b", **TINY["esd"])
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [r["targets"] for r in manifest["chain"]["runs"]] == [["noisy"]]
    assert fingerprint(load_erased(tmp_path / "b", device="cpu")) == fingerprint(pipe)


def test_no_chain_after_an_sfd_one_step_generator(tmp_path, capsys):
    erase(canvas(), ErasureRequest(["dotted"], kind="style"), "sfd", out=tmp_path / "sfd", **TINY["sfd"])
    with pytest.raises(ErasureInputError) as exc:
        erase(load_erased(tmp_path / "sfd", device="cpu"), ErasureRequest(["striped"], kind="style"), "esd",
              out=tmp_path / "after", **TINY["esd"])
    assert "one-step generator" in one_line(exc) and "generator_init" in str(exc.value)
    assert not (tmp_path / "after").exists()
    code, _, err = run_cli(capsys, "erase", "--method", "esd", "--model", tmp_path / "sfd", "--concept", "striped",
                           "--kind", "style", "--out", tmp_path / "after")
    assert code == 2 and "one-step generator" in err and not (tmp_path / "after").exists()


# ----------------------------------------------------------------------------- the app's erase tab
def test_app_erase_tab_starts_from_a_run_of_the_runs_folder(chain, tmp_path):
    from app import erasing

    runs = tmp_path / "runs"
    shutil.copytree(chain["esd"], runs / "esd-dotted")
    assert erasing.base_choices(runs) == [CANVAS, "esd-dotted"]
    form = dict(method="prune", kind="style", concept="noisy", preset="canvas-mini-style", steps=None, name="next",
                settings="ddim_steps=4\ntau=2\nseeds=1", max_steps=10)
    for base, message in (("../esd-dotted", "not a run name"), ("nope", "no such run"),
                          (str(chain["esd"]), "not a run name")):
        with pytest.raises(ErasureInputError, match=message):
            erasing.check_job(runs, base=base, **form)
    job = erasing.check_job(runs, base="esd-dotted", **form)
    assert job.base_run == runs / "esd-dotted"
    erasing.run_job(job, device="cpu")
    manifest = json.loads((runs / "next" / "manifest.json").read_text())
    assert [r["targets"] for r in manifest["chain"]["runs"]] == [["dotted"]]
    assert manifest["chain"]["runs"][0]["relative"] == "../esd-dotted"


# ----------------------------------------------------------------------------- evaluation
def _manifest(targets, kind="style", chain=None) -> dict:
    m = {"method": "esd", "request": {"targets": targets, "kind": kind}, "base": {"fingerprint": "sha256:x"}}
    if chain:
        m["chain"] = {"origin": {"source": CANVAS, "fingerprint": "sha256:o"},
                      "runs": [{"path": f"/runs/{i}", "method": "doco", "kind": k, "targets": t, "fingerprint": "sha256:f"}
                               for i, (t, k) in enumerate(chain)]}
    return m


def test_canvas_suite_counts_every_concept_erased_along_a_chain():
    from erasure.evaluation.suites.canvas import canvas_erased
    from erasure.pipelines.canvas.render import STYLES

    def names(manifest):
        kind, idx = canvas_erased(manifest)
        return kind, [STYLES[i] for i in idx]

    assert names(_manifest(["dotted", "striped style"])) == ("style", ["dotted", "striped"])
    end = _manifest(["noisy"], chain=[(["dotted"], "style"), (["striped", "dotted"], "style")])
    assert names(end) == ("style", ["dotted", "striped", "noisy"])
    with pytest.raises(ErasureInputError, match="styles and objects"):
        canvas_erased(_manifest(["noisy"], chain=[(["star"], "object")]))


class _Judge:
    """A hand-made judge: each image's colour says what it 'sees' (red: style index, green: object index)."""

    class config:
        from erasure.pipelines.canvas.render import OBJECTS as objects, STYLES as styles

    def __call__(self, x: torch.Tensor):
        return (x[:, 1, 0, 0] * 255 / 10).round().long(), (x[:, 0, 0, 0] * 255 / 10).round().long()


def _image(style: int, obj: int) -> Image.Image:
    return Image.new("RGB", (2, 2), (style * 10, obj * 10, 0))


def test_canvas_scores_of_a_two_style_run_and_a_chain_end_on_hand_made_judgements():
    from erasure.evaluation.suites.canvas import canvas_cases, canvas_erased, score_canvas

    cases = canvas_cases()
    dotted, striped, noisy = 2, 1, 6

    def judged(forgotten: dict[int, int]):
        """One image per case, seen as its own style and object except the styles in ``forgotten``,
        seen as another style on the first ``n`` objects."""
        return [_image(forgotten_style(c, forgotten), c.object) for c in cases]

    def forgotten_style(case, forgotten):
        n = forgotten.get(case.style)
        return (case.style + 1) % 8 if n is not None and case.object < n else case.style

    # a run that erased dotted and striped: 8 of 8 dotted and 4 of 8 striped generations lost their style
    kind, idx = canvas_erased(_manifest(["dotted", "striped"]))
    scores = score_canvas(judged({dotted: 8, striped: 4}), cases, 1, kind, idx, evaluator=_Judge())
    assert scores["per_target_UA"] == {"striped": 0.5, "dotted": 1.0}
    assert scores["UA"] == 0.75  # the mean over the erased concepts
    assert scores["IRA"] == 1.0 and scores["counts"]["IRA"] == 6 * 8  # only the six styles never erased
    assert scores["CRA"] == 1.0

    # the end of a chain (dotted, then striped, then noisy): all three count as erased; a style no run
    # erased that lost its look lowers IRA
    kind, idx = canvas_erased(_manifest(["noisy"], chain=[(["dotted"], "style"), (["striped"], "style")]))
    scores = score_canvas(judged({dotted: 8, striped: 8, noisy: 2, 0: 4}), cases, 1, kind, idx, evaluator=_Judge())
    assert scores["per_target_UA"] == {"striped": 1.0, "dotted": 1.0, "noisy": 0.25}
    assert scores["UA"] == pytest.approx(0.75)
    assert scores["counts"]["IRA"] == 5 * 8 and scores["IRA"] == pytest.approx(1 - 4 / 40)


def test_reports_and_compare_say_what_each_run_removed(chain):
    from erasure.evaluation.compare import compare_runs, comparison_markdown
    from erasure.evaluation.report import markdown_report, per_target_line

    rows = compare_runs([chain["esd"], chain["prune"]])
    text = comparison_markdown(rows)
    assert "| dotted (style) |" in text
    assert "| checkered (style); before: dotted by esd; striped, noisy by advunlearn |" in text
    entry = {"run": str(chain["prune"]), "label": "prune", "method": "prune", "kind": "style", "targets": ["checkered"],
             "erased": rows[1]["erased"], "cost": {}, "grid": "grid.png",
             "before": {"UA": 0.0, "per_target_UA": {"dotted": 0.0, "checkered": 0.1}},
             "after": {"UA": 0.5, "per_target_UA": {"dotted": 0.9, "checkered": 0.1}}}
    assert per_target_line(entry) == ("UA per erased concept (original -> erased): dotted 0.0% -> 90.0%, "
                                      "checkered 10.0% -> 10.0%.")
    metrics = {"suite": "canvas", "original": CANVAS, "judge": "j", "prompts": 64, "runs": [entry],
               "sampling": {"seeds": [0], "scheduler": "ddim", "steps": 2, "guidance": 3.0},
               "columns": [{"key": "UA", "label": "UA", "higher_is_better": True}]}
    report = markdown_report(metrics)
    assert "checkered (style); before: dotted by esd; striped, noisy by advunlearn" in report
    assert "UA per erased" in report


def test_evaluate_scores_a_chain_end_on_every_concept_its_chain_erased(chain, tmp_path):
    from erasure.evaluation import SamplingSettings, evaluate_runs

    settings = SamplingSettings(steps=2, guidance=3.0, seeds=[0], batch_size=64)
    metrics = evaluate_runs(CANVAS, [chain["prune"]], out=tmp_path / "eval", settings=settings)
    (entry,) = metrics["runs"]
    assert [e["targets"] for e in entry["erased"]] == [["dotted"], ["striped", "noisy"], ["checkered"]]
    assert set(entry["after"]["per_target_UA"]) == {"dotted", "striped", "noisy", "checkered"}
    assert entry["after"]["counts"]["IRA"] == 4 * 8  # the four styles no run of the chain erased
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "before: dotted by esd; striped, noisy by advunlearn" in report and "UA per erased concept" in report
