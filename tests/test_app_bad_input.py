"""The comparison app under bad input (issue 28): every endpoint's refusals, damaged runs, bursts.

Through gradio_client, against one live app per module (tests/conftest.py: ``runs_dir``,
``app_url``, ``client``) on the tiny random SD pipeline: each bad value sent to each endpoint the
app exposes is refused with a one-line message (an ``AppError``, no traceback, the server logs
none), nothing is written into the runs folder for it, and the app answers good requests
afterwards. A burst of concurrent good and bad requests is answered or refused with a message,
none lost; a full queue refuses with a message too. Requests sample 1 step on 32-pixel images.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

#: Generous bounds for a busy 2-core machine; an idle one answers in well under a second.
ANSWER_TIMEOUT = 240.0
GOOD_SETTINGS = "ddim_steps=2\nprecompute_batch=1\ncheckpoint_every=0"
MODEL = object()  # stands for the tiny SD folder, known only once the fixture has made it
COMPARE_FIELDS = ("model", "runs", "prompt", "negative", "seeds", "steps", "guidance")
GOOD_COMPARE = dict(model=MODEL, runs=["cat"], prompt="a cat", negative="", seeds="0", steps=1, guidance=5.0)
ERASE_FIELDS = ("method", "kind", "concept", "preset", "steps", "name", "settings", "base")
GOOD_ERASE = dict(method="esd", kind="style", concept="dotted", preset="canvas-mini-style", steps=1, name="fresh",
                  settings=GOOD_SETTINGS, base="canvas-mini")


# -- helpers


def _compare_args(tiny_sd, **changes) -> list:
    values = {**GOOD_COMPARE, **changes}
    return [str(tiny_sd.folder.resolve()) if values[f] is MODEL else values[f] for f in COMPARE_FIELDS]


def _erase_args(**changes) -> list:
    values = {**GOOD_ERASE, **changes}
    return [values[f] for f in ERASE_FIELDS]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (hidden ones too) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def _checked_message(message: str, runs_dir: Path) -> str:
    """``message`` is one readable line: no traceback, not Gradio's or the app's text for a crash."""
    assert message and "\n" not in message, message
    assert "Traceback" not in message and 'File "' not in message, message
    assert "upstream Gradio app has raised an exception" not in message  # an exception the app did not turn into a message
    assert "the app failed on this request" not in message  # the app's catch-all: a bug
    assert str(runs_dir.resolve()) not in message  # where the runs folder lives stays on the server
    return message


def _refused(call, message: str, runs_dir: Path) -> str:
    """Run ``call``: it must be refused with a message matching ``message``, writing nothing."""
    before = _snapshot(runs_dir)
    with pytest.raises(AppError) as caught:
        call()
    text = _checked_message(caught.value.message, runs_dir)
    assert re.search(message, text), f"{message!r} not in {text!r}"
    assert _snapshot(runs_dir) == before, "a refused request wrote into the runs folder"
    return text


def _value(output):
    return output["value"] if isinstance(output, dict) and output.get("__type__") == "update" else output


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(autouse=True)
def _no_server_errors(caplog, capfd):
    """No request in these tests may end as an error in the server's log or a traceback on its stderr."""
    caplog.set_level(logging.INFO, logger="erasure.app")
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert "Traceback" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def damaged_runs(runs_dir) -> Path:
    """Beside conftest's corrupt, truncated, unfinished and evaluation folders: runs damaged in
    the other ways a run folder can be, each made from a copy of the finished run "cat"."""
    from safetensors.torch import load_file, save_file

    def copy(name: str) -> Path:
        shutil.copytree(runs_dir / "cat", runs_dir / name)
        return runs_dir / name

    half = copy("half")  # the edit written, the manifest (written last) not yet
    (half / "manifest.json").unlink()
    (half / "metrics.json").unlink()
    copy(".cat-writing")  # erasure.atomic's hidden temporary name while a run is being written
    (copy("no-edit") / "edit.safetensors").unlink()
    (copy("not-a-manifest") / "manifest.json").write_text("[1, 2]")
    garbled = copy("garbled") / "edit.safetensors"
    garbled.write_bytes(b"\xff" * 64 + garbled.read_bytes()[64:])
    # A header safetensors cannot parse, of the right length: the listing's header check passes it.
    bad_dtype = copy("bad-dtype") / "edit.safetensors"
    data = bad_dtype.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert b'"F32"' in data[8:8 + header_len]
    bad_dtype.write_bytes(data[:8] + data[8:8 + header_len].replace(b'"F32"', b'"X32"') + data[8 + header_len:])
    # A readable edit whose first tensor has another shape than the base model's parameter.
    wrong_shape = copy("wrong-shape") / "edit.safetensors"
    tensors = load_file(str(wrong_shape))
    first = sorted(k for k in tensors if tensors[k].dim() > 1)[0]
    tensors[first] = tensors[first].reshape(-1)
    save_file(tensors, str(wrong_shape))
    manifest = json.loads((copy("other-base") / "manifest.json").read_text())
    manifest["base"].update(source="/models/sd-2", fingerprint="sha256:" + "0" * 64)
    (runs_dir / "other-base" / "manifest.json").write_text(json.dumps(manifest))
    return runs_dir


# -- what the app exposes


def test_the_api_is_the_three_endpoints_swept_here(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/compare", "/erase", "/runs"}
    assert not api["unnamed_endpoints"]
    assert [p["parameter_name"] for p in api["named_endpoints"]["/compare"]["parameters"]] == list(COMPARE_FIELDS)
    assert [p["parameter_name"] for p in api["named_endpoints"]["/erase"]["parameters"]] == list(ERASE_FIELDS)


# -- the compare tab

TEXT = "expected text"
NUMBER = "expected a number"
NOT_A_RUN = "not a run name"
NOT_A_LIST = "expected a list of run names"

COMPARE_CASES = [
    # prompt: empty, too long, not text
    ("prompt", "", "enter a prompt"),
    ("prompt", "   ", "enter a prompt"),
    ("prompt", None, "enter a prompt"),
    ("prompt", "x" * 501, "at most 500"),
    ("prompt", "x" * 100_000, "at most 500"),
    ("prompt", 5, f"prompt: {TEXT}"),
    ("prompt", ["a cat"], f"prompt: {TEXT}"),
    ("prompt", {"text": "a cat"}, f"prompt: {TEXT}"),
    ("negative", "x" * 501, "negative prompt is 501 characters"),
    ("negative", 5, f"negative prompt: {TEXT}"),
    # seeds: malformed, negative, too many, not text
    ("seeds", "abc", "bad seeds"),
    ("seeds", "1,,2", "bad seeds"),
    ("seeds", "0-3-5", "bad seeds"),
    ("seeds", "3-1", "runs backwards"),
    ("seeds", "-1", "bad seeds"),
    ("seeds", "0-8", "at most 8"),
    ("seeds", "0-1000000000", "more than 10000 seeds"),
    ("seeds", "99999999999999999999999", "below 2\\*\\*63"),
    ("seeds", 5, f"seeds: {TEXT}"),
    ("seeds", ["0"], f"seeds: {TEXT}"),
    # steps and guidance: out of range, fractions, not numbers
    ("steps", 0, "between 1 and 100"),
    ("steps", -1, "between 1 and 100"),
    ("steps", 101, "between 1 and 100"),
    ("steps", 10**9, "between 1 and 100"),
    ("steps", 1.5, "whole number"),
    ("steps", "2", f"steps: {NUMBER}"),
    ("steps", "abc", f"steps: {NUMBER}"),
    ("steps", None, f"steps: {NUMBER}"),
    ("steps", [1], f"steps: {NUMBER}"),
    ("steps", True, f"steps: {NUMBER}"),
    ("guidance", -1, "between 0 and 30"),
    ("guidance", 31, "between 0 and 30"),
    ("guidance", 1e300, "between 0 and 30"),
    ("guidance", "nan", f"guidance: {NUMBER}"),
    ("guidance", "5", f"guidance: {NUMBER}"),
    ("guidance", None, f"guidance: {NUMBER}"),
    # run names: traversal, absolute, hidden, unknown, too many, not a list of texts
    ("runs", ["../x"], NOT_A_RUN),
    ("runs", ["../../etc"], NOT_A_RUN),
    ("runs", ["/etc"], NOT_A_RUN),
    ("runs", ["cat/../../x"], NOT_A_RUN),
    ("runs", ["cat/../dog"], NOT_A_RUN),
    ("runs", ["cat\\..\\dog"], NOT_A_RUN),
    ("runs", [".cat-writing"], NOT_A_RUN),
    ("runs", ["cat\x00"], NOT_A_RUN),
    ("runs", ["x" * 1000], NOT_A_RUN),
    ("runs", ["missing"], "no such run"),
    ("runs", ["cat", "dog", "one-step", "eval", "corrupt"], "compare at most 4"),
    ("runs", "cat", NOT_A_LIST),
    ("runs", [5], NOT_A_LIST),
    ("runs", [["cat"]], NOT_A_LIST),
    ("runs", [None], NOT_A_LIST),
    # damaged runs: half written, corrupt, truncated, unreadable, for another base
    ("runs", ["half"], "cannot be used.*no manifest.json"),
    ("runs", ["unfinished"], "unfinished"),
    ("runs", ["corrupt"], "malformed JSON"),
    ("runs", ["not-a-manifest"], "not an erasure run manifest"),
    ("runs", ["truncated"], "truncated"),
    ("runs", ["garbled"], "not a readable safetensors file"),
    ("runs", ["no-edit"], "edit.safetensors is missing"),
    ("runs", ["bad-dtype"], "its edit file is unreadable"),
    ("runs", ["wrong-shape"], "shape"),
    ("runs", ["other-base"], "made for sd-2, not for the chosen base model"),
    ("runs", ["cat", "wrong-shape"], "shape"),  # the first run's edit is swapped out again
    ("runs", ["eval"], "not a run"),
    # base models: only those offered at start-up
    ("model", "/etc", "unknown base model"),
    ("model", "", "unknown base model"),
    ("model", None, "unknown base model"),
    ("model", "canvas-mini", "unknown base model"),
    ("model", 5, "unknown base model"),
    ("model", ["x"], "unknown base model"),
]


@pytest.mark.parametrize("field, value, message", COMPARE_CASES,
                         ids=[f"{f}-{str(v)[:24]}" for f, v, _ in COMPARE_CASES])
def test_compare_refuses_bad_input_with_a_message(client, tiny_sd, damaged_runs, field, value, message):
    _refused(lambda: client.predict(*_compare_args(tiny_sd, **{field: value}), api_name="/compare"),
             message, damaged_runs)


def test_compare_refuses_a_model_folder_not_offered_at_start_up(client, tiny_sd, tiny_sd2, runs_dir):
    for model in (str(tiny_sd2.folder), str(tiny_sd.single_file), str(tiny_sd.folder.resolve()) + "/"):
        _refused(lambda: client.predict(*_compare_args(tiny_sd, model=model, runs=[]), api_name="/compare"),
                 "unknown base model", runs_dir)


def test_compare_refuses_too_many_images(client, tiny_sd, runs_dir):
    _refused(lambda: client.predict(*_compare_args(tiny_sd, seeds="0-7", runs=["cat", "dog", "one-step"]), api_name="/compare"),
             "more than 24 images", runs_dir)


# -- the erase tab

ERASE_CASES = [
    ("method", "nope", "unknown method"),
    ("method", "", "unknown method"),
    ("method", None, "unknown method"),
    ("method", "../esd", "unknown method"),
    ("method", ["esd"], "unknown method"),
    ("kind", "nope", "unknown kind"),
    ("kind", None, "unknown kind"),
    ("kind", 5, "unknown kind"),
    ("preset", "nope", "unknown preset"),
    ("preset", "../../etc/passwd", "unknown preset"),
    ("preset", "/etc/passwd", "unknown preset"),
    ("preset", "canvas-mini-memorized", "unknown preset"),  # prune's, not esd's
    ("preset", None, "unknown preset"),
    ("preset", ["canvas-mini-style"], "unknown preset"),
    # concept: empty, too long, not text, not one the model has
    ("concept", "", "enter the concept"),
    ("concept", "   ", "enter the concept"),
    ("concept", None, "enter the concept"),
    ("concept", "x" * 201, "at most 200 characters"),
    ("concept", 5, f"concept: {TEXT}"),
    ("concept", ["dotted"], f"concept: {TEXT}"),
    ("concept", "polka", "no style 'polka'"),
    # run name: traversal, absolute, hidden, too long, not text, taken
    ("name", "../x", "run name"),
    ("name", "/etc", "run name"),
    ("name", "..", "run name"),
    ("name", ".hidden", "run name"),
    ("name", "a/b", "run name"),
    ("name", "a\\b", "run name"),
    ("name", "a\x00b", "run name"),
    ("name", "x" * 65, "run name"),
    ("name", 5, f"run name: {TEXT}"),
    ("name", ["x"], f"run name: {TEXT}"),
    ("name", "cat", "already exists"),
    ("name", " cat ", "already exists"),
    ("name", "unfinished", "already exists"),
    ("name", "corrupt", "already exists"),
    # training steps: out of range, fractions, not numbers
    ("steps", 0, "between 1 and 2000"),
    ("steps", -5, "between 1 and 2000"),
    ("steps", 2001, "between 1 and 2000"),
    ("steps", 10**30, "between 1 and 2000"),
    ("steps", 1.5, "whole number"),
    ("steps", "abc", f"steps: {NUMBER}"),
    ("steps", [1], f"steps: {NUMBER}"),
    ("steps", True, f"steps: {NUMBER}"),
    # settings: malformed lines, unknown keys (also the names that collide with parameters), caps
    ("settings", "ddim_steps", "expected KEY=VALUE"),
    ("settings", "=", "expected KEY=VALUE"),
    ("settings", "ddim_steps=[1", "unreadable value"),
    ("settings", "ddim_steps=abc", "expected an integer"),
    ("settings", "lr=", "has no value"),
    ("settings", "lr=.nan", "finite number"),
    ("settings", "lr=.inf", "finite number"),
    ("settings", "lr=1e9999", "finite number"),
    ("settings", "lr=1\nlr=2", "given more than once"),
    ("settings", "nope=1", "unknown esd setting"),
    ("settings", "method=x", "unknown esd setting"),
    ("settings", "self=1", "unknown esd setting"),
    ("settings", "config=1", "unknown esd setting"),
    ("settings", "x" * 2001, "more than 2000 characters"),
    ("settings", "\n".join(f"lr={i}" for i in range(17)), "more than 16 lines"),
    ("settings", 5, f"settings: {TEXT}"),
    ("settings", ["lr=1"], f"settings: {TEXT}"),
    ("settings", "ddim_steps=5000", "more than this app allows"),
    ("settings", "batch_size=1000", "more than this app allows"),
    ("settings", "precompute_batch=100000", "more than this app allows"),
    ("settings", "resolution=4096", "more than this app allows"),
    ("settings", "ddim_steps=0", "at least 1"),
    ("settings", "variant=foo", "expected one of"),
    ("settings", "steps=5", "given both"),
    # base: a run to continue, only a finished one inside the runs folder made on the embedded model
    ("base", "../x", "not a run name"),
    ("base", "/etc", "not a run name"),
    ("base", "nope", "no such run"),
    ("base", 5, "expected canvas-mini or a run name"),
    ("base", ["cat"], "expected canvas-mini or a run name"),
    ("base", "cat", "was not made on canvas-mini"),
    ("base", "corrupt", r"cannot be used \(broken\)"),
    ("base", "unfinished", r"cannot be used \(unfinished\)"),
]


@pytest.mark.parametrize("field, value, message", ERASE_CASES,
                         ids=[f"{f}-{str(v)[:24]}" for f, v, _ in ERASE_CASES])
def test_erase_refuses_bad_input_with_a_message(client, runs_dir, field, value, message):
    _refused(lambda: client.predict(*_erase_args(**{field: value}), api_name="/erase"), message, runs_dir)


@pytest.mark.parametrize("values, message", [
    (dict(steps=None, settings=GOOD_SETTINGS + "\nsteps=99999"), "steps 99999 is more than this app allows"),
    (dict(steps=None, settings="steps=0"), "steps: must be at least 1"),
    (dict(kind="object", concept="dotted"), "no object 'dotted'"),
    (dict(method="doco", steps=None, settings="anchor_images=100000"), "more than this app allows"),
    (dict(method="advunlearn", steps=None, settings="attack_steps=100000"), "more than this app allows"),
    (dict(method="prune", preset="method defaults", steps=None, settings="seeds=1000"), "more than this app allows"),
], ids=["settings-steps", "settings-steps-0", "object", "doco-anchors", "advunlearn-attack", "prune-seeds"])
def test_erase_refuses_costs_and_concepts_beyond_the_app(client, runs_dir, values, message):
    _refused(lambda: client.predict(*_erase_args(**values), api_name="/erase"), message, runs_dir)


# -- the runs listing


@pytest.mark.parametrize("selected", ["../x", 5, [5, None], [["cat"]]], ids=["text", "number", "numbers", "nested"])
def test_runs_refuses_a_selection_that_is_not_run_names(client, runs_dir, selected):
    _refused(lambda: client.predict(selected, api_name="/runs"), NOT_A_LIST, runs_dir)


def test_runs_drops_selected_names_that_are_no_finished_run(client, damaged_runs):
    menu, table, *_ = client.predict(["../x", "/etc", "missing", "corrupt", "wrong-shape", "cat"], api_name="/runs")
    # wrong-shape's files look whole without loading them: it is listed (and refused when compared).
    assert menu["value"] == ["wrong-shape", "cat"]
    listed = {row[0]: row[1] for row in _value(table)["data"]}
    assert ".cat-writing" not in listed and listed["half"] == "broken" and listed["garbled"] == "broken"


# -- afterwards


def test_the_app_still_serves_after_the_sweep(client, tiny_sd, runs_dir):
    """The original model comes back unchanged (no refused run's edit left in it), and an erasure still runs."""
    from erasure.app.compare import for_display
    from erasure.pipelines import generate, load_pipeline

    _, gallery, status = map(_value, client.predict(*_compare_args(tiny_sd, runs=["cat"]), api_name="/compare"))
    assert status.startswith("2 images: original, cat on seed 0; 1 steps")
    expected = generate(load_pipeline(tiny_sd.folder, device="cpu"), "a cat", seeds=[0], steps=1, guidance=5.0)
    assert np.array_equal(_pixels(gallery[0]["image"]), np.asarray(for_display(expected[0]).convert("RGB")))
    before = set(_snapshot(runs_dir))
    assert "Finished **fresh**" in client.predict(*_erase_args(), api_name="/erase")
    assert {Path(p).parts[0] for p in set(_snapshot(runs_dir)) - before} == {"fresh"}


# -- bursts


def _outcome(job) -> tuple[str, object]:
    """("answered", outputs) or ("refused", message); a job lost or hanging fails the test."""
    try:
        return "answered", job.result(timeout=ANSWER_TIMEOUT)
    except AppError as exc:
        return "refused", exc.message
    except QueueError as exc:
        return "queue full", str(exc)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"no answer within {ANSWER_TIMEOUT:.0f} s: the request was lost or hangs")


def _burst(tiny_sd) -> list[tuple[str, list, str | None]]:
    """(endpoint, arguments, the refusal expected or None for an answer): good and bad, interleaved."""
    good = [("/compare", _compare_args(tiny_sd, runs=runs, seeds=seeds), None)
            for runs in ([], ["cat"], ["dog"], ["cat", "dog"]) for seeds in ("0", "0,1")]
    bad = [("/compare", _compare_args(tiny_sd, runs=["../x"]), NOT_A_RUN),
           ("/compare", _compare_args(tiny_sd, runs=["wrong-shape"]), "shape"),
           ("/compare", _compare_args(tiny_sd, steps="abc"), NUMBER),
           ("/compare", _compare_args(tiny_sd, prompt=""), "enter a prompt"),
           ("/erase", _erase_args(name="../x"), "run name"),
           ("/runs", [5], NOT_A_LIST)]
    return [item for pair in zip(good, bad + [None] * len(good)) for item in pair if item is not None]


def test_a_burst_of_requests_is_answered_or_refused_none_lost(app_url, tiny_sd, damaged_runs):
    requests = _burst(tiny_sd)
    assert len(requests) == 14
    clients = [gradio_client.Client(app_url, verbose=False) for _ in range(3)]  # three users at once
    before = _snapshot(damaged_runs)
    started = time.perf_counter()
    jobs = [clients[i % len(clients)].submit(*args, api_name=api) for i, (api, args, _) in enumerate(requests)]
    outcomes = [_outcome(job) for job in jobs]
    logging.getLogger(__name__).info("burst of %d answered in %.1f s", len(jobs), time.perf_counter() - started)
    originals, cats = [], []
    for (api, args, refusal), (kind, result) in zip(requests, outcomes):
        if refusal is not None:  # below the queue's size: every request is let in and handled
            assert kind == "refused" and re.search(refusal, _checked_message(result, damaged_runs)), (api, args, result)
            continue
        assert kind == "answered", (api, args, result)
        _, gallery, status = map(_value, result)
        seeds, runs = args[4].split(","), args[1]
        assert status.startswith(f"{len(seeds) * (1 + len(runs))} images: original")
        originals.append(_pixels(gallery[0]["image"]))
        cats += [_pixels(item["image"]) for item in gallery if item["caption"] == "cat, seed 0"]
    # One model, one edit at a time: every request saw the same original and the same erased "cat".
    assert len(originals) == 8 and all(np.array_equal(o, originals[0]) for o in originals)
    assert len(cats) == 4 and all(np.array_equal(c, cats[0]) for c in cats) and not np.array_equal(cats[0], originals[0])
    assert _snapshot(damaged_runs) == before
    _, gallery, _ = map(_value, clients[0].predict(*_compare_args(tiny_sd, runs=[]), api_name="/compare"))
    assert np.array_equal(_pixels(gallery[0]["image"]), originals[0])  # still serving, the edit swapped out


def test_a_full_queue_refuses_with_a_message(client, app_url, tiny_sd, runs_dir, monkeypatch):
    """With one generation held, the queue takes ``max_queue`` requests and refuses the rest at once."""
    import erasure.app.compare as compare_module
    from erasure.app import Limits

    generating, release = threading.Event(), threading.Event()
    real_generate = compare_module.generate

    def held(*args, **kwargs):
        generating.set()
        release.wait(ANSWER_TIMEOUT)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(compare_module, "generate", held)
    first = client.submit(*_compare_args(tiny_sd, runs=[]), api_name="/compare")
    try:
        assert generating.wait(ANSWER_TIMEOUT)
        extra = 3
        waiting = [client.submit(*_compare_args(tiny_sd, runs=[] if i % 2 else ["../x"]), api_name="/compare")
                   for i in range(Limits().max_queue + extra)]
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while sum(job.done() for job in waiting) < extra and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        release.set()
    assert _outcome(first)[0] == "answered"
    outcomes = [_outcome(job) for job in waiting]
    full = [message for kind, message in outcomes if kind == "queue full"]
    assert len(full) == extra and all("Queue is full" in m for m in full)
    # The queued ones, handled once the held generation ends: good ones answered, bad ones refused.
    assert all(re.search(NOT_A_RUN, _checked_message(m, runs_dir)) for kind, m in outcomes if kind == "refused")
    assert all(_value(m[2]).startswith("1 images") for kind, m in outcomes if kind == "answered")
    assert {kind for kind, _ in outcomes} == {"answered", "refused", "queue full"}
    monkeypatch.undo()
    assert client.predict(*_compare_args(tiny_sd, runs=[]), api_name="/compare")[2].startswith("1 images")


def test_a_bug_is_answered_with_a_message_and_the_app_recovers(client, tiny_sd, runs_dir, monkeypatch, caplog):
    """An unexpected exception (not bad input) is logged with its traceback and answered in one line."""
    import erasure.app.compare as compare_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(compare_module, "generate", broken)
    with pytest.raises(AppError) as caught:
        client.predict(*_compare_args(tiny_sd), api_name="/compare")
    assert caught.value.message.startswith("the app failed on this request (RuntimeError)")
    assert "\n" not in caught.value.message and "simulated failure" not in caught.value.message
    logged = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "RuntimeError: simulated failure" in caplog.text
    caplog.clear()  # the one expected error, checked above
    monkeypatch.undo()
    _, gallery, status = map(_value, client.predict(*_compare_args(tiny_sd), api_name="/compare"))
    assert status.startswith("2 images: original, cat")
