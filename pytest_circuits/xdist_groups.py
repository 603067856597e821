"""pytest-xdist groups: the tests of one model and prompt set go to as few workers as possible.

Every worker that runs a test of a model loads that model and runs its clean and corrupt prompts
once (``_session_models``); with xdist's plain ``load`` mode every worker ends up loading every
model. Under ``--dist loadgroup`` (which the plugin chooses when ``-n`` is given without
``--dist``) each test that uses a model is marked ``xdist_group`` by its (model, prompts): a
checkpoint matrix spreads its checkpoints over the workers, and a worker loads only the models of
the groups it was given. Where there are fewer groups than workers, the largest groups are cut into
contiguous parts, so that no worker idles while one runs a whole suite on one model.

Light module (no torch): the plugin imports it in every run.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from .loading import spec_label, toy_of

PREFIX = "circuits"


def model_and_prompts(item, model_spec: Optional[str], prompt_source: Optional[str]) -> Optional[Tuple[str, str]]:
    """The (model spec, prompt source) a test will ask the plugin for, as the ``circuit_model`` and
    ``prompt_pairs`` fixtures choose them; None for a test that uses no model of the plugin's."""
    if "circuit_model" not in getattr(item, "fixturenames", ()):
        return None
    callspec = getattr(item, "callspec", None)
    checkpoint = callspec.params.get("circuits_checkpoint") if callspec else None
    marker = item.get_closest_marker("circuit_model")
    configured = (marker.args[0] if marker and marker.args else None) or model_spec
    model = checkpoint or configured
    prompts_marker = item.get_closest_marker("prompts")
    source = (prompts_marker.args[0] if prompts_marker and prompts_marker.args else None) or prompt_source
    if source is None and isinstance(configured, str):
        source = toy_of(configured)  # a toy brings its own prompt pairs
    return (str(model), str(source))


def group_names(keys: Sequence[Optional[Tuple[str, str]]], workers: int) -> List[Optional[str]]:
    """One xdist group name per test (None: no group, xdist spreads it alone).

    Tests with the same key share a group; while there are fewer groups than ``workers``, the
    group with the most tests per part is cut into one more part (contiguous runs of tests, so a
    module's tests stay together). The names depend only on the keys and ``workers``, so every
    worker, collecting on its own, names each test the same (xdist requires it)."""
    members: Dict[Tuple[str, str], List[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(index)
    parts = {key: 1 for key in members}
    while members and sum(parts.values()) < workers:
        splittable = [key for key in members if len(members[key]) > parts[key]]
        if not splittable:
            break
        widest = max(splittable, key=lambda key: len(members[key]) / parts[key])
        parts[widest] += 1
    names: List[Optional[str]] = [None] * len(keys)
    for key, indices in members.items():
        label = _safe(f"{PREFIX}({spec_label(key[0])},{_source_label(key[1])})")
        count = parts[key]
        for position, index in enumerate(indices):
            part = position * count // len(indices)
            names[index] = label if count == 1 else f"{label}#{part + 1}"
    return names


def _source_label(source: str) -> str:
    return spec_label(source) if source != "None" and not source.endswith(".jsonl") else source


def _safe(name: str) -> str:
    """xdist reads a test's group as what follows the last ``@`` after its last ``]``: neither may
    appear in a name (nor ``::``, nor spaces, which make node ids hard to pass back on a command line)."""
    return re.sub(r"[@\[\]\s]|::", "_", name)


def mark_groups(items, model_spec: Optional[str], prompt_source: Optional[str], workers: int) -> None:
    """Mark each test that uses a plugin model with its group; tests the user grouped keep theirs."""
    keys = [
        None if item.get_closest_marker("xdist_group") else model_and_prompts(item, model_spec, prompt_source)
        for item in items
    ]
    for item, name in zip(items, group_names(keys, workers)):
        if name is not None:
            item.add_marker(pytest.mark.xdist_group(name))


def without_group(nodeid: str) -> str:
    """A node id without the ``@group`` xdist appends under ``loadgroup`` (as a serial run names it)."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") and at > nodeid.rfind("::") else nodeid


def suffix_group_ids(items) -> bool:
    """Give each grouped test the ``@group`` node-id suffix xdist's ``loadgroup`` schedules by,
    where xdist's worker did not: on pytest 9.2 its ``item._nodeid = ...`` no longer changes the
    node id (structured ids; pytest-xdist issue #1386), so every group would silently be spread
    test by test. Sets the structured id the way xdist's pending fix does; False where the id
    cannot be set (grouping is then lost, never the claims)."""
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        if not names or item.nodeid.endswith("@" + "_".join(names)):
            continue
        wanted = f"{item.nodeid}@{'_'.join(names)}"
        structured = getattr(item, "_id", None)
        if structured is not None and hasattr(type(structured), "parse"):
            item._id = type(structured).parse(wanted)
        else:
            item._nodeid = wanted
        if item.nodeid != wanted:
            return False
    return True
