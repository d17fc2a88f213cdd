"""Resuming a run from its checkpoint: what identifies the run's settings, and the restore itself.

:func:`toolbox_fingerprint` turns a toolbox's registrations into comparable data; :func:`resume` refuses a
checkpoint written with other settings, naming the first difference, and otherwise restores the
population (in order), the hall of fame, the logbook and every random source.
"""

import functools
from typing import Optional

import torch
from deap import base, tools

from .checkpoint import load_checkpoint
from .files import tensor_digest
from .rng import set_rng_state
from .checks import SettingError

__all__ = ["unwrap", "toolbox_fingerprint", "toolbox_generators", "population_digest", "run_settings", "resume"]

ALIASES = ("clone", "select", "mate", "mutate", "vary", "elite", "evaluate", "map")


def unwrap(f, layers: Optional[list] = None) -> tuple:
    """``(function, keywords)``: the function a toolbox registration calls, under DEAP's partials and any
    decorators, and the keywords the partials bind. ``layers``, when given, receives every partial and
    decorator passed through, outermost first."""
    kw: dict = {}
    while True:
        if isinstance(f, functools.partial):
            if layers is not None:
                layers.append(f)
            kw = {**f.keywords, **kw}
            f = f.func
            continue
        inner = getattr(f, "func", None) or getattr(f, "__wrapped__", None)
        if inner is None or inner is f:
            return f, kw
        if layers is not None:
            layers.append(f)
        f = inner


def _describe(value) -> str:
    """A keyword's value as the fingerprint compares it: its ``repr``, but a ``torch.Generator`` by its device
    (its repr holds a memory address, and its state is saved in the checkpoint instead)."""
    if isinstance(value, torch.Generator):
        return f"torch.Generator(device={str(value.device)!r})"
    return repr(value)


def toolbox_generators(tb: base.Toolbox, aliases=ALIASES) -> dict:
    """``{"alias.keyword": generator}``: the ``torch.Generator`` objects the toolbox's registrations bind;
    their states go into a checkpoint and come back on resume."""
    out = {}
    for alias in aliases:
        f = getattr(tb, alias, None)
        if f is not None:
            out.update({f"{alias}.{k}": v for k, v in unwrap(f)[1].items() if isinstance(v, torch.Generator)})
    return out


def toolbox_fingerprint(tb: base.Toolbox, aliases=ALIASES) -> dict:
    """What a toolbox registers, as comparable JSON-able data: ``{alias: [function name, [[keyword, repr]]]}``
    (an adapter's ``layout`` keyword is named, not printed; a ``torch.Generator`` by its device)."""
    out = {}
    for alias in aliases:
        f = getattr(tb, alias, None)
        if f is None:
            continue
        base_f, kw = unwrap(f)
        out[alias] = [
            getattr(base_f, "__qualname__", type(base_f).__qualname__),
            sorted([k, "layout" if k == "layout" else _describe(v)] for k, v in kw.items()),
        ]
    return out


def population_digest(population: list) -> str:
    """SHA-256 of the genomes of ``population``, in order: the parents, the layout, the seed and the
    initialisation all show in the initial population, so this digest identifies a run's start."""
    return tensor_digest(*(ind.genome for ind in population))


def run_settings(toolbox: base.Toolbox, npar: int, population: list, job: Optional[dict] = None) -> dict:
    """What identifies a run's job, recorded in its checkpoint and compared on resume: ``npar``, the
    registered operators and their settings, a digest of the initial population (parents, layout, seed),
    the evaluation (metric and a digest of the validation data) when the evaluator can say, and ``job``
    (JSON-able settings the caller knows and the population may not show, such as the seed) when given."""
    settings = {
        "npar": npar,
        "toolbox": toolbox_fingerprint(toolbox),
        "initial_population": population_digest(population),
    }
    if job is not None:
        settings["job"] = job
    evaluate, _ = unwrap(getattr(toolbox, "evaluate", None))
    if hasattr(evaluate, "fingerprint"):
        settings["evaluation"] = evaluate.fingerprint()
    return settings


_WHAT = {
    "initial_population": "initial population (other parents, another layout or another seed)",
    "evaluation": "evaluation (another metric or other validation data)",
    "job": "settings (another seed)",
}


def resume(
    path, population: list, toolbox: base.Toolbox, halloffame, logbook: tools.Logbook, settings: dict, ngen: int
) -> int:
    """Restore a run from ``path`` into ``population`` (in order), the hall of fame, the logbook and every
    random source; returns the first generation still to run. A checkpoint of another job (other
    ``settings``: operators, ``npar``, initial population, evaluation) or past ``ngen`` is refused, naming
    the first difference, before anything is restored."""
    meta, tensors = load_checkpoint(path)
    saved = meta.get("extra", {})
    for key in sorted(set(saved) | set(settings)):
        if key in _WHAT and saved.get(key) != settings.get(key):
            raise SettingError(
                f"checkpoint {path!r} belongs to another job: its {_WHAT[key]} differs from this "
                f"run's ({saved.get(key)!r} there, {settings.get(key)!r} here); start a new "
                f"checkpoint or resume the run that wrote it"
            )
        if key == "toolbox":
            old, new = saved.get(key, {}), settings[key]
            for alias in sorted(set(old) | set(new)):
                if old.get(alias) != new.get(alias):
                    raise SettingError(
                        f"checkpoint {path!r} was written with toolbox.{alias} = {old.get(alias)}, "
                        f"this run registers {new.get(alias)}; resume with the same toolbox or "
                        f"start a new checkpoint"
                    )
        elif saved.get(key) != settings.get(key):
            raise SettingError(
                f"checkpoint {path!r} was written with {key}={saved.get(key)!r}, this run has "
                f"{key}={settings.get(key)!r}"
            )
    if meta["gen"] > ngen:
        raise SettingError(f"checkpoint {path!r} is at generation {meta['gen']}, past this run's ngen={ngen}")
    G = tensors["population"]
    D = len(population[0])
    if G.shape != (len(population), D):
        raise SettingError(
            f"checkpoint {path!r} holds a population of {G.shape[0]} x {G.shape[1]}, this run has "
            f"{len(population)} x {D}"
        )
    for ind, g, fit in zip(population, G, meta["fitness"]):
        ind.genome.copy_(g.to(device=ind.genome.device, dtype=ind.genome.dtype))
        if fit is None:
            del ind.fitness.values
        else:
            ind.fitness.values = tuple(fit)
    if halloffame is not None:
        halloffame.clear()
        if "halloffame" in tensors:
            for g, fit in zip(tensors["halloffame"], meta["halloffame_fitness"]):
                item = toolbox.clone(population[0])
                item.genome.copy_(g.to(device=item.genome.device, dtype=item.genome.dtype))
                item.fitness.values = tuple(fit)
                halloffame.insert(item)
                del item
    for record in meta["logbook"]:
        logbook.record(**record)
    set_rng_state(meta["rng"], tensors, population[0].genome.device)
    for name, generator in toolbox_generators(toolbox).items():
        state = tensors.get(f"state/{name}")
        if state is None:
            raise SettingError(f"checkpoint {path!r} has no state for the generator of {name}")
        generator.set_state(state)
    return meta["gen"] + 1
