"""Configuration files and dataclasses: ``MethodConfig`` and the YAML/JSON readers it uses.

``MethodConfig`` is a dataclass that round-trips through plain dicts, JSON and YAML, in the spirit
of diffusers' ``ConfigMixin``: ``to_dict``/``from_dict``, ``to_json``/``from_json``,
``to_yaml``/``from_yaml``, ``load(path)`` by suffix. Unknown keys and values of the wrong type are
refused with one-line ``ErasureInputError``s; ``with_overrides(**kv)`` applies CLI flags on top
of a file. It is the base of every method's hyperparameters (``erasure.methods``) and of the core's
own settings (``erasure.attacks.SoftPromptAttackConfig``), so it lives in the core.

``load_yaml`` reads YAML as YAML 1.2 does where 1.1 differs; ``read_config_file`` reads the mapping
in a ``.json``, ``.yaml`` or ``.yml`` file with one-line errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from erasure.errors import ErasureInputError

#: ``config="defaults"`` (``--config defaults``): the method's own defaults (its paper's), never a preset.
DEFAULTS = "defaults"


@dataclasses.dataclass
class MethodConfig:
    """Base of every config dataclass (a method's hyperparameters, the attack's settings).
    Subclasses add fields with defaults."""

    #: the registry name of the method the config belongs to (written into files, checked on load).
    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Subclasses raise ``ErasureInputError`` for invalid values."""

    def check_bounds(self, *, at_least_one: Iterable[str] = (), non_negative: Iterable[str] = (),
                     positive: Iterable[str] = (), optional: Iterable[str] = (), prefix: str | None = None) -> None:
        """The common refusals of ``validate``, one line each: the named fields must be >= 1, >= 0 or > 0;
        a ``None`` is refused too, except in the ``optional`` fields (where it means "off" or "the default")."""
        prefix = f"{self.method} config " if prefix is None else prefix
        for names, fails, rule in ((at_least_one, lambda v: v < 1, "at least 1"), (non_negative, lambda v: v < 0, ">= 0"),
                                   (positive, lambda v: not v > 0, "positive")):
            for name in names:
                value = getattr(self, name)
                if value is None and name in optional:
                    continue
                if value is None or fails(value):
                    raise ErasureInputError(f"{prefix}{name}: must be {rule}, got {value}")

    # -- dicts
    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "MethodConfig":
        data = dict(data or {})
        declared = data.pop("method", None)
        if declared is not None and cls.method and declared != cls.method:
            raise ErasureInputError(f"config is for method {declared!r}, not {cls.method!r}")
        return cls(**cls._checked(data))

    @classmethod
    def of(cls, config: "MethodConfig | dict | None", owner: str, /, **overrides) -> "MethodConfig":
        """``config`` as this class (None: the defaults; a dict: ``from_dict``; another config type is
        refused in one line naming ``owner``), with ``overrides`` applied: how a method or an attack
        takes its config."""
        if config is None:
            config = cls()
        elif isinstance(config, dict):
            config = cls.from_dict(config)
        elif not isinstance(config, cls):
            raise ErasureInputError(f"{owner}: expected a {cls.__name__}, got {type(config).__name__}")
        return config.with_overrides(**overrides) if overrides else config

    def with_overrides(self, /, **overrides) -> "MethodConfig":
        """A copy with ``overrides`` applied (``None`` values are ignored), validated."""
        values = self.to_dict()
        values.update(self._checked({k: v for k, v in overrides.items() if v is not None}))
        return type(self)(**values)

    @classmethod
    def _checked(cls, data: dict) -> dict:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ErasureInputError(
                f"unknown {cls.method or cls.__name__} config key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(names)}"
            )
        hints = typing.get_type_hints(cls)
        return {k: _coerce(k, v, hints[k], cls.method or cls.__name__) for k, v in data.items()}

    # -- files
    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps({"method": self.method, **self.to_dict()}, indent=2) + "\n"
        if path is not None:
            _write(path, text)
        return text

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        import yaml

        text = yaml.safe_dump({"method": self.method, **self.to_dict()}, sort_keys=False)
        if path is not None:
            _write(path, text)
        return text

    @classmethod
    def from_json(cls, text: str) -> "MethodConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ErasureInputError(f"malformed JSON config: {exc}") from None
        return cls.from_dict(_mapping(data))

    @classmethod
    def from_yaml(cls, text: str) -> "MethodConfig":
        import yaml

        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ErasureInputError(f"malformed YAML config: {' '.join(str(exc).split())}") from None
        return cls.from_dict(_mapping(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MethodConfig":
        """Read a ``.json``, ``.yaml`` or ``.yml`` config file."""
        return cls.from_dict(read_config_file(path))


def load_yaml(text: str):
    """``yaml.safe_load`` read as YAML 1.2 where 1.1 surprises: "1e-5" is a number, "no" is a text.

    PyYAML follows YAML 1.1, where "1e-5" is a string and yes/no/on/off are booleans; people write
    learning rates that way and settings such as ``mixed_precision: no`` (YAML 1.2, JSON and Python
    read them as a number and a text), so configs and ``--set`` accept them. Booleans are
    true/false only."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != bool_tag]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_assignments(items: list[str], label: str = "--set") -> dict:
    """Config overrides from KEY=VALUE texts, values read as YAML (``erasure erase --set``,
    ``erasure evaluate --suite-arg``, the app's settings box); ``label`` names the source in the one-line error."""
    import re

    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ErasureInputError(f"{label} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = load_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            raise ErasureInputError(f"{label} {item!r}: unreadable value") from None
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in a JSON or YAML config file, with one-line errors."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ErasureInputError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ErasureInputError(f"{p}: unsupported config type {suffix or '(none)'!r}; use .yaml, .yml or .json")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if suffix == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ErasureInputError(f"{p}: malformed {suffix[1:].upper()}: {' '.join(str(exc).split())}") from None
    return _mapping(data, p)


def _mapping(data, where=None) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ErasureInputError(f"{where or 'config'}: expected a mapping of config keys to values")
    return data


def _write(path, text: str) -> None:
    from erasure.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _coerce(key: str, value, hint, owner: str):
    """Check ``value`` against the field's type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, owner)
            except ErasureInputError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ErasureInputError(f"{owner} config {key}: expected a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return [_coerce(key, v, inner, owner) for v in value]
    if hint is typing.Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ErasureInputError(f"{owner} config {key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ErasureInputError(f"{owner} config {key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ErasureInputError(f"{owner} config {key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ErasureInputError(f"{owner} config {key}: expected a text, got {value!r}")
        return value
    return value
