"""Model families: which family a pipeline or a source belongs to, what each supplies, and that a new
family is one class that requests, methods and evaluation then ask instead of testing for canvas-mini."""

from __future__ import annotations

import json

import pytest
import torch

from erasure.errors import ErasureInputError
from erasure.families import available_families, family_named, family_of, family_of_source, register_family
from erasure.families.base import ModelFamily
from erasure.pipelines import load_pipeline
from erasure.request import ErasureRequest


def test_pipelines_and_sources_find_their_family(tiny_sd, tmp_path):
    from erasure.pipelines.canvas.model import MODEL_DIR

    assert available_families() == ["canvas-mini", "stable-diffusion"]
    assert family_of(load_pipeline("canvas-mini")).name == "canvas-mini"
    assert family_of(load_pipeline(tiny_sd.folder, device="cpu")).name == "stable-diffusion"
    # before any weight loads: the name, a folder by its model_index.json, a single file, a missing path
    assert family_of_source("canvas-mini").name == "canvas-mini"
    assert family_of_source(MODEL_DIR).name == "canvas-mini"
    assert family_of_source(tiny_sd.folder).name == "stable-diffusion"
    assert family_of_source(tmp_path / "model.safetensors").name == "stable-diffusion"
    assert family_of("canvas-mini") is family_named("canvas-mini")
    with pytest.raises(ErasureInputError, match="unknown model family 'sd3'"):
        family_named("sd3")


def test_canvas_mini_supplies_its_concepts_pairs_memorized_captions_and_judge():
    from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS, OBJECTS, STYLES, render

    canvas = family_named("canvas-mini")
    assert canvas.concept("dotted style", "style") == "dotted" and canvas.concept("a star", "object") == "star"
    with pytest.raises(ErasureInputError, match="canvas-mini has no style 'cubist'"):
        canvas.concept("cubist", "style")
    request = ErasureRequest(["dotted"], kind="style")
    with_concept, without = canvas.concept_pairs(request)
    assert len(with_concept) == len(without) == len(OBJECTS) and all("dotted" not in p for p in without)
    pairs = canvas.anchor_pairs(request, None, [0], "others")
    assert len(pairs) == len(OBJECTS) * (len(STYLES) - 1) and all("dotted" in target for _, target in pairs)
    assert [c for c, _ in canvas.memorized()] == [m.caption for m in MEMORIZATION_TARGETS]
    judge = canvas.judge("style", "dotted")
    seen = judge([render(o, "dotted", seed=1) for o in OBJECTS] + [render(o, "solid", seed=1) for o in OBJECTS])
    assert seen[:8].float().mean() >= 0.75 and seen[8:].float().mean() <= 0.25
    # Stable Diffusion ships no judge and no memorized captions; its pairs are the methods' own
    sd = family_named("stable-diffusion")
    assert sd.memorized() is None and sd.concept_pairs(request) is None and sd.anchor_pairs(request, None, [0], "others") is None
    with pytest.raises(ErasureInputError, match="ships no judge"):
        sd.judge("style", "Monet")


def test_a_new_family_is_one_class_that_requests_and_the_cli_then_ask(tmp_path):
    """A user's fine-tune with its own captions: its pipelines carry a marker, its folders name their
    class; requests resolve to its defaults and an unknown concept is refused before any weight loads."""

    class HouseStyle(ModelFamily):
        name = "house-style"
        priority = 20

        def matches(self, pipe) -> bool:
            return getattr(pipe, "house_style", False)

        def matches_source(self, source, pipeline_class) -> bool:
            return pipeline_class == "HouseStylePipeline"

        def concept(self, target, kind):
            if target not in ("teal", "amber"):
                raise ErasureInputError(f"house-style has no {kind} {target!r}; its styles are teal, amber")
            return target

        def request_defaults(self, request):
            styles = [self.concept(t, request.kind) for t in request.targets]
            return {"prompts": [f"a logo in {s}" for s in styles], "retain": ["a logo in amber"], "paraphrases": []}

    from erasure import families

    register_family(HouseStyle)
    try:
        pipe = torch.nn.Module()
        pipe.house_style = True
        resolved = ErasureRequest(["teal"], kind="style").resolve(pipe)
        assert resolved.prompts == ["a logo in teal"] and resolved.retain == ["a logo in amber"]
        assert resolved.anchor == "a painting"  # the base class's default anchors
        folder = tmp_path / "house"
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "HouseStylePipeline"}))
        assert family_of_source(folder).name == "house-style"
        from erasure.cli import main

        with pytest.raises(SystemExit) as exc:
            main(["erase", "--concept", "cubist", "--kind", "style", "--model", str(folder), "--out", str(tmp_path / "run")])
        assert exc.value.code == 2 and not (tmp_path / "run").exists()
    finally:
        families._FAMILIES.pop("house-style", None)
