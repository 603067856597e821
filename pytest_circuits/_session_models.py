"""The models, prompt pairs and patchers a pytest session has loaded: the plugin's heavy half.

``plugin.py`` is imported into every pytest run where this package is installed, so it imports
nothing that imports torch; this module (torch, the engine, the loaders) is imported only when a
test first asks for a model (the ``circuit_model``, ``prompt_pairs`` or ``circuits`` fixture).
"""

from __future__ import annotations

import gc
import importlib
import inspect
import os
import time
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from .loading import ModelSpecError, check_patchable, check_spec, import_factory, load_model, quiet_progress_bars
from .patching import Patcher
from .prompt_paths import PromptPathError
from .prompts import PromptError, PromptPairs


class SessionModels:
    """One model per spec, one set of prompt pairs per (source, folder, model) and one Patcher
    per (model, prompts, ablation) for the whole session; ``state`` is the plugin's CircuitsState."""

    def __init__(self, state):
        self.state = state
        self._models: Dict[str, object] = {}
        self._failures: Dict[str, str] = {}
        self._prompts: Dict[tuple, PromptPairs] = {}
        self._patchers: Dict[tuple, Patcher] = {}
        _share_cores(state.config)

    def model(self, spec: str):
        """The model for ``spec``: the first ``pytest_circuits_load_model`` hook that returns one
        (it may serve any text, ``lab:x`` too), else the built-in loaders; refused here, at load,
        when it cannot be patched. A spec that failed fails the same way for every later test."""
        state = self.state
        if spec not in self._models and spec not in self._failures:
            state._progress(f"pytest-circuits: loading model {spec} on {state.device}")
            start = time.perf_counter()
            try:
                torch.manual_seed(state.seed)
                with quiet_progress_bars():
                    model = state.config.hook.pytest_circuits_load_model(spec=spec, device=state.device, dtype=state.dtype)
                if model is None:
                    model = load_model(
                        spec, state.device, state.dtype, allow_pickle=state.allow_pickle, search=state.search,
                        backend=state.backend, remote=state.remote,
                    )
                else:
                    check_patchable(model, spec)
                self._models[spec] = model
                _freeze_long_lived()
                state.loaded(spec, time.perf_counter() - start)
            except ModelSpecError as error:
                self._failures[spec] = f"pytest-circuits: {error}"
        if spec in self._failures:
            pytest.fail(self._failures[spec], pytrace=False)  # outside the except: no chained repeat of the message
        return self._models[spec]

    def prompts(self, source: str, model, base: Path) -> PromptPairs:
        # per model, not per tokenizer: a factory may compute the pairs from the model (its answers),
        # and checkpoints sharing a tokenizer (or having none) must not share those pairs
        key = (source, str(base), id(model))
        if key not in self._prompts:
            torch.manual_seed(self.state.seed)
            try:
                self._prompts[key] = load_prompts(source, model, base, self.state.prepend_bos, root=self.state.root)
            except (PromptError, PromptPathError, ModelSpecError) as error:
                message = f"pytest-circuits: prompt source {source!r}: {error}"
            else:
                return self._prompts[key]
            pytest.fail(message, pytrace=False)  # outside the except: no chained repeat of the message
        return self._prompts[key]

    def patcher(self, model, pairs: PromptPairs, ablation: str) -> Patcher:
        """One Patcher (one clean and one corrupt run) per (model, prompts, ablation) per session."""
        key = (id(model), id(pairs), ablation)
        if key not in self._patchers:
            self._patchers[key] = Patcher(model, pairs, ablation=ablation)
        return self._patchers[key]


def _freeze_long_lived() -> None:
    """Take what exists once a model is loaded (torch's, transformers' and TransformerLens's
    modules, the model itself: about half a million objects, kept to the end of the session anyway)
    out of Python's cycle collector (``gc.freeze``). Every full collection walked them again, and
    so did the process's exit (1.6 s, 0.2 s frozen); a 40-claim run on a small model took 14.3 s
    against 18.5 s without it (one run each). Garbage is collected first, so nothing collectable
    is frozen; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def _share_cores(config) -> None:
    """On a pytest-xdist worker: torch's intra-op threads set to this worker's share of the cores.
    Each process would otherwise start one thread per core, and N workers' threads spin against
    each other (slower than one thread each). A thread count the user set (``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS``, or ``torch.set_num_threads`` at or below the share) is kept."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers <= 1 or any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // workers)
    if torch.get_num_threads() > share:
        torch.set_num_threads(share)


def load_prompts(source: str, model, base: Optional[Path], prepend_bos: Optional[bool] = None, root: Optional[Path] = None) -> PromptPairs:
    """Prompt pairs from ``source``; a relative ``.jsonl`` path is found as ``prompt_file`` says."""
    from .prompt_paths import prompt_file

    tokenizer = getattr(model, "tokenizer", None)
    if source.endswith(".jsonl"):
        path = prompt_file(source, root or Path.cwd(), base)
        return PromptPairs.from_jsonl(path, tokenizer=tokenizer, prepend_bos=prepend_bos)
    if source.startswith("toy:"):
        check_spec(source)
        pairs = importlib.import_module(f"pytest_circuits.toys.{source[4:]}").prompt_pairs()
    else:
        if ":" not in source:
            raise PromptError("not a .jsonl path, pkg.mod:factory or toy:NAME")
        factory = import_factory(source, what=None, search=() if root is None else (root,))
        params = inspect.signature(factory).parameters
        kwargs = {name: value for name, value in (("model", model), ("tokenizer", tokenizer)) if name in params}
        pairs = factory(**kwargs)
    if not isinstance(pairs, PromptPairs):
        raise PromptError(f"the factory returned {type(pairs).__name__}, not PromptPairs")
    return pairs
