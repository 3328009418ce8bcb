"""`host-trainer evolve --config FILE`: options from a TOML file, or from a run's config.json (which repeats the run).

Precedence, highest first: the command line, the environment (HOST_TRAINER_*), the file, the defaults
(host_trainer/config.py), as for `edge-evolver serve --config` (edge_evolver/daemon/config.py). The file's values
become click's `default_map`, which click consults only for an option given neither on the command line nor in
the environment, so the precedence is click's own and a value from the file is checked like one typed.

Keys are flat and top-level: an option's name without its dashes (`image_size` or `image-size`, `precision`,
`env_factor`, `device`, `no_probes`), or an EvolveConfig field as config.json writes it (`precision_format`,
`alpha_c` and `alpha_s`, `devices`, `probes`). Fields a run records but never takes as an option
(`config.RECORDED`) are ignored. Any other key, two keys for one option, or a value of the wrong type is a
one-line UserError naming the key.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from host_trainer.config import RECORDED, default_of
from host_trainer.errors import UserError

SELF = "config"  # a file cannot name another file
# Options read as text that a file may give as a number: `gen0_epochs = 3` (or "auto"), `env_factor = 0.7` (or
# "0.8,1"); config.json writes gen0_epochs as a number.
TEXT_OR_NUMBER = ("gen0_epochs", "env_factor")
Option = tuple[Any, Sequence[str]]  # an option's type (as annotated on `evolve`) and its flags


def read_options(path: Path, options: Mapping[str, Option], renamed: Mapping[str, str]) -> dict[str, Any]:
    """The file's values by option (parameter) name, checked; `renamed` maps an option to its config field."""
    source, keys = str(path), _keys(options, renamed)
    found: dict[str, tuple[str, Any]] = {}
    alphas = {}
    for key, value in _read(path).items():
        if key in RECORDED:
            continue
        name = keys.get(key.replace("-", "_"))
        if name is None or name == SELF:
            raise UserError(f"{source}: unknown key {key!r} (not an option of host-trainer evolve; docs/options.md)")
        if name == "env_factor" and key in ("alpha_c", "alpha_s"):
            alphas[key] = _checked(key, value, "a number", source)
            continue
        if name in found:
            raise UserError(f"{source}: {found[name][0]!r} and {key!r} set the same option: keep one")
        found[name] = (key, _value(key, value, name, options[name][0], source))
    if alphas:
        if "env_factor" in found:
            raise UserError(f"{source}: {found['env_factor'][0]!r} and {sorted(alphas)[0]!r} set the same option: "
                            "keep one")
        found["env_factor"] = ("alpha_c", _env_factor(alphas))
    return {name: value for name, (_, value) in found.items() if value is not None}


def _read(path: Path) -> dict[str, Any]:
    """A TOML file (parsed as `edge-evolver serve --config` parses its own), or JSON where the name ends in .json (a
    run's config.json)."""
    json_file = Path(path).suffix.lower() == ".json"
    try:
        if json_file:
            data = json.loads(Path(path).read_bytes())
        else:
            from edge_evolver.daemon.config import read_toml

            data = read_toml(str(path))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError, JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: not valid {'JSON' if json_file else 'TOML'}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of options at the top level")
    return data


def _keys(options: Mapping[str, Option], renamed: Mapping[str, str]) -> dict[str, str]:
    """Every key a file may use -> the option it sets: the option's name, its long flags, its config field."""
    keys: dict[str, str] = {}
    for name, (_, flags) in options.items():
        keys[name] = name
        keys.update({flag.lstrip("-").replace("-", "_"): name for flag in flags if flag.startswith("--")})
        if name in renamed:
            keys[renamed[name]] = name
    keys.update({"alpha_c": "env_factor", "alpha_s": "env_factor"})  # config.json's split --env-factor
    return keys


def _value(key: str, value: Any, name: str, annotation: Any, source: str) -> Any:
    """The value as option `name` takes it (None: not given); a wrong type names `key`."""
    kind = _bare(annotation)
    if name in ("mean", "std") and isinstance(value, list):  # config.json records the resolved values as a list
        if not all(_number(v) for v in value):
            raise UserError(f"{source}: {key!r} must be numbers, got {value!r:.80}")
        return ",".join(repr(float(v)) for v in value) or None  # []: not given, computed on the training split
    if name in TEXT_OR_NUMBER:
        return str(_checked(key, value, "text or a number", source))
    if isinstance(kind, type) and issubclass(kind, Enum):
        choices = [member.value for member in kind]
        if value not in choices:
            raise UserError(f"{source}: {key!r} must be one of {', '.join(choices)}, got {value!r}")
        return value
    checked = _checked(key, value, KIND_NAMES.get(kind, "text"), source)
    if key == "probes":  # config.json's field: not --no-probes
        return not checked
    return None if kind is Path and checked == "" else checked  # config.json's "" is no file: the option stays unset


def _bare(annotation: Any) -> Any:
    """Optional[X] -> X; List[str] -> list."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return _bare(args[0])
    return typing.get_origin(annotation) or annotation


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", list: "a list of text", str: "text",
              Path: "text"}
KINDS = {"an integer": lambda v: isinstance(v, int) and not isinstance(v, bool), "a number": _number,
         "text": lambda v: isinstance(v, str), "text or a number": lambda v: isinstance(v, str) or _number(v),
         "a list of text": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
         "true or false": lambda v: isinstance(v, bool)}


def _checked(key: str, value: Any, kind: str, source: str) -> Any:
    if not KINDS[kind](value):
        raise UserError(f"{source}: {key!r} must be {kind}, got {value!r}")
    return value


def _env_factor(alphas: dict[str, float]) -> str:
    """config.json's alpha_c and alpha_s as --env-factor's `α_c,α_s` (a missing one keeps its default)."""
    return f"{alphas.get('alpha_c', default_of('alpha_c'))!r},{alphas.get('alpha_s', default_of('alpha_s'))!r}"
