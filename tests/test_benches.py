"""The benches in bench/, kept from rotting: each runs at its smallest settings, and the committed
results' pages are what the benches write from their JSON.

Every bench runs as a user runs it (``python bench/NAME.py ...``, a fresh process, offline, CPU),
with tiny erasures (two training steps), one seed and one sampling step, writing its JSON and
markdown into a temporary ``--results`` folder and its runs into a temporary ``--out``: nothing
under bench/results/, bench/runs/ or docs/ is touched. The numbers of such runs mean nothing; the
tests check that every row and key the bench reports is there.

``--report-only`` (``--skip-measure`` for bench/sd_memory.py) rewrites a bench's markdown from its
JSON; run on a copy of the committed JSON, it must give the committed markdown byte for byte.

Not run here: bench/gpu.py (tests/test_gpu_bench.py runs its ``--tiny`` mode); bench/sd15_random.py
(it builds Stable Diffusion 1.5 at full size: about 4.3 GB of memory per copy and 8.6 GB of disk,
minutes on a CPU, and has no smaller mode, since checking SD 1.5's real parameter counts is its
point); bench/sd_scale.py and bench/sd_memory.py measure at SD's full size, so only their
report modes run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
COMMITTED = BENCH / "results"

#: What every canvas-suite bench is run with: one seed, one DDIM step, one style, no object.
CANVAS = ["--styles", "dotted", "--objects", "--seeds", "0", "--sampling-steps", "1"]
#: ESD in two steps (its DDIM trajectory in two steps too).
TINY_ESD = ["steps=2", "ddim_steps=2", "precompute_batch=8", "checkpoint_every=0"]


def run_bench(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def sets(flag: str, items: list[str]) -> list[str]:
    return [part for item in items for part in (flag, item)]


def written(results: Path, name: str) -> tuple[dict, str]:
    """The bench's JSON and markdown."""
    return json.loads((results / f"{name}.json").read_text()), (results / f"{name}.md").read_text()


def rows(markdown: str, first: str) -> list[str]:
    """The rows of the table whose header starts with ``first``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |")) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def assert_canvas_scores(run: dict) -> None:
    for side in ("before", "after"):
        assert {"UA", "IRA", "CRA", "fid", "kid", "clip_others"} <= set(run[side]), side
        assert all(0 <= run[side][k] <= 1 for k in ("UA", "IRA", "CRA")), run[side]


def test_esd_canvas(tmp_path):
    run_bench("esd_canvas", *CANVAS, *sets("--set", TINY_ESD), "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "esd_canvas")
    [run] = result["runs"]
    assert run["method"] == "esd" and run["targets"] == ["dotted"] and run["variant"] == "esd-x" and run["steps"] == 2
    assert_canvas_scores(run)
    assert run["edit_bytes"] > 0 and isinstance(run["bar_met"], bool)
    assert result["sampling"]["steps"] == 1 and result["sampling"]["seeds"] == [0] and result["prompts"] == 64
    assert result["command"].startswith("python bench/esd_canvas.py --styles dotted --objects --seeds 0 --sampling-steps 1")
    assert (tmp_path / "runs" / "eval" / "report.md").is_file() and (tmp_path / "runs" / "eval" / run["grid"]).is_file()
    [line] = rows(md, "erased")
    assert line.startswith("| dotted (style) | esd-x | 2 | ")


def test_sfd_canvas(tmp_path):
    run_bench("sfd_canvas", *CANVAS, "--set", "steps=2", "--set", "batch_size=1", "--set", "checkpoint_every=0",
              "--timing-prompts", "2", "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "sfd_canvas")
    [run] = result["runs"]
    assert run["method"] == "sfd" and run["targets"] == ["dotted"] and run["steps"] == 2 and run["t_star"] > 0
    assert_canvas_scores(run)  # "before": the original's 1-step DDIM; "after": the one-step generator
    assert set(run["retained_ratio"]) == {"IRA", "CRA"} and isinstance(run["bar_met"], bool)
    speed = run["sampling"]
    assert speed["images"] == 2 and speed["one_step_unet_rows_per_image"] == 1 and speed["original_unet_rows_per_image"] == 2
    assert speed["original_seconds_per_image"] > 0 and speed["one_step_seconds_per_image"] > 0
    assert result["timing_prompts"] == 2 and Path(result["grids_dir"], run["grid"]).is_file()
    [line] = rows(md, "erased")
    assert line.startswith("| dotted (style) | 2 | ") and line.endswith(" |")
    assert "held-out render seeds" in md
    # --report-only rewrites the page from the JSON alone.
    (tmp_path / "sfd_canvas.md").unlink()
    run_bench("sfd_canvas", "--report-only", "--results", tmp_path)
    assert (tmp_path / "sfd_canvas.md").read_text() == md


def test_advunlearn_canvas(tmp_path):
    tiny_adv = ["steps=2", "warmup=0", "attack_steps=1", "ddim_steps=2", "retain_batch=2", "sample_pool=4",
                "precompute_batch=4", "checkpoint_every=0"]
    run_bench("advunlearn_canvas", *CANVAS, *sets("--set", tiny_adv), *sets("--esd-set", TINY_ESD),
              "--asr-seeds", "0", "--asr-steps", "1", "--teacher-samples", "2", "--out", tmp_path / "runs",
              "--results", tmp_path)
    result, md = written(tmp_path, "advunlearn_canvas")
    assert [r["method"] for r in result["runs"]] == ["esd", "advunlearn"]
    for run in result["runs"]:
        assert_canvas_scores(run)
        assert run["asr"]["seeds"] == [0] and 0 <= run["asr"]["asr"] <= 1 and 0 <= run["asr"]["clean_rate"] <= 1
        assert run["asr"] == run["robustness"]["attack"]["after"]  # the canvas suite's attack
        assert "attack_success_rate" in run["after"] and "paraphrase_recognition" in run["after"]
    adv = result["runs"][1]
    assert isinstance(adv["asr_below_esd"], bool) and adv["bar_met"] == (adv["accuracy_bar_met"] and adv["asr_below_esd"])
    assert result["attack"]["steps"] == 1 and result["attack"]["tokens"] == 1 and result["teacher_samples"] == 2
    assert set(result["original_asr"]) == {"dotted"}
    lines = rows(md, "erased")
    assert [line.split(" | ")[1] for line in lines] == ["esd", "advunlearn"]
    assert "ASR of the original model (no erasure) on the same attack: dotted: " in md


def test_doco_canvas(tmp_path):
    run_bench("doco_canvas", *CANVAS, "--ablation", "--paraphrases", "1", "--steps", "2", "--anchor-images", "2",
              "--set", "anchor_steps=2", "--set", "batch_size=2", "--set", "anchor_batch=2",
              "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "doco_canvas")
    assert [r["label"] for r in result["runs"]] == ["doco (projection)", "esd"]
    for run in result["runs"]:
        assert_canvas_scores(run)
        for side in ("before", "after"):
            para = run["paraphrase"][side]
            assert para["counts"]["UA"] == 8 and para["counts"]["IRA"] == 56  # template 1's 64 captions, 1 seed
        assert run["steps"] == 2 and isinstance(run["bar_met"], bool)
    assert result["train_templates"] == [0] and result["paraphrase_templates"] == [1]
    assert [line.split(" | ")[1] for line in rows(md, "erased")] == ["doco (projection)", "esd"]


def test_prune_canvas(tmp_path):
    picture = tmp_path / "prune-memorization.png"
    run_bench("prune_canvas", "--seeds", "0", "--per-pair", "1", "--sampling-steps", "1", "--set", "ddim_steps=2",
              "--set", "seeds=1", "--set", "tau=2", "--out", tmp_path / "runs", "--picture", picture, "--results", tmp_path)
    result, md = written(tmp_path, "prune_canvas")
    assert 0 < result["threshold"]["threshold"] <= 1 and result["threshold"]["renders_per_pair"] == 1
    m = result["memorized"]
    for side in ("before", "after"):
        s = m[side]
        assert 0 <= s["memorized_share"] <= 1 and len(s["per_caption_share"]) == 8 and -1 <= s["similarity_mean"] <= 1
        assert set(s["utility"]) == {"object_accuracy", "style_accuracy"}
        assert len(s["robustness"]) == 5
    assert m["pruned_weights"] > 0 and m["config"]["tau"] == 2
    assert set(result["bar"]) == {"below_threshold_after", "utility_drop_points", "met"}
    assert result["style"]["pruned_weights"] > 0 and result["style"]["esd"] is None  # no esd_canvas.json beside it
    assert_canvas_scores(result["style"]["run"])
    assert picture.is_file()
    assert len(rows(md, "attempt")) == 5 and [line.split(" | ")[0] for line in rows(md, "method")] == ["| prune"]


def write_threshold(results: Path) -> None:
    """The one thing the sweep and the ceiling read from prune_canvas's results."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "prune_canvas.json").write_text(json.dumps({"threshold": {"threshold": 0.9}}))


def assert_memorization_scores(s: dict) -> None:
    assert 0 <= s["memorized_share"] <= 1 and len(s["per_caption_share"]) == 8 and s["threshold"] == 0.9
    assert set(s["utility"]) == {"object_accuracy", "style_accuracy"}


def test_prune_sweep(tmp_path):
    write_threshold(tmp_path)
    run_bench("prune_sweep", "--grid", "0.01,2", "--seeds", "0", "--sampling-steps", "1", "--set", "ddim_steps=2",
              "--set", "seeds=1", "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "prune_sweep")
    assert result["threshold"] == 0.9 and result["seeds"] == [0]
    assert_memorization_scores(result["original"])
    [point] = result["points"]
    assert point["rho"] == 0.01 and point["tau"] == 2 and point["fraction_of_unet"] > 0
    assert_memorization_scores(point)
    lines = rows(md, "rho")
    assert len(lines) == 2 and lines[0].startswith("| original | | 0 | ") and lines[1].startswith("| 0.01 | 2 | ")


def test_prune_ceiling(tmp_path):
    write_threshold(tmp_path)
    run_bench("prune_ceiling", "--seeds", "0", "--sampling-steps", "1", "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "prune_ceiling")
    assert_memorization_scores(result["original"])
    assert len(result["groups"]) == 7
    for group in result["groups"]:
        assert 0 < group["fraction_of_unet"] < 1
        assert_memorization_scores(group)
    lines = rows(md, "zeroed")
    assert len(lines) == 8 and lines[0].startswith("| nothing (original) | 0 | ")


def test_canvas_quality(tmp_path):
    grid = tmp_path / "canvas-mini-grid.png"
    run_bench("canvas_quality", "--seeds", "1", "--steps", "1", "--train-per-pair", "1", "--out", tmp_path, "--grid", grid)
    result = json.loads((tmp_path / "canvas_quality.json").read_text())
    assert set(result["evaluator_real"]) == {"object_acc", "style_acc"}
    assert {"object_acc", "style_acc", "both_acc", "per_object", "per_style"} <= set(result["generations"])
    assert set(result["memorization"]) == {"evaluator", "pixels"}
    for m in result["memorization"].values():
        assert len(m["reproduced_share_per_target"]) == 8 and m["threshold"] is not None
    assert result["sampling_s_per_image_batched"] > 0
    assert grid.is_file() and (tmp_path / "canvas-mini-memorization.png").is_file()


def test_lora_rank(tmp_path):
    run_bench("lora_rank", *CANVAS, "--ranks", "1", "--energies", "0.99", *sets("--set", TINY_ESD),
              "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "lora_rank")
    assert [r["lora"] for r in result["rows"]] == ["full edit", "r1", "e0.99"]
    full, r1, e99 = result["rows"]
    assert r1["max_rank"] == 1 and r1["relative_error"] > e99["relative_error"] >= 0
    assert e99["relative_error"] <= 0.1 + 1e-6  # each tensor keeps 99% of its delta's squared norm
    for row in result["rows"]:
        assert all(0 <= row["after"][k] <= 1 for k in ("UA", "IRA", "CRA"))
    assert [line.split(" | ")[1] for line in rows(md, "erased")] == ["full edit", "r1", "e0.99"]


def test_trajectory_reuse(tmp_path):
    tiny_adv = ["steps=2", "warmup=0", "attack_steps=1", "ddim_steps=2", "retain_batch=2", "sample_pool=4",
                "precompute_batch=4", "checkpoint_every=0"]
    run_bench("trajectory_reuse", *CANVAS, "--advunlearn-styles", "dotted", *sets("--set", [f"esd.{s}" for s in TINY_ESD]),
              *sets("--set", [f"advunlearn.{s}" for s in tiny_adv]), "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "trajectory_reuse")
    assert [(r["method"], r["concept"], r["seed"]) for r in result["rows"]] == [("esd", "dotted", 0), ("advunlearn", "dotted", 0)]
    for r in result["rows"]:
        for mode in ("per-step", "shared"):
            m = r[mode]
            assert all(0 <= m["after"][k] <= 1 for k in ("UA", "IRA", "CRA")) and isinstance(m["bar_met"], bool)
            assert m["sample_steps"]["executed"] > 0 and m["wall_seconds"] > 0
            assert f"/{mode}/seed0/" in m["run"]
        assert set(r["difference"]) == {"UA", "IRA", "CRA"} and isinstance(r["holds"], bool)
        assert all(d["noise"] >= 1 / 16 - 1e-9 for d in r["difference"].values())  # at least one image of 16
    assert result["overrides"]["esd"]["steps"] == 2
    assert len(rows(md, "erased")) == 6 and "- `configs/esd/canvas-mini-style.yaml`: " in md
    assert "- `configs/advunlearn/canvas-mini-style.yaml`: " in md
    assert "--set esd.steps=2" in result["command"]


def test_trajectory_reuse_refuses_the_modes_own_keys(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "trajectory_reuse.py"), "--set", "esd.trajectories=shared",
                           "--out", tmp_path, "--results", tmp_path], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "trajectories and seed are the bench's own" in done.stderr
    assert not list(tmp_path.iterdir())


def test_many_concepts(tmp_path):
    tiny_sfd = ["steps=2", "batch_size=1", "checkpoint_every=0"]
    run_bench("many_concepts", "--methods", "esd", "sfd", "--ks", "1", "2", "--requests", "2", "--seeds", "0",
              "--sampling-steps", "1", *sets("--set", [f"esd.{s}" for s in TINY_ESD]),
              *sets("--set", [f"sfd.{s}" for s in tiny_sfd]), "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "many_concepts")
    assert [r["k"] for r in result["scalability"]["esd"]] == [1, 2]
    two = result["scalability"]["esd"][1]
    assert set(two["per_target_UA"]) == {"dotted", "striped"} and two["counts"]["IRA"] == 6 * 8  # 6 styles kept, 1 seed
    esd = result["sustainability"]["esd"]
    assert esd["refused"] is None and len(esd["requests"]) == 2
    first, second = esd["requests"]
    assert first["run"] == result["scalability"]["esd"][0]["run"]  # the first request is the k = 1 run
    assert set(second["per_target_UA"]) == {"dotted", "striped"}  # the chain's end scores both
    assert second["chain_edit_bytes"] == first["edit_bytes"] + second["edit_bytes"] > 0
    assert second["chain_seconds"] >= second["seconds"]
    sfd = result["sustainability"]["sfd"]  # an SFD run is a one-step generator: no chain starts from it
    assert len(sfd["requests"]) == 1 and "sfd" in sfd["refused"].lower()
    assert len(rows(md, "method")) == 4 and "refused: " in md
    for name in ("scalability", "sustainability"):
        assert (tmp_path / f"many_concepts_{name}.png").stat().st_size > 1000
    # --report-only rewrites the page and the plots from the JSON alone.
    for f in ("many_concepts.md", "many_concepts_scalability.png"):
        (tmp_path / f).unlink()
    run_bench("many_concepts", "--report-only", "--results", tmp_path)
    assert (tmp_path / "many_concepts.md").read_text() == md and (tmp_path / "many_concepts_scalability.png").is_file()


def test_red_team(tmp_path):
    tiny_attacks = ["unlearndiffatk.steps=2", "unlearndiffatk.iterations=2", "unlearndiffatk.target_steps=1",
                    "ring-a-bell.steps=2", "ring-a-bell.population=8"]
    run_bench("red_team", "--methods", "esd", *CANVAS, "--attacks", "unlearndiffatk", "ring-a-bell",
              "--attack-seeds", "0", "--memorization-methods", "prune", *sets("--set", [f"esd.{s}" for s in TINY_ESD]),
              "--set", "prune.ddim_steps=2", "--set", "prune.tau=2", *sets("--attack-set", tiny_attacks),
              *sets("--memorization-set", ["membership_nonmembers=4", "membership_timesteps=2", "membership_noises=1"]),
              "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "red_team")
    (run,) = result["runs"]
    assert run["method"] == "esd" and run["targets"] == ["dotted"]
    for attack in ("unlearndiffatk", "ring-a-bell"):
        record = run["robustness"]["attacks"][attack]
        assert record["after"]["attack"]["steps"] == 2 and result["original_asr"][attack]["seeds"] == [0]
    assert result["budgets"]["unlearndiffatk"].startswith("steps 2") and "population 8" in result["budgets"]["ring-a-bell"]
    (mem,) = result["memorization"]["runs"]
    assert mem["method"] == "prune" and mem["membership"]["before"]["nonmembers"] == 4
    assert 0 <= mem["after"]["membership_auc"] <= 1
    assert len(rows(md, "erased")) == 2 and len(rows(md, "method")) == 1  # the original's row, the run; the prune row
    # --update re-measures one attack of the same run and keeps the rest of the table.
    run_bench("red_team", "--methods", "esd", *CANVAS, "--attacks", "ring-a-bell", "--attack-seeds", "0",
              "--memorization-methods", *sets("--set", [f"esd.{s}" for s in TINY_ESD]),
              *sets("--attack-set", ["ring-a-bell.steps=3", "ring-a-bell.population=8"]),
              "--out", tmp_path / "runs", "--results", tmp_path, "--update")
    merged, md = written(tmp_path, "red_team")
    (run,) = merged["runs"]
    assert run["robustness"]["attacks"]["ring-a-bell"]["after"]["attack"]["steps"] == 3
    assert run["robustness"]["attacks"]["unlearndiffatk"] == result["runs"][0]["robustness"]["attacks"]["unlearndiffatk"]
    assert merged["memorization"] == result["memorization"] and merged["command"] == result["command"]
    assert "Re-measured (esd dotted (style); ring-a-bell)" in md and "--update" in md
    with pytest.raises(AssertionError, match="run the bench without --update first"):
        run_bench("red_team", "--update", "--results", tmp_path / "none")
    with pytest.raises(AssertionError, match="ATTACK.KEY=VALUE"):
        run_bench("red_team", "--attacks", "ring-a-bell", "--attack-set", "unlearndiffatk.steps=2", "--out", tmp_path / "r",
                  "--results", tmp_path / "r")


def test_phrasings(tmp_path):
    run_bench("phrasings", "--methods", "esd", "--styles", "dotted", "--train-seeds", "5", "--split", "tuning",
              "--seeds", "0", "--sampling-steps", "1", *sets("--set", [f"esd.{s}" for s in TINY_ESD]),
              "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "phrasings_tuning")
    assert not (tmp_path / "phrasings.json").exists()  # the held-out split's results are another file
    (run,) = result["runs"]
    assert run["train_seed"] == 5 and run["run"].endswith("esd/style-dotted-seed5")  # the seed reaches the method's config
    first = result["runs"][0]["scores"]
    assert set(first) == {"trained", "paraphrased", "tuning"} and all(0 <= v <= 1 for s in first.values() for v in s.values())
    assert result["templates"]["paraphrased"] == [1, 2, 3, 4] and len(result["templates"]["tuning"]) == 4
    (summary,) = result["summary"]
    assert summary["method"] == "esd" and summary["runs"] == 1 and summary["min"] == summary["mean"] == run["scores"]["tuning"]
    assert len(rows(md, "method")) == 2  # the original and the run
    (tmp_path / "phrasings_tuning.md").unlink()
    run_bench("phrasings", "--split", "tuning", "--report-only", "--results", tmp_path)
    assert (tmp_path / "phrasings_tuning.md").read_text() == md


#: Benches whose committed markdown is rewritten from their committed JSON by ``--report-only``.
#: Not here: advunlearn_canvas_asr_lr0.1 (an older run's format, without the per-run ``accuracy_bar_met``).
REGENERATED = ["esd_canvas", "advunlearn_canvas", "doco_canvas", "prune_canvas", "prune_sweep", "prune_ceiling",
               "sfd_canvas", "lora_rank", "esd_reference", "trajectory_reuse", "many_concepts", "red_team"]


@pytest.mark.parametrize("name", REGENERATED)
def test_committed_markdown_is_regenerated_byte_identical(name, tmp_path):
    shutil.copy(COMMITTED / f"{name}.json", tmp_path)
    run_bench(name, "--report-only", "--results", tmp_path, timeout=300)
    assert (tmp_path / f"{name}.md").read_bytes() == (COMMITTED / f"{name}.md").read_bytes()
    assert (tmp_path / f"{name}.json").read_bytes() == (COMMITTED / f"{name}.json").read_bytes()  # untouched


def test_sd_scale_report_only_rewrites_the_committed_results(tmp_path):
    shutil.copy(COMMITTED / "sd_scale.json", tmp_path)
    run_bench("sd_scale", "--report-only", "--out", tmp_path / "sd_scale", "--work", tmp_path / "work", timeout=300)
    for suffix in (".json", ".md"):  # the summaries and projections recomputed from the measurements
        assert (tmp_path / f"sd_scale{suffix}").read_bytes() == (COMMITTED / f"sd_scale{suffix}").read_bytes(), suffix


def test_sd_memory_skip_measure_rewrites_the_committed_results(tmp_path):
    shutil.copy(COMMITTED / "sd_memory.json", tmp_path)
    run_bench("sd_memory", "--skip-measure", "--out", tmp_path / "sd_memory", timeout=300)
    for suffix in (".json", ".md"):  # the per-preset breakdown derived again from the measured rows
        assert (tmp_path / f"sd_memory{suffix}").read_bytes() == (COMMITTED / f"sd_memory{suffix}").read_bytes(), suffix


#: A git copy of rohitgandikota/erasing (bare or not), named by the environment: the only reference
#: bench/esd_reference.py is tested against, never a stand-in; a minute of running, so not in the default suite.
ERASING_GIT = Path(os.environ["ERASING_GIT"]) if os.environ.get("ERASING_GIT") else None


def test_esd_reference(tmp_path):
    # Without --reference: one line saying what to pass, exit 2, nothing written.
    done = subprocess.run([sys.executable, str(BENCH / "esd_reference.py"), "--results", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "bench/esd_reference.py: pass --reference DIR, a checkout of https://github.com/rohitgandikota/erasing"]
    assert not list(tmp_path.iterdir())

    # With the real reference, exported from its git copy: two iterations on the tiny pipeline, one run.
    if ERASING_GIT is None or not ERASING_GIT.is_dir() or shutil.which("git") is None:
        pytest.skip("set ERASING_GIT to a git copy of rohitgandikota/erasing: the bench runs against the real one")
    archive = subprocess.run(["git", "-C", str(ERASING_GIT), "archive", "HEAD"], capture_output=True, timeout=120)
    if archive.returncode != 0:
        pytest.skip(f"git archive failed in {ERASING_GIT}: {archive.stderr.decode(errors='replace').strip()}")
    import io
    import tarfile

    reference = tmp_path / "erasing"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(reference, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.10.12+
    run_bench("esd_reference", "--reference", reference, "--pipelines", "tiny", "--iterations-tiny", "2", "--runs", "1",
              "--out", tmp_path / "runs", "--results", tmp_path)
    result, md = written(tmp_path, "esd_reference")
    assert result["command"] == ("python bench/esd_reference.py --reference DIR --pipelines tiny --iterations-tiny 2 --runs 1 "
                                 f"--ours-set trajectories=per-step --ours-set trajectories=shared --out {(tmp_path / 'runs').resolve()}")
    ref = result["reference"]
    assert ref["commit"] == "unknown"  # an export: no git work tree
    assert [s["name"] for s in ref["substitutions"]] == ["model path", "dtype", "resolution", "seed"] and ref["shims"] == []
    assert result["threads"]["torch_threads"] == 1 and len(result["load_average"]["end"]) == 3
    [tiny] = result["pipelines"]
    assert tiny["name"] == "tiny" and tiny["resolution"] == 32 and tiny["iterations"] == 2 and tiny["unet_parameters"] > 0
    assert sorted(tiny["cost_per_sample_step"], key=int) == ["1", "8", "32"] and min(tiny["cost_per_sample_step"].values()) > 0
    # The reference's depths as replayed here are the ones it printed.
    assert tiny["draws_reproducible"] is True and 0 <= tiny["reference"]["sample_steps"] <= 2 * 49
    assert [o["label"] for o in tiny["ours"]] == ["trajectories=per-step", "trajectories=shared"]
    per_step, shared = (o["sample_steps"] for o in tiny["ours"])
    assert per_step["points"] == shared["points"] == 2 and per_step["needed"] == per_step["independent"]
    assert shared["needed"] <= per_step["needed"] and shared["trajectories"] <= shared["points"]
    for side in [tiny["reference"], *tiny["ours"]]:
        assert len(side["runs"]) == 1 and side["median_seconds"] > 0
    lines = rows(md, "pipeline")
    assert [line.split(" | ")[2] for line in lines] == ["trajectories=per-step", "trajectories=shared"]
    assert all(line.startswith("| tiny (UNet ") and " | 2 | " in line for line in lines)
    # --report-only rewrites the page from the JSON alone.
    (tmp_path / "esd_reference.md").unlink()
    run_bench("esd_reference", "--report-only", "--results", tmp_path)
    assert (tmp_path / "esd_reference.md").read_text() == md
