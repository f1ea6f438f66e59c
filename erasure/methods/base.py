"""The method interface: ``ErasureMethod`` (one call signature) and its config base ``MethodConfig``.

``MethodConfig`` (hyperparameters as a dataclass that round-trips through dicts, JSON and YAML) and
the file readers ``load_yaml`` / ``read_config_file`` live in the core, ``erasure.config``; they are
imported here so ``from erasure.methods.base import MethodConfig`` keeps working.

Every method is called the same way::

    edit = Method(config)(pipe, request, run_dir=None, resume=False, progress=None)

and returns an ``erasure.edit.Edit`` (the changed tensors plus what produced them).
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from typing import ClassVar

from erasure.config import MethodConfig, load_yaml, read_config_file

if typing.TYPE_CHECKING:
    from erasure.edit import Edit

__all__ = ["ErasureMethod", "MethodConfig", "load_yaml", "read_config_file"]


class ErasureMethod(ABC):
    """Base class of the erasure methods: construct with a config, call with (pipe, request)."""

    #: registry name, set by ``erasure.methods.register``.
    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: the paper the method implements and its reference code (model cards cite them)
    paper: ClassVar[str] = ""
    reference_code: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | dict | None = None, **overrides) -> None:
        self.config = self.config_class.of(config, self.name, **overrides)

    @staticmethod
    def check_model(source, config=None) -> None:
        """Refuse, with one-line ``ErasureInputError``, a model this method cannot train, before any
        weight loads (``source``/``config`` as for ``load_pipeline``). Default: every model passes."""

    @abstractmethod
    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None):
        """Erase ``request`` from ``pipe`` (modified in place) and return an ``Edit``.

        ``run_dir``: folder for checkpoints (every ``config.checkpoint_every`` steps, when the
        method trains); ``resume``: continue from the checkpoint found there;
        ``progress(stage, done, total, metrics)``: progress callback.
        """

    def trained_edit(self, request, tensors: dict, params: dict | None = None, *, cost: dict, device,
                     mixed_precision: str | None = None, num_processes: int | None = None, extra: dict | None = None,
                     zeroed: dict | None = None) -> Edit:
        """The ``Edit`` of a run of this method: its config and request, the changed tensors (and, for
        pruning, ``zeroed`` masks), the cost (``cost``: a ``CostMeter`` summary, with the device and,
        when given, the mixed precision and number of processes) and, when ``params`` (the trained
        tensors) is given, how many tensors and parameters were trained, before ``extra``."""
        from erasure.edit import Edit  # torch: not imported with the registry

        run_cost = {**cost, "device": str(device)}
        if mixed_precision is not None:
            run_cost["mixed_precision"] = mixed_precision
        if num_processes is not None:
            run_cost["num_processes"] = num_processes
        counts = {} if params is None else {
            "trained_tensors": len(params),
            "trained_parameters": int(sum(p.numel() for p in params.values())),
        }
        return Edit(
            method=self.name,
            config=self.config.to_dict(),
            request=request.to_dict(),
            tensors=tensors,
            base={},
            seed=self.config.seed,
            cost=run_cost,
            extra={**counts, **(extra or {})},
            zeroed=dict(zeroed or {}),
        )
