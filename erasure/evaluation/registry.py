"""The suite registry: suites by name, each with a typed config read from configs/suites/NAME.yaml.

Shaped on lm-evaluation-harness' ``lm_eval/api/registry.py`` and its YAML task configs: a suite is
one module under ``erasure/evaluation/suites/`` with a ``Suite`` subclass registered by name and a
``SuiteConfig`` dataclass, plus one YAML file holding its prompt sets and defaults. The lookup
(``get_suite``, ``load_suite``) is in ``erasure.evaluation.suites``, which imports a built-in suite's
module when its name is first asked for; a plug-in registers its own with ``@register_suite("name")``.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from erasure.errors import ErasureInputError
from erasure.config import MethodConfig

from .cache import SamplingSettings

if TYPE_CHECKING:
    from PIL import Image

    from .driver import Evaluation


@dataclass
class SuiteConfig(MethodConfig):
    """Base of every suite's config: what the YAML file says and what the caller may override.

    Fields common to all suites: a description and the sampling defaults. Unknown keys and values of
    the wrong type are refused in one line, as for method configs (``--suite-arg KEY=VALUE``)."""

    name: str = ""
    description: str = ""
    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "ddim"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])

    def validate(self) -> None:
        if self.steps < 1:
            raise ErasureInputError(f"{self.name} suite: steps must be at least 1, got {self.steps}")
        if not self.seeds:
            raise ErasureInputError(f"{self.name} suite: no seeds")

    def sampling(self, batch_size: int | None = None) -> SamplingSettings:
        """How the suite's images are drawn (``batch_size`` changes no image)."""
        settings = SamplingSettings(steps=self.steps, guidance=self.guidance, scheduler=self.scheduler,
                                    seeds=list(self.seeds))
        if batch_size is not None:
            settings.batch_size = batch_size
        return settings


@dataclass
class Case:
    """What one run is scored on: the prompts drawn by the original and the erased model.

    Runs whose cases have equal ``key`` share the original's images and scores (sd-nudity's prompts
    are the same for every run; sd-style's depend on the run's target). ``info`` is the suite's own."""

    prompts: list[str]
    key: Hashable = None
    info: Any = None


@dataclass
class Probe:
    """Scores a suite measures beside the shared prompts (e.g. an attack): added to ``before``/``after``,
    with details recorded in the run's entry (``record``)."""

    before: dict = dataclasses.field(default_factory=dict)
    after: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)


class Suite(ABC):
    """An evaluation suite: which prompts, how their images are scored, what the report says.

    The driver (``erasure.evaluation.driver``) runs every suite the same way: per run, ``case`` names
    the prompts; the original's and the erased model's images are generated (cached); ``score``
    scores both sides; ``probe`` adds what needs the erased model itself; ``grid`` draws the picture.
    ``check`` refuses bad input before any model loads; ``prepare`` runs once before the runs;
    ``report`` says what was measured (judge, columns, summary, notes) once every run is scored."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[SuiteConfig]] = SuiteConfig
    #: the YAML file of a suite outside the package; built-in suites: configs/suites/NAME.yaml
    config_path: ClassVar[str | None] = None

    def __init__(self, config: SuiteConfig) -> None:
        self.config = config

    @classmethod
    def check_args(cls, args: dict) -> None:
        """Refuse arguments that make no sense together (e.g. attack settings without the attack)."""

    def check(self, original: str, manifests: list[dict]) -> None:
        """Cheap checks of the runs and local files, before any model loads."""

    def prepare(self, ev: Evaluation) -> None:
        """Once, before the runs (e.g. a threshold calibrated on the original)."""

    @abstractmethod
    def case(self, manifest: dict) -> Case:
        """The prompts a run is scored on."""

    @abstractmethod
    def score(self, images: list[Image.Image], case: Case) -> dict:
        """The case's scores of ``images`` (prompt-major, one per prompt and seed)."""

    def probe(self, ev: Evaluation, erased, case: Case, label: str) -> Probe:
        """Scores that need the models beyond the case's prompts (default: none)."""
        return Probe()

    @abstractmethod
    def grid(self, before: list[Image.Image], after: list[Image.Image], case: Case, manifest: dict) -> Image.Image:
        """The run's picture: the original's and the erased model's images side by side."""

    @abstractmethod
    def report(self, ev: Evaluation, cases: list[Case]) -> dict:
        """metrics.json's suite part: ``judge``, ``prompts`` (count), ``columns`` (``Column``s), ``summary``,
        ``notes`` and any suite-specific settings."""


# ----------------------------------------------------------------------------- registry
#: name -> Suite class, filled by ``register_suite`` as suite modules are imported; looked up through
#: ``erasure.evaluation.suites.get_suite``, which imports the built-in modules on demand.
REGISTRY: dict[str, type[Suite]] = {}


def register_suite(name: str) -> Callable[[type[Suite]], type[Suite]]:
    """Class decorator: make a ``Suite`` available as ``erasure evaluate --suite NAME``."""

    def decorate(cls: type[Suite]) -> type[Suite]:
        existing = REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"suite {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def suite_args(cls: type[Suite]) -> dict[str, str]:
    """The keys ``--suite-arg`` takes for a suite and their types, for help texts."""
    hints = typing.get_type_hints(cls.config_class)
    base = {f.name for f in dataclasses.fields(SuiteConfig)}
    return {f.name: str(hints[f.name]) for f in dataclasses.fields(cls.config_class) if f.name not in base}
