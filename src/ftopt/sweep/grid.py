"""`ftopt bench --grid FILE`: the YAML grid of combinations a sweep runs, read and checked before the first run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from ftopt.spec import Combination
from ftopt.spec.errors import FtoptError, first_line, validation_message
from ftopt.spec.io import read_text


def load_grid(path: str | Path) -> list[Combination]:
    """A YAML grid: either `combinations: [{gc: true, lora_r: 8, ...}, ...]` or axes
    `grid: {gc: [false, true], lora_r: [0, 8], zero: [0, 2], attn: [sdpa]}` (the product, invalid ones dropped)."""
    text = read_text(path, "grid")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FtoptError(f"The grid {path} is not valid YAML: {first_line(e)}.") from None
    if not isinstance(doc, dict) or not ({"combinations", "grid"} & set(doc)):
        raise FtoptError(f"The grid {path} needs a 'combinations' list or a 'grid' of option lists.")
    unknown = set(doc) - {"combinations", "grid"}
    if unknown:
        raise FtoptError(
            f"The grid {path} has unknown key(s) {', '.join(sorted(unknown))}; use 'combinations' or 'grid'."
        )
    _check_grid_shape(path, doc)
    allowed = set(Combination.model_fields)
    out: list[Combination] = []
    try:
        for i, c in enumerate(doc.get("combinations") or [], 1):
            bad = set(c) - allowed
            if bad:
                raise FtoptError(
                    f"Grid combination {i} names unknown option(s) {', '.join(sorted(bad))}; "
                    f"known: {', '.join(sorted(allowed))}."
                )
            out.append(Combination(**c))
        axes = doc.get("grid") or {}
        bad = set(axes) - allowed
        if bad:
            raise FtoptError(
                f"The grid names unknown option(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(allowed))}."
            )
        out += _grid_product(path, axes)
    except ValidationError as e:
        raise FtoptError(f"Grid {path}: {validation_message(e)}.") from None
    return out


def _grid_product(path: str | Path, axes: dict) -> list[Combination]:
    """The valid points of the product of `axes`. A point that breaks a rule between options (offload without
    ZeRO) is dropped; a value that is in no valid point at all (a typo such as lora_r: [0, x], a rank of -8, DoRA
    on a grid of full fine-tunes) is refused with the reason of its first point, since dropping it would silently
    run a smaller sweep than the one written."""
    import itertools

    if not axes:
        return []
    names = list(axes)
    lists = [v if isinstance(v, list) else [v] for v in axes.values()]
    out, first_error, used = [], None, set()  # used: (axis, index of its value) in a valid point
    reason: dict[tuple[int, int], str] = {}
    for picks in itertools.product(*(range(len(v)) for v in lists)):
        try:
            out.append(Combination(**{n: lists[a][i] for a, (n, i) in enumerate(zip(names, picks))}))
            used.update(enumerate(picks))
        except ValidationError as e:
            first_error = first_error or validation_message(e)
            for at in enumerate(picks):
                reason.setdefault(at, validation_message(e))
    if not out:
        why = f" (the first: {first_error})" if first_error else ""
        raise FtoptError(f"The grid {path} defines no valid combination{why}.")
    unused = sorted(set(reason) - used)
    if unused:
        a, i = unused[0]
        value = json.dumps(lists[a][i], default=str)
        raise FtoptError(
            f"The grid {path}: {names[a]}: {value} is in no valid combination of the grid "
            f"(the first: {reason[(a, i)]}); fix or remove it."
        )
    return out


def _check_grid_shape(path: str | Path, doc: dict) -> None:
    """`combinations` is a list of option mappings and `grid` a mapping of option lists, else one sentence (a
    scalar or list where a mapping belongs would otherwise fail deep inside the product)."""
    combos, axes = doc.get("combinations"), doc.get("grid")
    if combos is not None and not (isinstance(combos, list) and all(isinstance(c, dict) for c in combos)):
        raise FtoptError(f"The grid {path}: 'combinations' must be a list of option mappings such as {{lora_r: 8}}.")
    if axes is not None and not isinstance(axes, dict):
        raise FtoptError(f"The grid {path}: 'grid' must map option names to lists of values such as lora_r: [0, 8].")
