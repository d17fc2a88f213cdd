"""The public API as a user reads it: every public function and method fully annotated and documented."""

import importlib
import inspect

import pytest

MODULES = ("mega_deap", "mega_deap.adapters", "mega_deap.align")


def public_callables():
    seen, out = set(), []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                out.append((f"{name}.{attr}", obj))
                out += [
                    (f"{name}.{attr}.{m}", f)
                    for m, f in vars(obj).items()
                    if (not m.startswith("_") or m == "__init__") and inspect.isfunction(f)
                ]
            elif callable(obj):
                out.append((f"{name}.{attr}", obj))
    return out


CALLABLES = public_callables()


def test_there_is_a_public_api_to_check():
    names = {n for n, _ in CALLABLES}
    assert {
        "mega_deap.merge",
        "mega_deap.adapters.TorchAdapter.forward",
        "mega_deap.align.activation_matching",
    } <= names


FUNCTIONS = [c for c in CALLABLES if not inspect.isclass(c[1])]


@pytest.mark.parametrize("name,obj", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_every_public_function_is_fully_annotated(name, obj):
    sig = inspect.signature(obj)
    loose = [
        p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "cls")
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.annotation is inspect.Parameter.empty
    ]
    assert not loose, f"{name}: parameters without a type: {loose}"
    if not name.endswith("__init__"):
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return type"


@pytest.mark.parametrize("name,obj", CALLABLES, ids=[n for n, _ in CALLABLES])
def test_every_public_name_is_documented(name, obj):
    if name.endswith("__init__"):
        return  # the class's docstring documents its constructor
    assert inspect.getdoc(obj), f"{name} has no docstring"


def test_no_docstring_line_holds_two_fields():
    """Documentation tools read one :param: (or :returns:) field per line; a second one on the same line
    vanishes into the first one's text."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    crowded = [
        f"{path.relative_to(root)}:{i}"
        for path in [*root.glob("mega_deap/**/*.py"), *root.glob("adapters/*.py")]
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if len(re.findall(r":(?:param [^:]+|returns|raises [^:]+):", line)) > 1
    ]
    assert not crowded, crowded
