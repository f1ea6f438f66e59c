"""The built-in evaluation suites, one module each, and the lookup by name.

A suite is a module here with a ``Suite`` subclass decorated ``@register_suite("name")`` (see
``erasure.evaluation.registry``) and its YAML file ``configs/suites/name.yaml``; nothing else names
it. ``get_suite("sd-nudity")`` imports ``sd_nudity.py`` (the name with "-" as "_") on first use;
``available_suites()`` imports every module here. A plug-in outside the package registers its suite
by being imported.

    suite = load_suite("sd-nudity", nudity_threshold=0.5)   # YAML defaults, then the caller's values
    suite.config.nudity_classes                              # typed, checked
"""

from __future__ import annotations

import importlib
import pkgutil

from erasure.errors import ErasureInputError

from ..registry import REGISTRY, Suite


def _builtin_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def available_suites() -> list[str]:
    """Every registered suite's name (the built-in modules imported)."""
    for module in _builtin_modules():
        importlib.import_module(f"{__name__}.{module}")
    return sorted(REGISTRY)


def get_suite(name: str) -> type[Suite]:
    """The suite class registered as ``name``; an unknown name is refused in one line."""
    if name not in REGISTRY:
        module = name.replace("-", "_")
        if module in _builtin_modules():
            importlib.import_module(f"{__name__}.{module}")
    if name not in REGISTRY:
        raise ErasureInputError(f"unknown suite {name!r}; available: {', '.join(available_suites())}")
    return REGISTRY[name]


def suite_file(name: str) -> dict:
    """The suite's YAML (configs/suites/NAME.yaml, or a plug-in's ``config_path``) as a mapping."""
    from erasure.config import read_config_file
    from erasure.configs import preset_path

    cls = get_suite(name)  # unknown names fail with the list of suites
    return read_config_file(cls.config_path or preset_path(f"suites/{name}"))


def load_suite(name: str, **args) -> Suite:
    """The suite ``name`` configured by its YAML file, then by ``args`` (``None`` values ignored).

    ``args`` are the config's fields (``--suite-arg KEY=VALUE`` on the command line); an unknown key
    or a value of the wrong type is refused in one line naming the suite's keys."""
    cls = get_suite(name)
    cls.check_args({k: v for k, v in args.items() if v is not None})
    config = cls.config_class.from_dict(suite_file(name)).with_overrides(**args)
    return cls(config)
