"""Every operation on every backend and every architecture family against an independent reference.

The engine runs, for each installed backend (one row of ``backend_rows.py``: the TransformerLens
bridge, the plain Hugging Face model (``hf``), an ``NNsight`` wrapper of it (``nnsight``); a
backend that is not installed is skipped with the reason), on a tiny random Hugging Face model of
each family (padded batches of prompts of different lengths); the reference (``hf_reference.py``)
runs a second copy of the same weights prompt by prompt, unpadded, through the Hugging Face
modules (or a forward written from the weights, for edges), and shares no code with the engine or
TransformerLens. Circuits are given to the engine as text and to the reference as plain tuples
written here, so not even the circuit parser is shared.

Every number must agree to 1e-4 (float32) or the engine must refuse with a ``BackendError`` that
names the architecture; the tests of refusals pin down, backend by backend, exactly which families
refuse what (the row's ``families``, ``edge_families`` and ``refused``).

Suite time: the bridge row runs every test in float32 and float64; the ``hf`` and ``nnsight`` rows
run the node, sweep and edge tests in float32 only (``Row.dtypes``; attribution is float64 on
every row). The sweep paths (``force_path``, ``taken_path``, ``PROBED``: suffix, resume) are the
TransformerLens backend's: the other rows take the plain path, and their sweeps check that.
"""

from __future__ import annotations

import functools

import hf_reference as ref
import pytest
import torch
from backend_rows import BRIDGE, ROWS
from families import FAMILIES, GQA_FAMILIES, PARALLEL_FAMILIES, TEST_DEVICE, build_hf, random_prompts

from pytest_circuits import BackendError, CircuitError, Patcher, PromptPairs, attribute, pareto
from pytest_circuits.backends import backend_for
from pytest_circuits.minimality import minimality
from pytest_circuits.sweeps import Sweeper

LENGTHS = [8, 6, 7, 5]  # a padded batch: prompts of different lengths
N_LAYERS, N_HEADS = 2, 4
# the families whose bridges give each receiver its own input; the others must refuse edges
EDGE_FAMILIES = ROWS[BRIDGE].edge_families
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {"float32": 1e-4, "float64": 1e-6}  # float64: rotary tables are float32 in some HF models


@functools.lru_cache(maxsize=None)  # tiny models: keep every family, tests visit them in turn
def setup(family: str, dtype: str, backend: str = BRIDGE):
    """The engine's model (``backend``'s, of a fresh copy of the family's weights) and prompt
    pairs, and the reference's copy of the same weights with the clean and corrupt runs recorded
    prompt by prompt."""
    pairs, reference = reference_for(family, dtype)
    if family == "native":
        model = native_attention_only(DTYPES[dtype])[0]
    else:  # its own copy: the bridge rewires the modules it is given, the others hook them
        model = ROWS[backend].make(build_hf(family, DTYPES[dtype]), family, DTYPES[dtype])
    return model, pairs, reference


@functools.lru_cache(maxsize=None)
def reference_for(family: str, dtype: str):
    """The prompt pairs and the reference (shared by every backend's model of the family)."""
    torch_dtype = DTYPES[dtype]
    clean, corrupt, answers = random_prompts(len(LENGTHS), max(LENGTHS), lengths=LENGTHS)
    pairs = PromptPairs([c.tolist() for c in clean], [x.tolist() for x in corrupt], answers)
    hf = native_attention_only(torch_dtype)[1] if family == "native" else build_hf(family, torch_dtype)
    runs = {"clean": clean, "corrupt": corrupt}
    records = {run: [ref.record(hf, t) for t in prompts] for run, prompts in runs.items()}
    return pairs, Reference(hf, runs, records, answers)


def native_attention_only(dtype):
    """TransformerLens's own attention-only architecture (``boot_native``), as a bridge, and a second
    copy of the same module for the reference, which hooks its plain torch modules."""
    import copy

    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native.init import initialize_native_model
    from transformer_lens.model_bridge.sources.native.model import NativeModel

    cfg = TransformerBridgeConfig(d_model=32, d_head=8, n_layers=N_LAYERS, n_ctx=64, n_heads=N_HEADS, d_vocab=50, attn_only=True, seed=0, device=TEST_DEVICE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = NativeModel(cfg)
        initialize_native_model(module, cfg)
        for parameter in module.parameters():  # larger weights, so a two-token corruption matters
            parameter.data.mul_(3.0)
    module = module.to(device=TEST_DEVICE, dtype=dtype).eval()
    reference_copy = copy.deepcopy(module)
    bridge = build_bridge_from_module(module, architecture="TransformerLensNative", tl_config=cfg, model_name="native")
    return bridge.eval(), reference_copy


ATTENTION_ONLY = ("native",)
ALL_FAMILIES = FAMILIES + ATTENTION_ONLY


def grid(items, ids, needs_mlp, backend: str = BRIDGE):
    """(family, dtype, *item) for every family and dtype of ``backend``'s row; attention-only
    families get only the items that ``needs_mlp(item)`` says need no MLP."""
    row = ROWS[backend]
    return [
        pytest.param(family, dtype, *item, id=f"{item_id}-{family}-{dtype}")
        for family in row.families
        for dtype in row.dtypes
        for item, item_id in zip(items, ids)
        if family not in ATTENTION_ONLY or not needs_mlp(item)
    ]


def cases(edges_only: bool = False, mlps: bool = True, backend: str = BRIDGE):
    row = ROWS[backend]
    return [
        pytest.param(family, dtype, id=f"{family}-{dtype}", marks=row.marks())
        for family in row.families
        for dtype in row.dtypes
        if (not edges_only or family in row.edge_families) and (not mlps or family in FAMILIES)
    ]


def on_rows(params_for):
    """``params_for(backend)``'s parameters with the backend's name put first, for every row (a
    row whose backend is not installed is skipped with the reason)."""
    return [ROWS[backend].param(*p.values, id=p.id, marks=p.marks) for backend in ROWS for p in params_for(backend)]


def families_of(backend: str, among=None, edges: bool = False):
    """(backend, family) for the row's families (or its edge families), restricted to ``among``."""
    row = ROWS[backend]
    return [
        row.param(family, id=family)
        for family in (row.edge_families if edges else row.families)
        if among is None or family in among
    ]


def each_row(among=None, edges: bool = False):
    return [p for backend in ROWS for p in families_of(backend, among, edges)]


class Reference:
    """Per-prompt metrics of patched runs of the reference, and the fractions made of them."""

    def __init__(self, hf, runs, records, answers):
        self.hf, self.runs, self.records, self.answers = hf, runs, records, answers
        self.n = len(answers)
        self._writes = {}

    # -- metrics -------------------------------------------------------------------------------
    def metric(self, logits: torch.Tensor, i: int, name: str = "logit_diff") -> float:
        last = logits[-1].double()  # the answer position: each prompt's last token (unpadded)
        correct, incorrect = (int(t) for t in self.answers[i])
        if name == "logit_diff":
            return float(last[correct] - last[incorrect])
        if name == "prob":
            return float(last.softmax(-1)[correct])
        clean = self.records["clean"][i][("logits",)][-1].double()
        return float((clean.softmax(-1) * (clean.log_softmax(-1) - last.log_softmax(-1))).sum())  # kl

    def baseline(self, run: str, name: str = "logit_diff") -> float:
        return sum(self.metric(self.records[run][i][("logits",)], i, name) for i in range(self.n)) / self.n

    def score(self, patched: float, mode: str, name: str = "logit_diff") -> float:
        clean, corrupt = self.baseline("clean", name), self.baseline("corrupt", name)
        if mode == "noise":
            return (clean - patched) / (clean - corrupt)
        return (patched - corrupt) / (clean - corrupt)

    # -- node patching -------------------------------------------------------------------------
    def node_run(self, base: str, source: str, chooser, name: str = "logit_diff") -> float:
        """Mean metric of runs on ``base`` prompts where ``chooser(i, length)`` gives, per prompt,
        {key: (index selector, positions)} of values to take from the ``source`` run."""
        values = []
        for i in range(self.n):
            tokens = self.runs[base][i]
            src = self.records[source][i]
            replace = {}
            for key, selections in chooser(i, len(tokens)).items():
                replace[key] = _replacer(src[key], selections)
            values.append(self.metric(ref.run(self.hf, tokens, replace), i, name))
        return sum(values) / self.n

    # -- edges ---------------------------------------------------------------------------------
    def writes(self, run: str, i: int) -> dict:
        if (run, i) not in self._writes:
            self._writes[(run, i)] = ref.sender_writes(self.hf, self.runs[run][i])
        return self._writes[(run, i)]

    def edge_run(self, base: str, choose_for_prompt, name: str = "logit_diff") -> float:
        values = []
        for i in range(self.n):
            logits = ref.edge_run(self.hf, self.runs[base][i], choose_for_prompt(i))
            values.append(self.metric(logits, i, name))
        return sum(values) / self.n


def _replacer(source: torch.Tensor, selections):
    """value -> value with ``source`` put in at each (component index or None, positions or None)."""

    def fn(value):
        value = value.clone()
        for index, positions in selections:
            rows = slice(None) if positions is None else positions
            if index is None:
                value[rows] = source[rows]
            else:
                value[rows, index] = source[rows, index]
        return value

    return fn


def close(actual: float, expected: float, dtype: str) -> bool:
    return abs(actual - expected) <= TOL[dtype] * max(1.0, abs(expected))


# -- node circuits: (engine text, reference nodes as (kind, layer, index, position)) ---------------
NODE_CIRCUITS = [
    ("L1H2", [("head", 1, 2, None)]),
    ("L0H3 MLP1", [("head", 0, 3, None), ("mlp", 1, None, None)]),
    ("L0N5 L1N17", [("neuron", 0, 5, None), ("neuron", 1, 17, None)]),
    ("embed", [("embed", None, None, None)]),
    ("L1H1@-1 MLP0@2", [("head", 1, 1, -1), ("mlp", 0, None, 2)]),
]


def selected(nodes, length):
    """{key: [(index, positions)]} selecting ``nodes`` in a prompt of ``length`` tokens."""
    out = {}
    for kind, layer, index, position in nodes:
        key = ("embed",) if kind == "embed" else (kind, layer)
        positions = None if position is None else [position % length] if position < length else []
        if positions == []:
            continue
        out.setdefault(key, []).append((index, positions))
    return out


def complement(nodes, length, d_mlp):
    """Every head and MLP outside ``nodes`` (an MLP with a named neuron goes neuron by neuron)."""
    split = {layer for kind, layer, _, _ in nodes if kind == "neuron"}
    kept = {(kind, layer, index) for kind, layer, index, _ in nodes}
    out = {}
    for layer in range(N_LAYERS):
        heads = [h for h in range(N_HEADS) if ("head", layer, h) not in kept]
        if heads:
            out[("head", layer)] = [(heads, None)]
        if layer in split:
            neurons = [n for n in range(d_mlp) if ("neuron", layer, n) not in kept]
            out[("neuron", layer)] = [(neurons, None)]
        elif ("mlp", layer, None) not in kept and d_mlp:
            out[("mlp", layer)] = [(None, None)]
    return out


def uses_mlp(item) -> bool:
    return any(node[0] in ("mlp", "neuron") for node in item[1])


@pytest.mark.parametrize(
    "backend, family, dtype, text, nodes", on_rows(lambda backend: grid(NODE_CIRCUITS, [t for t, _ in NODE_CIRCUITS], uses_mlp, backend))
)
def test_node_denoise_and_noise(backend, family, dtype, text, nodes):
    model, pairs, reference = setup(family, dtype, backend)
    patcher = Patcher(model, pairs)
    for mode, base, source in (("denoise", "corrupt", "clean"), ("noise", "clean", "corrupt")):
        expected = reference.node_run(base, source, lambda i, length: selected(nodes, length))
        result = patcher.measure(mode, text)
        assert close(result.patched, expected, dtype), (mode, result.patched, expected)
        assert close(result.score, reference.score(expected, mode), dtype), mode


CIRCUIT_ONLY = [
    ("L0H1 MLP1", [("head", 0, 1, None), ("mlp", 1, None, None)]),
    ("L1N7 L0H2 L1H3", [("neuron", 1, 7, None), ("head", 0, 2, None), ("head", 1, 3, None)]),
    ("L0H1 L1H3", [("head", 0, 1, None), ("head", 1, 3, None)]),
    ("", []),
]


@pytest.mark.parametrize(
    "backend, family, dtype, text, nodes",
    on_rows(lambda backend: grid(CIRCUIT_ONLY, ["heads-and-mlp", "neuron-splits-its-mlp", "heads", "empty"], uses_mlp, backend)),
)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_node_circuit_only(backend, family, dtype, text, nodes, metric):
    model, pairs, reference = setup(family, dtype, backend)
    patcher = Patcher(model, pairs)
    d_mlp = patcher.shape.d_mlp
    expected = reference.node_run("clean", "corrupt", lambda i, length: complement(nodes, length, d_mlp), metric)
    result = patcher.circuit_only(text, metric=metric)
    assert close(result.patched, expected, dtype), (result.patched, expected)


@pytest.mark.parametrize("backend, family, dtype", on_rows(lambda backend: cases(backend=backend)))
def test_the_mlp_width_is_the_models_own(backend, family, dtype):
    model, pairs, reference = setup(family, dtype, backend)
    assert Patcher(model, pairs).shape.d_mlp == reference.records["clean"][0][("neuron", 0)].shape[-1]


@pytest.mark.parametrize("backend, family", each_row())
def test_the_backend_is_the_one_asked_for(backend, family):
    model, pairs, _ = setup(family, "float32", backend)
    assert type(Patcher(model, pairs).backend).__name__ == ROWS[backend].backend_class


@pytest.mark.parametrize("backend, family", [row.param(family, id=family) for row in ROWS.values() for family in row.refused])
def test_models_whose_layers_do_not_decompose_are_refused(backend, family):
    hf = build_hf(family)
    model = ROWS[backend].make(hf, family, torch.float32)
    with pytest.raises(BackendError, match=rf"{type(hf).__name__} model .* cannot be patched by the {backend} backend: layer 0's output is not"):
        backend_for(model, backend)


# -- sweeps: every over=, both modes, every metric -------------------------------------------------
SWEEPS = [
    ("heads", False, "logit_diff"),
    ("heads", True, "logit_diff"),
    ("heads", False, "kl"),
    ("heads", False, "prob"),
    ("mlps", False, "logit_diff"),
    ("mlps", True, "logit_diff"),
    ("resid", True, "logit_diff"),
    ("neurons", False, "logit_diff"),
]


def sweep_key(over: str, layer: int, index: int):
    kind = {"heads": "head", "mlps": "mlp", "resid": "resid_pre", "neurons": "neuron"}[over]
    return (kind, layer)


def with_paths(params):
    """Each sweep on the path the model's probe chooses; in float32 with ``logit_diff`` also forced
    onto the plain path, and where the probe chooses the suffix path, onto the resume path too, so
    every path is checked against the reference on every family."""
    out = []
    for param in params:
        family, dtype, over, per_position, metric = param.values
        paths = ["probed"]
        if dtype == "float32" and metric == "logit_diff":
            paths += ["plain"] + (["resume"] if PROBED[family] == "suffix" else [])
        out += [pytest.param(*param.values, path, id=f"{param.id}-{path}") for path in paths]
    return out


# which path each family's probe chooses: the suffix path (GPT-2's written-out blocks, the others'
# own blocks with the prefix's keys and values from a cache), except TransformerLens's native
# attention-only model, whose blocks are handed no key/value cache: it resumes whole layers. A
# family that fell back from the suffix path would fail here.
NO_CACHE = ("native",)
PROBED = {family: "resume" if family in NO_CACHE else "suffix" for family in ALL_FAMILIES}


def force_path(backend, path: str) -> None:
    if path in ("plain", "resume"):
        backend._suffix_checked = False
    if path == "plain":
        backend._resume_checked = False


def taken_path(sweeper, over: str) -> str:
    return sweeper.path(over)


def expected_path(family: str, path: str, over: str) -> str:
    """The path a sweep must take: the forced one, or the family's probed one (for every sweep)."""
    return PROBED[family] if path == "probed" else path


def sweep_params(backend: str):
    """The sweeps of ``backend``'s row: on the TransformerLens row every path (``with_paths``), on
    the others the plain path, the only one they have."""
    params = grid(SWEEPS, [f"{o}{'-per-pos' if p else ''}-{m}" for o, p, m in SWEEPS], lambda item: item[0] in ("mlps", "neurons"), backend)
    if backend == BRIDGE:
        return with_paths(params)
    return [pytest.param(*p.values, "plain", id=f"{p.id}-plain") for p in params]


@pytest.mark.parametrize("backend, family, dtype, over, per_position, metric, path", on_rows(sweep_params))
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_sweeps(backend, family, dtype, over, per_position, metric, path, mode):
    model, pairs, reference = setup(family, dtype, backend)
    patcher = Patcher(model, pairs)
    force_path(patcher.backend, path)
    try:
        sweeper = Sweeper(patcher, budget_bytes=2_000_000)
        assert taken_path(sweeper, over) == expected_path(family, path, over)
        result = sweeper.sweep(over, mode, metric=metric, per_position=per_position)
    finally:  # the backend may be shared with later tests: let its probes decide again
        patcher.backend._suffix_checked = patcher.backend._resume_checked = None
    base, source = ("corrupt", "clean") if mode == "denoise" else ("clean", "corrupt")
    grid = result.patched
    if over == "neurons":
        coords = [(layer, n) for layer in range(N_LAYERS) for n in range(0, grid.shape[1], 11)]
    else:
        coords = [tuple(int(i) for i in index) for index in torch.cartesian_prod(*[torch.arange(n) for n in grid.shape]).reshape(-1, grid.ndim)]
    for coord in coords:
        layer = coord[0]
        if over == "heads" and per_position:  # (layer, pos, head)
            chooser = lambda i, length, c=coord: {sweep_key(over, layer, c[2]): [(c[2], [c[1]])]} if c[1] < length else {}  # noqa: E731
        elif over in ("heads", "neurons"):
            chooser = lambda i, length, c=coord: {sweep_key(over, layer, c[1]): [(c[1], None)]}  # noqa: E731
        elif per_position:
            chooser = lambda i, length, c=coord: {sweep_key(over, layer, 0): [(None, [c[1]])]} if c[1] < length else {}  # noqa: E731
        else:
            chooser = lambda i, length: {sweep_key(over, layer, 0): [(None, None)]}  # noqa: E731
        expected = reference.node_run(base, source, chooser, metric)
        assert close(float(grid[coord]), expected, dtype), (coord, float(grid[coord]), expected)


@pytest.mark.parametrize("family, dtype", cases(mlps=False))
def test_the_sweep_fast_path_is_taken_only_where_proven(family, dtype):
    """The shortcuts are enabled only after the model showed they reproduce its own forward: on
    this suite the suffix path on every family handed a key/value cache (GPT-2 through its
    written-out blocks, the others through their own blocks and a cache of the prefix), and
    resuming at the patched layer on every family."""
    model, pairs, _ = setup(family, dtype)
    backend = Patcher(model, pairs).backend
    assert backend.resumes_suffix == (family not in NO_CACHE)
    if family not in NO_CACHE:
        assert backend._suffix_way[0] == ("gpt2" if family == "gpt2" else "cache")
    assert backend.resumes_layers


# -- edges ------------------------------------------------------------------------------------------
EDGES = [
    "embed -> L1H2.k, L0H1 -> L1H1.k, L0H3 -> L1H0.v, L0H0 -> L1H3.q, MLP0 -> logits, L1H0 -> logits, embed -> L0H2.q",
    "L0H2 -> MLP1, embed -> MLP0, MLP0 -> L1H1.v, L1H2 -> logits",
    "L0 -> L1N5, embed -> L1N5, embed -> L0N3, L0H1 -> L1H0.k",
]
PARALLEL_MISSING = "L1H2 -> MLP1"  # in parallel blocks the MLP does not read its own layer's heads


def parse_edges(text: str):
    """(sender, receiver) pairs as the reference names them, expanding the layer sender ``L0``."""
    out = set()
    for item in text.split(","):
        sender, receiver = (part.strip() for part in item.split("->"))
        senders = [f"L{sender[1:]}H{h}" for h in range(N_HEADS)] + [f"MLP{sender[1:]}"] if sender[1:].isdigit() else [sender]
        out.update((s, receiver) for s in senders)
    return out


def engine_edges(family: str, text: str) -> str:
    if family in PARALLEL_FAMILIES:  # same-layer head -> MLP edges do not exist there
        text = ", ".join(item for item in text.split(",") if item.strip() != "L0H2 -> MLP1")
    return text


def edge_expectations(reference, text: str) -> dict:
    """The reference's patched metric for denoise, noise and circuit-only of the edges ``text``."""
    edges = parse_edges(text)
    neuron_layers = {int(r[1 : r.index("N")]) for _, r in edges if "N" in r and not r.startswith("MLP")}

    def pick(run, inside: bool):
        """choose(s, r): ``run``'s writes for edges in (inside) or outside (not inside) the circuit."""

        def for_prompt(i):
            writes = reference.writes(run, i)

            def choose(sender, receiver):
                if receiver.startswith("MLP") and int(receiver[3:]) in neuron_layers:
                    return None  # that MLP is taken neuron by neuron: its L{l}N{n} receivers decide
                if ((sender, receiver) in edges) == inside:
                    return writes[sender]
                return None

            return choose

        return for_prompt

    return {
        "denoise": reference.edge_run("corrupt", pick("clean", True)),
        "noise": reference.edge_run("clean", pick("corrupt", True)),
        "circuit_only": reference.edge_run("clean", pick("corrupt", False)),
    }


@pytest.mark.parametrize("backend, family, dtype", on_rows(lambda backend: cases(edges_only=True, backend=backend)))
@pytest.mark.parametrize("text", EDGES, ids=["heads-qkv-logits", "mlp-receivers", "neuron-receivers"])
def test_edge_circuits(backend, family, dtype, text):
    model, pairs, reference = setup(family, dtype, backend)
    patcher = Patcher(model, pairs)
    text = engine_edges(family, text)
    for kind, value in edge_expectations(reference, text).items():
        result = patcher.measure(kind, text)
        assert close(result.patched, value, dtype), (kind, result.patched, value)
    assert patcher.shape.d_mlp  # every family here has MLPs


@pytest.mark.parametrize("backend, family, dtype", on_rows(lambda backend: cases(edges_only=True, backend=backend)))
def test_an_edge_into_one_query_heads_key_changes_only_that_head(backend, family, dtype):
    """With grouped-query attention, L1H1.k shares its key weights with other query heads; an edge
    into L1H1.k changes L1H1's key input alone (the reference computes each query head apart)."""
    model, pairs, reference = setup(family, dtype, backend)
    patcher = Patcher(model, pairs)

    def for_prompt(i):
        clean = reference.writes("clean", i)
        return lambda sender, receiver: clean[sender] if (sender, receiver) == ("L0H1", "L1H1.k") else None

    expected = reference.edge_run("corrupt", for_prompt)
    assert close(patcher.denoise("L0H1 -> L1H1.k").patched, expected, dtype)
    if family in GQA_FAMILIES:  # the same write into the whole key group differs
        group = reference.edge_run("corrupt", lambda i: lambda s, r: reference.writes("clean", i)[s] if s == "L0H1" and r in ("L1H0.k", "L1H1.k") else None)
        assert abs(group - expected) > 10 * TOL[dtype]


@pytest.mark.parametrize("backend, family", each_row(among=PARALLEL_FAMILIES, edges=True))  # the others refuse every edge
def test_edges_that_parallel_blocks_do_not_have_are_refused_when_named(backend, family):
    model, pairs, _ = setup(family, "float32", backend)
    patcher = Patcher(model, pairs)
    with pytest.raises(CircuitError, match="does not exist in this model: its blocks are parallel"):
        patcher.denoise(PARALLEL_MISSING)
    from pytest_circuits.edges import edge_graph

    assert not any(e.sender.kind == "head" and e.receiver.kind == "mlp" and e.sender.layer == e.receiver.layer for e in edge_graph(patcher.shape))


@pytest.mark.parametrize(
    "backend, family", [row.param(f, id=f) for row in ROWS.values() for f in row.families if f not in row.edge_families]
)
def test_edge_refusals_name_the_architecture_and_what_works(backend, family):
    model, pairs, _ = setup(family, "float32", backend)
    patcher = Patcher(model, pairs)
    architecture = patcher.backend.architecture
    why = ROWS[backend].edge_refusal
    for call in (lambda: patcher.denoise("L0H1 -> L1H1.k"), lambda: attribute(model, pairs, "edges")):
        with pytest.raises(BackendError, match=rf"{architecture} model .* cannot be path patched .*{why}.*Node circuits, sweeps and node attribution work"):
            call()
    assert patcher.denoise("L0H1").n_prompts == len(LENGTHS)  # nodes still work


# -- attribution: the linear estimate, against derivatives taken through the reference --------------
def derivative(reference, base: str, forward) -> float:
    """Mean over prompts of d metric / dt at t = 0, where ``forward(i, t)`` runs prompt i of the
    ``base`` run with values base + t * (source - base) somewhere; by autograd through the
    reference's own forward (finite differences would magnify the float32 steps that Hugging Face
    models keep even in float64)."""
    total = 0.0
    for i in range(reference.n):
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        logits = forward(i, t)
        correct, incorrect = (int(x) for x in reference.answers[i])
        (grad,) = torch.autograd.grad(logits[-1, correct] - logits[-1, incorrect], t)
        total += float(grad)
    return total / reference.n


@pytest.mark.parametrize(
    "backend, family, over",
    [row.param(f, o, id=f"{f}-{o}") for row in ROWS.values() for f in row.families for o in ("heads", "mlps", "neurons") if f not in ATTENTION_ONLY or o == "heads"],
)
def test_node_attribution(backend, family, over):
    model, pairs, reference = setup(family, "float64", backend)
    result = attribute(model, pairs, over, "denoise")
    clean, corrupt = reference.baseline("clean"), reference.baseline("corrupt")
    kind = {"heads": "head", "mlps": "mlp", "neurons": "neuron"}[over]
    coords = [(1, 2), (0, 1)] if over == "heads" else [(1,), (0,)] if over == "mlps" else [(1, 7), (0, 30)]
    for coord in coords:
        key = (kind, coord[0])

        def forward(i, t, coord=coord, key=key):
            src, base = reference.records["clean"][i][key], reference.records["corrupt"][i][key]

            def fn(value):
                if len(coord) == 1:
                    return base + t * (src - base)
                mixed = base[:, coord[1]] + t * (src[:, coord[1]] - base[:, coord[1]])
                return torch.cat([value[:, : coord[1]], mixed[:, None], value[:, coord[1] + 1 :]], dim=1)

            return ref.run(reference.hf, reference.runs["corrupt"][i], {key: fn})

        expected = derivative(reference, "corrupt", forward) / (clean - corrupt)
        assert close(float(result.scores[coord]), expected, "float64"), (coord, float(result.scores[coord]), expected)


@pytest.mark.parametrize("backend, family", each_row(edges=True))
def test_edge_attribution(backend, family):
    model, pairs, reference = setup(family, "float64", backend)
    scores = attribute(model, pairs, "edges", "denoise")
    clean, corrupt = reference.baseline("clean"), reference.baseline("corrupt")
    chosen = [(str(e), s) for e, s in zip(scores.edges, scores.scores.tolist())][::23]
    assert len(chosen) >= 5
    for name, score in chosen:
        sender, receiver = (part.strip() for part in name.split("->"))

        def forward(i, t, sender=sender, receiver=receiver):
            src, base = reference.writes("clean", i)[sender], reference.writes("corrupt", i)[sender]
            return ref.edge_run(reference.hf, reference.runs["corrupt"][i], lambda s, r: base + t * (src - base) if (s, r) == (sender, receiver) else None)

        expected = derivative(reference, "corrupt", forward) / (clean - corrupt)
        assert close(score, expected, "float64"), (name, score, expected)


# -- what is built on the measurements: minimality and pareto --------------------------------------
@pytest.mark.parametrize("backend, family", each_row(among=FAMILIES))
def test_minimality_and_pareto(backend, family):
    model, pairs, reference = setup(family, "float32", backend)
    patcher = Patcher(model, pairs)
    nodes = {"L0H1": ("head", 0, 1, None), "L1H2": ("head", 1, 2, None), "MLP0": ("mlp", 0, None, None)}
    d_mlp = patcher.shape.d_mlp

    def circuit_only(names):
        return reference.score(reference.node_run("clean", "corrupt", lambda i, length: complement([nodes[n] for n in names], length, d_mlp)), "circuit_only")

    full = circuit_only(list(nodes))
    result = minimality(patcher, " ".join(nodes))
    for name, drop in result.drops.items():
        assert close(drop, full - circuit_only([n for n in nodes if n != name]), "float32"), name
    curve = pareto(model, pairs, list(nodes))
    for size, recovered in zip(curve.sizes, curve.recovered):
        assert close(recovered, circuit_only(list(nodes)[:size]), "float32"), size


@pytest.mark.parametrize("backend, family", each_row(edges=True))
def test_eap_ig_on_every_family_that_has_edges(backend, family):
    """EAP-IG is plain attribution at one step, and its input edges add up to the whole effect as
    the steps grow (integrated gradients along the input path), on every family with edges."""
    model, pairs, _ = setup(family, "float64", backend)
    plain = attribute(model, pairs, "heads")
    assert torch.allclose(attribute(model, pairs, "heads", method="eap-ig", steps=1).scores, plain.scores, atol=1e-12)
    totals = []
    for steps in (8, 256):
        scores = attribute(model, pairs, "edges", method="eap-ig", steps=steps)
        totals.append(sum(float(s) for e, s in zip(scores.edges, scores.scores) if e.sender.kind == "embed"))
    assert abs(totals[1] - 1) < abs(totals[0] - 1) and totals[1] == pytest.approx(1.0, abs=0.05), totals


@pytest.mark.parametrize("backend, family", each_row(edges=True))
def test_activation_path_eap_ig_on_every_family_that_has_edges(backend, family):
    """EAP-IG along each component's own activation path: one step is plain attribution (edges and
    nodes), and an MLP's score tends to the exact effect of patching it as the steps grow (it is
    integrated gradients of that MLP's output, everything after it recomputed)."""
    model, pairs, _ = setup(family, "float64", backend)
    patcher = Patcher(model, pairs)
    plain = attribute(model, pairs, "edges")
    one = attribute(model, pairs, "edges", method="eap-ig-activations", steps=1)
    assert torch.allclose(one.scores, plain.scores, atol=1e-9)
    exact = [patcher.denoise(f"MLP{layer}").score for layer in range(patcher.shape.n_layers)]
    errors = []
    for steps in (2, 32):
        scores = attribute(model, pairs, "mlps", method="eap-ig-activations", steps=steps).scores
        errors.append(max(abs(float(s) - e) for s, e in zip(scores, exact)))
    # left Riemann sums: the error shrinks about as 1 / steps (measured: 1.60 -> 0.16 on mistral)
    assert errors[1] < errors[0] / 4 and errors[1] < 0.05 * max(1.0, max(map(abs, exact))), (errors, exact)
