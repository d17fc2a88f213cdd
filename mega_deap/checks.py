"""Settings checked before any work: each failure is a ValueError or TypeError naming the setting, the
value it got and what was expected."""

import math
import numbers
import os
from typing import Optional

__all__ = [
    "SettingError",
    "SettingTypeError",
    "integer",
    "run_sizes",
    "choice",
    "probability",
    "nonnegative",
    "positive",
    "writable_file",
    "check_toolbox_settings",
]


class SettingError(ValueError):
    """A setting or an input the caller gave that cannot be used: the message names it, the value it got and
    what was expected. Every ValueError that mega_deap raises itself is one; a plain ValueError from below
    (torch, NumPy) is not, so a command line can tell the user's mistake from a fault in the library."""


class SettingTypeError(TypeError):
    """As :class:`SettingError`, for a value of the wrong type."""


def integer(name: str, value, minimum: Optional[int] = None) -> int:
    """``value`` as an int, refusing floats (20.5 or 20.0), bools and strings."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingTypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SettingError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def run_sizes(ngen, npar) -> None:
    """The sizes every MeGA run has: ``ngen`` >= 0 generations, ``npar`` >= 2 winners per child."""
    integer("ngen", ngen)
    integer("npar", npar)
    if ngen < 0:
        raise SettingError(f"ngen must be >= 0, got {ngen}")
    if npar < 2:
        raise SettingError(f"npar must be >= 2 (the first two winners mate), got {npar}")


def choice(name: str, value, options: tuple):
    if value not in options:
        raise SettingError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
    return value


def probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise SettingError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise SettingError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise SettingError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def writable_file(name: str, path) -> str:
    """``path`` can be written: not a folder, and its folder exists (or can be made) and is writable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise SettingError(f"{name} {path!r} is a folder; expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise SettingError(f"{name} {path!r} cannot be written: {existing!r} is not a writable folder")
    return path


# keyword -> check, by DEAP's own names, so DEAP's operators are checked as ours are
_KEYWORDS = {
    "indpb": probability,
    "layerpb": probability,
    "cxpb": probability,
    "mutpb": probability,
    "sigma": nonnegative,
    "alpha": nonnegative,
    "tournsize": lambda n, v: integer(n, v, 1),
    "k": lambda n, v: integer(n, v, 0),
}


def check_toolbox_settings(toolbox) -> None:
    """Check the keyword settings the toolbox's registrations bind (``sigma``, ``indpb``, ``tournsize``,
    ...), naming the alias: a bad one fails here, before generation 0, not in generation 1."""
    from .resume import unwrap

    for alias in ("select", "mate", "mutate", "vary", "elite", "evaluate"):
        f = getattr(toolbox, alias, None)
        if f is None:
            continue
        _, kw = unwrap(f)
        for key, value in kw.items():
            if key in _KEYWORDS:
                try:
                    _KEYWORDS[key](f"toolbox.{alias}'s {key}", value)
                except TypeError as err:
                    raise SettingError(str(err)) from None
