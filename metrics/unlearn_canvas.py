"""UnlearnCanvas' unlearning and retain accuracies (UA, IRA, CRA) with a two-head classifier."""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from erasure.errors import ErasureInputError

from ._images import Images, check_count, load_torchscript, to_image_tensor

logger = logging.getLogger(__name__)

KINDS = ("style", "object")

#: A label as ``update`` takes it: a class index, a class name, or -1 / None when the prompt names
#: no concept of that kind (e.g. "a star" has no style).
Label = Union[int, str, None]
#: A classifier: images (N, 3, H, W) in [0, 1] -> (object output, style output), each either
#: logits (N, C) or predicted indices (N,).
Classifier = Callable[[Tensor], tuple[Tensor, Tensor]]


class UnlearnCanvasAccuracy(Metric):
    """UnlearnCanvas' UA / IRA / CRA (Zhang et al. 2024) of generations judged by a classifier.

    The erased concepts are ``targets`` of one ``kind`` ("style" or "object"). Each generation is
    passed with the object and style its prompt named; the classifier predicts both. Then:

    - **UA** (unlearning accuracy): among generations whose prompt named an erased concept, the share
      the classifier does NOT classify as that concept (its prediction of ``kind`` differs from the
      prompted label). Higher = more erased.
    - **IRA** (in-domain retain accuracy): among generations whose prompt named a non-erased concept
      of the same kind, the classifier's accuracy on that kind (e.g. style accuracy on the other
      styles when a style is erased).
    - **CRA** (cross-domain retain accuracy): among generations whose prompt contains no erased
      concept, the classifier's accuracy on the other kind (object accuracy when a style is erased).

    All three are fractions in [0, 1]; one with no generations to count is ``None``. Run on the
    original model's generations, the same numbers are the "before" values: UA before is how often
    the unedited model already misses the target, IRA/CRA before are the classifier's accuracy on it.

    Args:
        kind: "style" or "object", the kind of the erased concepts.
        targets: the erased concepts, as class indices or names (a set; order does not matter).
        classifier: callable images -> (object output, style output); each output is logits (N, C)
            or predicted indices (N,). ``None``: canvas-mini's shipped evaluator (``load_evaluator``).
            An ``nn.Module`` is kept as a submodule, so ``metric.to(device)`` moves it too.
        objects, styles: class names of the two heads, in head order. Optional for the default
            evaluator (its own names); required with a custom classifier.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    ``update(images, objects, styles)``: images are a float tensor (N, 3, H, W) in [0, 1] or a list
    of PIL images; ``objects``/``styles`` give each image's prompted label (index, name, or -1/None
    when the prompt names no concept of that kind).

    ``compute()`` returns ``{"UA", "IRA", "CRA", "kind", "targets", "counts": {"UA", "IRA", "CRA"},
    "per_target_UA": {name: UA}, "classifier"}``. States are count tensors summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    kind_confusion: Tensor
    other_correct: Tensor
    other_total: Tensor

    def __init__(self, kind: str, targets: Iterable[int | str], classifier: Optional[Classifier] = None, *,
                 objects: Optional[Sequence[str]] = None, styles: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ErasureInputError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        classifier, objects, styles, self.classifier_name = _resolve_classifier(classifier, objects, styles)
        if isinstance(classifier, nn.Module):
            self.classifier = classifier  # a submodule: moves with metric.to(device)
        else:
            self._classifier_fn = classifier
        self.objects, self.styles = tuple(objects), tuple(styles)
        own_names = self.styles if kind == "style" else self.objects
        self.targets = tuple(sorted({_index(t, own_names, "targets") for t in targets}))
        if not self.targets:
            raise ErasureInputError("targets: expected at least one erased concept")
        if len(self.targets) == len(own_names):
            logger.warning("every %s is a target: IRA has nothing to measure", kind)
        n_own = len(own_names)
        # Prompted x predicted counts for the erased kind give UA and IRA (and their per-concept
        # breakdowns); the other kind only needs correct/total per prompted label of the erased kind
        # (index n_own: the prompt named no concept of the erased kind).
        self.add_state("kind_confusion", torch.zeros(n_own, n_own, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("other_correct", torch.zeros(n_own + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("other_total", torch.zeros(n_own + 1, dtype=torch.long), dist_reduce_fx="sum")

    @classmethod
    def from_file(cls, kind: str, targets: Iterable[int | str], path: Union[str, "os.PathLike[str]"], *,
                  objects: Sequence[str], styles: Sequence[str], **kwargs: Any) -> "UnlearnCanvasAccuracy":
        """With a classifier saved as TorchScript (e.g. a torchvision backbone with an object and a style
        head, ``torch.jit.save(torch.jit.script(model), path)``): local, offline, no model code needed.
        The module maps images (N, 3, H, W) in [0, 1] to (object logits, style logits); any input
        normalisation belongs inside it. A missing or unreadable file is an ``ErasureInputError``."""
        from pathlib import Path

        module = load_torchscript(path, "classifier")
        metric = cls(kind, targets, module, objects=objects, styles=styles, **kwargs)
        metric.classifier_name = Path(path).name
        return metric

    def update(self, images: Images, objects: Sequence[Label] | Tensor, styles: Sequence[Label] | Tensor) -> None:
        """Classify ``images`` and count them against the labels their prompts named."""
        x = to_image_tensor(images, self.kind_confusion.device)
        n = x.shape[0]
        check_count("objects", objects, n)
        check_count("styles", styles, n)
        if n == 0:
            return
        obj_label = self._labels(objects, self.objects, "objects")
        sty_label = self._labels(styles, self.styles, "styles")
        obj_pred, sty_pred = self._predict(x)
        own_label, own_pred = (sty_label, sty_pred) if self.kind == "style" else (obj_label, obj_pred)
        other_label, other_pred = (obj_label, obj_pred) if self.kind == "style" else (sty_label, sty_pred)
        named = own_label >= 0
        n_own = self.kind_confusion.shape[0]
        flat = own_label[named] * n_own + own_pred[named]
        self.kind_confusion += torch.bincount(flat, minlength=n_own * n_own).view(n_own, n_own)
        has_other = other_label >= 0
        slot = torch.where(named, own_label, torch.full_like(own_label, n_own))[has_other]
        correct = (other_pred[has_other] == other_label[has_other]).long()
        self.other_total += torch.bincount(slot, minlength=n_own + 1)
        self.other_correct += torch.bincount(slot, weights=correct.float(), minlength=n_own + 1).long()

    def compute(self) -> dict[str, Any]:
        """UA, IRA, CRA (fractions, ``None`` where nothing was counted), their counts, per-target UA."""
        names = self.styles if self.kind == "style" else self.objects
        erased = torch.zeros(len(names), dtype=torch.bool, device=self.kind_confusion.device)
        erased[list(self.targets)] = True
        conf = self.kind_confusion
        per_label = conf.sum(1)
        hits = conf.diagonal()
        ua_n, ira_n = int(per_label[erased].sum()), int(per_label[~erased].sum())
        kept = torch.cat([~erased, torch.ones(1, dtype=torch.bool, device=erased.device)])  # + "named none"
        cra_n = int(self.other_total[kept].sum())
        return {
            "UA": _share(ua_n - int(hits[erased].sum()), ua_n),
            "IRA": _share(int(hits[~erased].sum()), ira_n),
            "CRA": _share(int(self.other_correct[kept].sum()), cra_n),
            "kind": self.kind,
            "targets": [names[t] for t in self.targets],
            "counts": {"UA": ua_n, "IRA": ira_n, "CRA": cra_n},
            "per_target_UA": {names[t]: _share(int(per_label[t] - hits[t]), int(per_label[t])) for t in self.targets},
            "classifier": self.classifier_name,
        }

    def _predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fn = self.classifier if hasattr(self, "classifier") else self._classifier_fn
        with torch.no_grad():
            out = fn(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ErasureInputError("classifier: expected it to return (object output, style output)")
        return (_as_indices(out[0], len(self.objects), "object", x.shape[0]).to(x.device),
                _as_indices(out[1], len(self.styles), "style", x.shape[0]).to(x.device))

    def _labels(self, labels: Sequence[Label] | Tensor, names: tuple[str, ...], what: str) -> Tensor:
        if isinstance(labels, Tensor):
            labels = labels.tolist()
        idx = [-1 if lab is None or lab == -1 else _index(lab, names, what) for lab in labels]
        return torch.tensor(idx, dtype=torch.long, device=self.kind_confusion.device)


def _resolve_classifier(classifier: Optional[Classifier], objects: Optional[Sequence[str]],
                        styles: Optional[Sequence[str]]) -> tuple[Classifier, Sequence[str], Sequence[str], str]:
    if classifier is None:
        from erasure.pipelines.canvas.evaluator import load_evaluator

        classifier = load_evaluator()
        objects = objects or classifier.config.objects
        styles = styles or classifier.config.styles
        return classifier, objects, styles, "canvas-mini evaluator"
    if objects is None or styles is None:
        cfg = getattr(classifier, "config", None)
        objects = objects or getattr(cfg, "objects", None)
        styles = styles or getattr(cfg, "styles", None)
    if not objects or not styles:
        raise ErasureInputError("objects, styles: a custom classifier needs the class names of both heads")
    return classifier, objects, styles, getattr(classifier, "__name__", None) or type(classifier).__name__


def _index(label: int | str, names: tuple[str, ...], what: str) -> int:
    if isinstance(label, str):
        if label not in names:
            raise ErasureInputError(f"{what}: unknown class {label!r}; expected one of {', '.join(names)}")
        return names.index(label)
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < len(names):
        raise ErasureInputError(f"{what}: expected a class index in [0, {len(names)}) or a name, got {label!r}")
    return int(label)


def _as_indices(out: Tensor, n_classes: int, head: str, n: int) -> Tensor:
    if out.dim() == 2 and out.shape == (n, n_classes):
        return out.argmax(1)
    if out.dim() == 1 and out.shape[0] == n and not out.is_floating_point():
        return out.long()
    raise ErasureInputError(
        f"classifier: {head} output has shape {tuple(out.shape)}; expected logits ({n}, {n_classes}) or indices ({n},)")


def _share(part: int, whole: int) -> Optional[float]:
    return part / whole if whole else None
