"""erasure.metrics on known answers: hand-labelled UA/IRA/CRA, FID/KID of equal vs shifted sets, CLIP
score of matching vs mismatched captions, NudeNet on synthetic images and its configuration,
memorization similarity of a training image to itself, and two-process sync = one process."""

from __future__ import annotations

import importlib.util
import math
import random
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from erasure.errors import ErasureInputError
from erasure.metrics import (
    ALL_EXPOSED_CLASSES, DEFAULT_NUDITY_CLASSES, FIDKID, NUDENET_LABELS, CLIPScore, MemorizationSimilarity,
    NudityRate, PixelEmbedding, UnlearnCanvasAccuracy,
)

# canvas-mini modules are imported inside the tests that use them: the two-process test's spawned
# processes import this module, and erasure.pipelines would load diffusers there for nothing.

OBJ3, STY3 = ("a", "b", "c"), ("x", "y", "z")


def canvas():
    """canvas-mini's names and helpers: (OBJECTS, STYLES, caption)."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    return OBJECTS, STYLES, caption


def renders(n: int, seed: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """``n`` renders of independently drawn (object, style) pairs: i.i.d. samples of the image distribution."""
    from erasure.pipelines.canvas.evaluator import images_to_tensor
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, render

    rng = random.Random(seed)
    pairs = [(rng.randrange(len(OBJECTS)), rng.randrange(len(STYLES))) for _ in range(n)]
    images = [render(OBJECTS[o], STYLES[s], seed * 10_000 + i) for i, (o, s) in enumerate(pairs)]
    return images_to_tensor(images), [o for o, _ in pairs], [s for _, s in pairs]


@pytest.fixture(scope="module")
def evaluator():
    from erasure.pipelines.canvas.evaluator import load_evaluator

    return load_evaluator()


# ----------------------------------------------------------------------------- UA / IRA / CRA
def coded_images(n: int) -> torch.Tensor:
    """Image i is filled with i/255, so a fake classifier can look up its chosen answer."""
    return (torch.arange(n, dtype=torch.float32) / 255).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()


class FakeClassifier:
    """Returns one-hot logits of chosen (object, style) predictions per coded image."""

    def __init__(self, objects: list[int], styles: list[int], as_indices: bool = False):
        self.objects, self.styles, self.as_indices = torch.tensor(objects), torch.tensor(styles), as_indices

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = (x[:, 0, 0, 0] * 255).round().long()
        if self.as_indices:
            return self.objects[i], self.styles[i]
        return F.one_hot(self.objects[i], 3).float() * 5, F.one_hot(self.styles[i], 3).float() * 5


# (prompted object, prompted style, predicted object, predicted style); None: the prompt names none.
CASES = [
    ("a", "x", 0, 0),    # erased style x, still drawn as x
    ("b", "x", 1, 1),    # erased, now y
    ("c", "x", 0, 2),    # erased, now z
    ("a", "y", 0, 1),    # kept style right, object right
    ("b", "y", 2, 1),    # kept style right, object wrong
    ("c", "z", 2, 0),    # kept style wrong, object right
    ("a", None, 1, 2),   # no style named: only the object counts (wrong)
    (None, "z", 0, 2),   # no object named: only the style counts (right)
]


def case_metric(kind: str, targets, as_indices: bool = False, batches: int = 1) -> dict:
    clf = FakeClassifier([c[2] for c in CASES], [c[3] for c in CASES], as_indices)
    metric = UnlearnCanvasAccuracy(kind, targets, clf, objects=OBJ3, styles=STY3)
    x = coded_images(len(CASES))
    objs, stys = [c[0] for c in CASES], [c[1] for c in CASES]
    bounds = np.linspace(0, len(CASES), batches + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        metric.update(x[lo:hi], objs[lo:hi], stys[lo:hi])
    return metric.compute()


def test_unlearn_canvas_style_erasure_by_hand():
    r = case_metric("style", {"x"})
    # UA: of the 3 prompts naming x, 2 are not classified as x. IRA: styles y/z prompts -> 3 of 4
    # right. CRA: objects of prompts without x (4, 5, 6, 7) -> 2 of 4 right.
    assert r["UA"] == pytest.approx(2 / 3) and r["IRA"] == pytest.approx(3 / 4) and r["CRA"] == pytest.approx(2 / 4)
    assert r["counts"] == {"UA": 3, "IRA": 4, "CRA": 4}
    assert r["per_target_UA"] == {"x": pytest.approx(2 / 3)} and r["targets"] == ["x"] and r["kind"] == "style"
    # Batches accumulate, and a classifier returning indices instead of logits gives the same.
    assert case_metric("style", {0}, as_indices=True, batches=3) == {**r, "classifier": "FakeClassifier"}


def test_unlearn_canvas_object_erasure_by_hand():
    r = case_metric("object", [0])
    # UA: prompts naming a (1, 4, 7) predicted a, a, b -> 1 of 3. IRA: b/c prompts (2, 3, 5, 6)
    # predicted b, a, c, c -> 2 of 4. CRA: styles of prompts without a (2, 3, 5, 6, 8) -> 2 of 5.
    assert (r["UA"], r["IRA"], r["CRA"]) == (pytest.approx(1 / 3), pytest.approx(2 / 4), pytest.approx(2 / 5))
    assert r["counts"] == {"UA": 3, "IRA": 4, "CRA": 5}
    # Two erased objects: per-target UA for each.
    r2 = case_metric("object", {"a", "c"})
    assert r2["per_target_UA"] == {"a": pytest.approx(1 / 3), "c": pytest.approx(1 / 2)}
    assert r2["UA"] == pytest.approx(2 / 5)


class _ScriptedTwoHeads(torch.nn.Module):
    """FakeClassifier's answers as a TorchScript-able module (a stand-in for a saved torchvision classifier)."""

    def __init__(self, objects: list[int], styles: list[int]):
        super().__init__()
        self.register_buffer("objects", F.one_hot(torch.tensor(objects), 3).float() * 5)
        self.register_buffer("styles", F.one_hot(torch.tensor(styles), 3).float() * 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = (x[:, 0, 0, 0] * 255).round().long()
        return self.objects[i], self.styles[i]


def test_unlearn_canvas_with_a_classifier_from_a_torchscript_file(tmp_path):
    module = _ScriptedTwoHeads([c[2] for c in CASES], [c[3] for c in CASES])
    torch.jit.save(torch.jit.script(module), str(tmp_path / "judge.pt"))
    metric = UnlearnCanvasAccuracy.from_file("style", {"x"}, tmp_path / "judge.pt", objects=OBJ3, styles=STY3)
    metric.update(coded_images(len(CASES)), [c[0] for c in CASES], [c[1] for c in CASES])
    r = metric.compute()
    assert r == {**case_metric("style", {"x"}), "classifier": "judge.pt"}
    with pytest.raises(ErasureInputError, match="no TorchScript file"):
        UnlearnCanvasAccuracy.from_file("style", {"x"}, tmp_path / "missing.pt", objects=OBJ3, styles=STY3)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ErasureInputError, match="not a TorchScript file"):
        UnlearnCanvasAccuracy.from_file("style", {"x"}, tmp_path / "junk.pt", objects=OBJ3, styles=STY3)


def test_unlearn_canvas_bad_input():
    clf = FakeClassifier([0], [0])
    with pytest.raises(ErasureInputError, match="kind"):
        UnlearnCanvasAccuracy("colour", {0}, clf, objects=OBJ3, styles=STY3)
    with pytest.raises(ErasureInputError, match="unknown class 'w'"):
        UnlearnCanvasAccuracy("style", {"w"}, clf, objects=OBJ3, styles=STY3)
    with pytest.raises(ErasureInputError, match="class names"):
        UnlearnCanvasAccuracy("style", {0}, clf)
    metric = UnlearnCanvasAccuracy("style", {0}, clf, objects=OBJ3, styles=STY3)
    with pytest.raises(ErasureInputError, match="one per image"):
        metric.update(coded_images(1), ["a", "b"], ["x"])
    with pytest.raises(ErasureInputError, match="uint8"):
        metric.update(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["a"], ["x"])
    with pytest.raises(ErasureInputError, match=r"\[0, 1\]"):
        metric.update(torch.full((1, 3, 4, 4), 2.0), ["a"], ["x"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = UnlearnCanvasAccuracy("style", {0}, clf, objects=OBJ3, styles=STY3).compute()
    assert (empty["UA"], empty["IRA"], empty["CRA"]) == (None, None, None)


def test_unlearn_canvas_with_the_shipped_evaluator_on_renders(evaluator):
    """Real renders are what an unedited model aims at: nothing unlearned, retain accuracies high."""
    OBJECTS, STYLES, _ = canvas()
    x, objs, stys = renders(48, seed=3)
    metric = UnlearnCanvasAccuracy("style", {STYLES[stys[0]]})  # default classifier: the shipped evaluator
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    metric.update(pil, objs, [STYLES[s] for s in stys])
    r = metric.compute()
    assert r["classifier"] == "canvas-mini evaluator" and r["counts"]["UA"] >= 1
    assert r["UA"] <= 0.2 and r["IRA"] >= 0.8 and r["CRA"] >= 0.8


# ----------------------------------------------------------------------------- FID / KID
def test_fid_kid_equal_sets_near_zero_shifted_sets_larger(evaluator):
    ref, _, _ = renders(96, seed=1)
    same, _, _ = renders(96, seed=2)  # another i.i.d. sample of the same distribution
    shifted = (same + 0.3 * torch.randn(same.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    metric = FIDKID("canvas-evaluator", kid_subsets=50, kid_subset_size=1000, reset_real_features=False)
    metric.update(ref, real=True)

    def against(images: torch.Tensor) -> dict:
        metric.reset()  # keeps the reference features
        metric.update(images, real=False)
        return metric.compute()

    itself, same_dist, noisy = against(ref), against(same), against(shifted)
    assert itself["fid"] == pytest.approx(0, abs=1e-6)
    # 96 images in 96 dimensions: FID's small-sample bias is large (about 10 here), the shift's ~80.
    assert noisy["fid"] > 5 * same_dist["fid"] > 0
    # KID is unbiased: about 0 for the same distribution (here -0.08), about 4 for the shift.
    assert abs(same_dist["kid_mean"]) < 0.5 and noisy["kid_mean"] > 10 * abs(same_dist["kid_mean"])
    assert noisy["kid_subset_size"] == 96  # capped by the number of images
    assert noisy["features"] == "canvas-evaluator-features" and noisy["num_features"] == 96
    assert (noisy["real_count"], noisy["fake_count"]) == (96, 96)
    # Seeded KID subsets: the same answer twice.
    assert against(shifted)["kid_mean"] == noisy["kid_mean"]


class Pooled(nn.Module):
    """A custom FID feature module: 2x2 average-pooled pixels."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 2).flatten(1)


def test_fid_custom_feature_module_and_bad_input():
    metric = FIDKID(Pooled(), kid_subset_size=4)
    a = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    metric.update(a, real=True)
    metric.update(a, real=False)
    r = metric.compute()
    assert r["fid"] == pytest.approx(0, abs=1e-6) and r["features"] == "Pooled" and r["num_features"] == 12
    with pytest.raises(ErasureInputError, match="real"):
        metric.update(a, real="yes")
    with pytest.raises(ErasureInputError, match="num_features"):
        FIDKID(nn.Flatten())
    with pytest.raises(ErasureInputError, match="features"):
        FIDKID("vgg")
    one = FIDKID(Pooled())
    one.update(a[:1], real=True)
    one.update(a, real=False)
    with pytest.raises(ErasureInputError, match="at least 2"):
        one.compute()


def test_inception_weights_missing_file_says_where_to_put_it(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(ErasureInputError, match=f"no FID Inception weights at {missing}: put .*weights-inception"):
        FIDKID("inception", weights=missing)


def test_inception_weights_from_a_local_file(tmp_path, monkeypatch):
    """With torch-fidelity: a weights file is loaded (random weights here); without it: a clear error."""
    path = tmp_path / "inception.pth"
    if importlib.util.find_spec("torch_fidelity") is None:
        path.write_bytes(b"not used")
        with pytest.raises(ErasureInputError, match="torch-fidelity"):
            FIDKID("inception", weights=path)
        return
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    # Build the network once without weights to write a random state dict in its layout.
    monkeypatch.setattr(tf.torch, "load", lambda *a, **k: None)
    monkeypatch.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    net = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="x")
    monkeypatch.undo()
    torch.save(net.state_dict(), path)
    metric = FIDKID("inception", weights=path, kid_subset_size=2)
    a = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    metric.update(a, real=True)
    metric.update(a, real=False)
    r = metric.compute()
    assert r["num_features"] == 2048 and r["features"] == "inception-v3-pool3-2048"
    assert r["fid"] == pytest.approx(0, abs=1e-3)


# ----------------------------------------------------------------------------- CLIP score
@pytest.fixture(scope="module")
def fitted_clip():
    """A tiny open_clip CLIP whose two projections are fitted (ridge regression, seconds) so that
    canvas images and their captions land on the same code per (object, style): a CLIP that
    knows the captions, without minutes of contrastive training. The towers stay random."""
    import open_clip

    from erasure.pipelines.canvas.clip import PREPROCESS_CFG, build_clip

    OBJECTS, STYLES, caption = canvas()
    torch.manual_seed(0)
    model = build_clip().eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    x, objs, stys = renders(192, seed=11)
    pairs = [(o, s) for o in range(len(OBJECTS)) for s in range(len(STYLES))]
    g = torch.Generator().manual_seed(0)
    obj_code, sty_code = torch.randn(len(OBJECTS), 64, generator=g), torch.randn(len(STYLES), 64, generator=g)
    with torch.no_grad():
        proj, model.visual.proj = model.visual.proj, None  # the towers' pooled outputs, before projection
        img_feats = model.encode_image((x - 0.5) / 0.5)
        model.visual.proj = proj
        text_proj, model.text_projection = model.text_projection, None
        txt_feats = model.encode_text(tokenizer([caption(OBJECTS[o], STYLES[s]) for o, s in pairs]))
        model.text_projection = text_proj
        img_target = F.normalize(obj_code[objs] + sty_code[stys], dim=1)
        txt_target = F.normalize(torch.stack([obj_code[o] + sty_code[s] for o, s in pairs]), dim=1)
        model.visual.proj.copy_(ridge(img_feats, img_target, 1e-2))
        model.text_projection.copy_(ridge(txt_feats, txt_target, 1e-4))
    return model, tokenizer, PREPROCESS_CFG


def ridge(feats: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    d = feats.shape[1]
    return torch.linalg.solve(feats.T @ feats + lam * torch.eye(d), feats.T @ target)


def test_clip_score_matching_beats_mismatched_captions(fitted_clip):
    model, tokenizer, pre = fitted_clip
    OBJECTS, STYLES, caption = canvas()
    x, objs, stys = renders(48, seed=12)  # held out from the fit
    matching = [caption(OBJECTS[o], STYLES[s]) for o, s in zip(objs, stys)]
    mismatched = [caption(OBJECTS[(o + 3) % 8], STYLES[(s + 5) % 8]) for o, s in zip(objs, stys)]
    scores = {}
    for name, prompts in (("matching", matching), ("mismatched", mismatched)):
        metric = CLIPScore(model, tokenizer, preprocess=pre)
        metric.update(x, prompts)
        scores[name] = metric.compute()["clip_score"]
    assert scores["matching"] > scores["mismatched"] + 20


def test_clip_score_is_100_times_clipped_cosine_and_accumulates():
    import open_clip

    from erasure.pipelines.canvas.clip import PREPROCESS_CFG, build_clip

    torch.manual_seed(1)
    model, tokenizer = build_clip().eval(), open_clip.get_tokenizer("ViT-B-32")
    x = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(0))  # resized and cropped to 32
    prompts = ["a star", "dotted style", "a moon in noisy style", "the flag of ostra"]
    metric = CLIPScore(model, tokenizer, preprocess=PREPROCESS_CFG, name="random tiny CLIP")
    metric.update(x[:1], prompts[:1])
    metric.update(x[1:], prompts[1:])
    r = metric.compute()
    # By hand: open_clip's own transform (bicubic shortest-side resize, centre crop, normalise) on PIL.
    transform = open_clip.image_transform(32, is_train=False, mean=PREPROCESS_CFG["mean"], std=PREPROCESS_CFG["std"])
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([transform(p) for p in pil])), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    expected = (100 * (img * txt).sum(-1)).clamp(min=0).mean().item()
    assert r["clip_score"] == pytest.approx(expected, abs=1.0)  # uint8 round trip and resize kernels differ slightly
    assert r["count"] == 4 and r["model"] == "random tiny CLIP"
    with pytest.raises(ErasureInputError, match="one per image"):
        metric.update(x, prompts[:2])
    with pytest.raises(ErasureInputError, match="single string"):
        metric.update(x[:1], "a star")


def test_clip_score_loads_local_weights_offline(fitted_clip, tmp_path):
    import json

    import open_clip
    from safetensors.torch import save_file

    from erasure.pipelines.canvas.clip import MODEL_CFG, save_clip

    model, tokenizer, pre = fitted_clip
    OBJECTS, STYLES, caption = canvas()
    x, objs, stys = renders(4, seed=13)
    prompts = [caption(OBJECTS[o], STYLES[s]) for o, s in zip(objs, stys)]

    def score(metric: CLIPScore) -> float:
        metric.update(x, prompts)
        return metric.compute()["clip_score"]

    expected = score(CLIPScore(model, tokenizer, preprocess=pre))
    # An open_clip local-dir folder (how canvas-mini's CLIP and open_clip hub repos are laid out).
    folder = save_clip(model, tmp_path / "clip")
    assert score(CLIPScore.from_open_clip(f"local-dir:{folder}")) == pytest.approx(expected, abs=1e-4)
    assert score(CLIPScore.canvas_mini(folder)) == pytest.approx(expected, abs=1e-4)
    # An architecture name plus a weights file (a tiny architecture registered for the test).
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "canvas-tiny-test.json").write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(tmp_path / "configs")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    # open_clip's default preprocessing for a built-in name is OpenAI's mean/std: give canvas-mini's.
    from_file = CLIPScore.from_open_clip("canvas-tiny-test", tmp_path / "w.safetensors", preprocess=pre)
    assert score(from_file) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ErasureInputError, match="local checkpoint"):
        CLIPScore.from_open_clip("canvas-tiny-test", tmp_path / "missing.safetensors")
    with pytest.raises(ErasureInputError, match="unknown open_clip architecture"):
        CLIPScore.from_open_clip("no-such-clip", tmp_path / "w.safetensors")
    with pytest.raises(ErasureInputError, match="no open_clip model"):
        CLIPScore.from_open_clip(f"local-dir:{tmp_path / 'empty'}")


def test_clip_score_with_the_shipped_canvas_clip():
    from erasure.pipelines.canvas.clip import CLIP_DIR

    assert (CLIP_DIR / "open_clip_config.json").is_file(), "canvas-mini's CLIP ships with the package"
    metric = CLIPScore.canvas_mini()
    OBJECTS, STYLES, caption = canvas()
    x, objs, stys = renders(32, seed=14)
    metric.update(x, [caption(OBJECTS[o], STYLES[s]) for o, s in zip(objs, stys)])
    matching = metric.compute()["clip_score"]
    metric.reset()
    metric.update(x, [caption(OBJECTS[(o + 3) % 8], STYLES[(s + 5) % 8]) for o, s in zip(objs, stys)])
    assert matching > metric.compute()["clip_score"]


# ----------------------------------------------------------------------------- nudity
def test_nudenet_labels_match_the_installed_detector():
    import nudenet.nudenet as nn_module

    assert NUDENET_LABELS == tuple(vars(nn_module)["__labels"])  # module-level name: no mangling
    assert set(DEFAULT_NUDITY_CLASSES) <= set(ALL_EXPOSED_CLASSES) <= set(NUDENET_LABELS)


def test_nudenet_finds_nothing_exposed_in_synthetic_images():
    from erasure.pipelines.canvas.render import render

    star = render("star", "dotted", 0).resize((256, 256), Image.BICUBIC)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    gradient = torch.from_numpy(np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)),
                                          np.full((256, 256), 0.5, np.float32)]))[None]
    metric = NudityRate(ALL_EXPOSED_CLASSES, threshold=0.25)  # the broadest setting NudeNet allows
    metric.update([star])
    metric.update(gradient)
    r = metric.compute()
    assert r["nudity_rate"] == 0.0 and r["count"] == 2 and r["flagged"] == 0
    assert r["classes"] == list(ALL_EXPOSED_CLASSES) and r["threshold"] == 0.25
    assert r["detector"].startswith("nudenet 3.4.2 (320n.onnx")


def fake_detector(arrays: list[np.ndarray]) -> list[list[dict]]:
    """Detections chosen per image, keyed by the image's grey level (0, 1, 2, 3)."""
    table = {
        0: [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}],
        1: [{"class": "FEET_EXPOSED", "score": 0.9}],
        2: [{"class": "BUTTOCKS_EXPOSED", "score": 0.7}, {"class": "FACE_FEMALE", "score": 0.99}],
        3: [],
    }
    return [table[int(a[0, 0, 0])] for a in arrays]


@pytest.mark.parametrize("classes, threshold, rate, per_class", [
    (DEFAULT_NUDITY_CLASSES, 0.6, 1 / 4, {"BUTTOCKS_EXPOSED": 1 / 4, "FEMALE_BREAST_EXPOSED": 0.0}),
    (DEFAULT_NUDITY_CLASSES, 0.45, 2 / 4, {"BUTTOCKS_EXPOSED": 1 / 4, "FEMALE_BREAST_EXPOSED": 1 / 4}),
    (ALL_EXPOSED_CLASSES, 0.6, 2 / 4, {"FEET_EXPOSED": 1 / 4, "FEMALE_BREAST_EXPOSED": 0.0}),
    (["FACE_FEMALE"], 0.95, 1 / 4, {"FACE_FEMALE": 1 / 4}),
    (["FEET_EXPOSED"], 0.9, 0.0, {"FEET_EXPOSED": 0.0}),  # strictly above the threshold
])
def test_nudity_rate_honours_classes_and_threshold(classes, threshold, rate, per_class):
    metric = NudityRate(classes, threshold, detector=fake_detector, batch_size=3)
    metric.update(coded_images(4))
    r = metric.compute()
    assert r["nudity_rate"] == pytest.approx(rate) and r["count"] == 4
    assert r["classes"] == list(classes) and r["threshold"] == threshold and r["detector"] == "fake_detector"
    assert {k: r["per_class"][k] for k in per_class} == pytest.approx(per_class)


def test_nudity_rate_bad_configuration(tmp_path):
    with pytest.raises(ErasureInputError, match="unknown NudeNet class EXPOSED_BREAST_F"):
        NudityRate(["EXPOSED_BREAST_F"])
    with pytest.raises(ErasureInputError, match=">= 0.25"):
        NudityRate(threshold=0.1)
    with pytest.raises(ErasureInputError, match="threshold"):
        NudityRate(threshold=1.5, detector=fake_detector)
    with pytest.raises(ErasureInputError, match="no NudeNet model"):
        NudityRate(model_path=tmp_path / "640m.onnx")


# ----------------------------------------------------------------------------- memorization
def test_memorization_training_image_matches_itself(evaluator):
    refs, _, _ = renders(6, seed=21)
    for embedding in (None, PixelEmbedding()):  # None: the shipped evaluator's embedding
        metric = MemorizationSimilarity(refs, embedding, names=[f"t{i}" for i in range(6)])
        metric.update(refs, targets=list(range(6)))
        r = metric.compute()
        for t in r["per_target"]:
            assert t["similarities"] == [pytest.approx(1.0, abs=1e-5)]
        assert r["own"]["mean"] == pytest.approx(1.0, abs=1e-5) and r["nearest"]["max"] == pytest.approx(1.0, abs=1e-5)
        assert r["share_above"] == 1.0 and r["threshold"] < 1.0
    assert "evaluator" in MemorizationSimilarity(refs).embedding_name


def vectors_as_images(vectors: list[tuple[float, float]]) -> torch.Tensor:
    x = torch.zeros(len(vectors), 3, 2, 2)
    x[:, 0, 0, :] = torch.tensor(vectors)
    return x


def first_two_pixels(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, :]


def test_memorization_by_hand():
    refs = vectors_as_images([(1, 0), (0, 1)])
    gens = vectors_as_images([(1, 0), (0.5, 0.5), (0.6, 0.8), (0, 1)])
    targets = [0, 1, 0, -1]  # the last generation has no target: its nearest similarity counts
    metric = MemorizationSimilarity(refs, first_two_pixels, names=["r0", "r1"], embedding_name="2d")
    metric.update(gens[:2], targets[:2])
    metric.update(gens[2:], targets[2:])
    r = metric.compute()
    c = math.sqrt(0.5)
    # own: 1, c, 0.6; others: 0, c, 0.8 -> chance threshold 0.8; above: gens 0 and 3 (nearest 1).
    assert r["threshold"] == pytest.approx(0.8) and r["threshold_rule"] == "chance"
    assert r["share_above"] == pytest.approx(2 / 4)
    assert r["nearest"]["mean"] == pytest.approx((1 + c + 0.8 + 1) / 4) and r["nearest"]["max"] == pytest.approx(1)
    assert r["own"]["mean"] == pytest.approx((1 + c + 0.6) / 3)
    assert r["other_references"] == {"mean": pytest.approx((0 + c + 0.8) / 3), "max": pytest.approx(0.8)}
    t0, t1 = r["per_target"]
    assert (t0["name"], t0["count"], t0["similarities"], t0["share_above"]) == ("r0", 2, [pytest.approx(1), pytest.approx(0.6)], 0.5)
    assert (t1["count"], t1["mean"], t1["share_above"]) == (1, pytest.approx(c), 0.0)
    assert r["embedding"] == "2d" and r["count"] == 4 and r["references"] == 2

    fixed = MemorizationSimilarity(refs, first_two_pixels, threshold=0.7)
    fixed.update(gens, targets)
    assert fixed.compute()["share_above"] == pytest.approx(3 / 4)
    with pytest.raises(ErasureInputError, match="reference indices"):
        fixed.update(gens[:1], [2])
    with pytest.raises(ErasureInputError, match="one per image"):
        fixed.update(gens, [0])
    with pytest.raises(ErasureInputError, match="names"):
        MemorizationSimilarity(refs, first_two_pixels, names=["only one"])


# ----------------------------------------------------------------------------- two processes
def _shard_results(rank: int, world: int, port: int, out: str) -> None:
    """One process of a gloo group: update every metric with its shard, write the synced results."""
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = _run_metrics(rank, world)
    finally:
        dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)


def _run_metrics(rank: int, world: int) -> dict:
    """Every metric whose result is deterministic on CPU, fed the images with index % world == rank."""
    def shard(n: int) -> list[int]:
        return [i for i in range(n) if i % world == rank]

    x, idx = coded_images(len(CASES)), shard(len(CASES))
    clf = FakeClassifier([c[2] for c in CASES], [c[3] for c in CASES])
    ua = UnlearnCanvasAccuracy("style", {"x"}, clf, objects=OBJ3, styles=STY3)
    ua.update(x[idx], [CASES[i][0] for i in idx], [CASES[i][1] for i in idx])
    nude = NudityRate(DEFAULT_NUDITY_CLASSES, 0.45, detector=fake_detector)
    nude.update(coded_images(4)[shard(4)])
    mem = MemorizationSimilarity(vectors_as_images([(1, 0), (0, 1)]), first_two_pixels)
    gens = vectors_as_images([(1, 0), (0.5, 0.5), (0.6, 0.8), (0, 1)])
    mem.update(gens[shard(4)], [[0, 1, 0, -1][i] for i in shard(4)])
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(12, 3, 8, 8, generator=g), torch.rand(12, 3, 8, 8, generator=g) ** 2
    # KID's subset = all images: its value then does not depend on the order features arrive in.
    fid = FIDKID(Pooled(), kid_subset_size=12)
    fid.update(a[shard(12)], real=True)
    fid.update(b[shard(12)], real=False)
    mem_result = mem.compute()
    for t in mem_result["per_target"]:  # similarities arrive in process order: compare as sets
        t["similarities"] = sorted(t["similarities"])
    return {"ua": ua.compute(), "nudity": nude.compute(), "memorization": mem_result, "fid": fid.compute()}


def test_two_process_sync_equals_one_process(tmp_path):
    """States reduce across a gloo group: two shards give every process the one-process result."""
    import json

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the processes start with this one's imports (spawn would spend ~10 s importing torchmetrics
    # again); safe here: CPU only, one torch thread, and the children use nothing but torch and gloo.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_shard_results, args=(r, 2, port, str(tmp_path / f"{r}.json")), daemon=True)
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    single = json.loads(json.dumps(_run_metrics(0, 1)))  # JSON round trip, as the shards' results took
    for r in range(2):
        assert _close(json.loads((tmp_path / f"{r}.json").read_text()), single)


def _close(a, b) -> bool:
    """Equal structure and values, floats up to summation order."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    return a == b
