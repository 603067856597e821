"""Every operation on TransformerLens 2.x/3.x ``HookedTransformer`` models, against the same
independent reference as the bridge.

The models carry the weights of ``families``' tiny random Hugging Face models (``hooked_models``);
each test here runs the body of the matching test in ``test_conformance.py`` with its ``setup``
giving the ``HookedTransformer`` instead of the bridge, so the checks and tolerances (1e-4 in
float32, 1e-6 in float64) are exactly the bridge's. Under TransformerLens 4.x, which has no
``HookedTransformer``, the module is skipped.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hooked_models import HOOKED_FAMILIES, build_hooked, hooked_transformer_missing

if hooked_transformer_missing():
    pytest.skip(hooked_transformer_missing(), allow_module_level=True)

import hf_reference as ref  # noqa: E402
import test_conformance as conf  # noqa: E402
from families import GQA_FAMILIES, PARALLEL_FAMILIES, build_hf, random_prompts  # noqa: E402

from pytest_circuits import BackendError, Patcher, PromptError, PromptPairs  # noqa: E402
from pytest_circuits import loading  # noqa: E402
from pytest_circuits.backends import TransformerLensBackend  # noqa: E402
from pytest_circuits.backends.transformer_lens import _hooked_config, hooked_transformer_from_hf  # noqa: E402

DTYPES = conf.DTYPES
# Hugging Face's Llama, Mistral, Qwen2 and Gemma compute their RMSNorm in float32 even in a float64 model (it
# casts the input down); HookedTransformer's computes in float64. The two models themselves then differ by
# ~1e-6 in float64 (measured on these tiny models, max |logit difference|: 1.4e-6 Llama, 2.0e-6 Mistral,
# 1.3e-6 Qwen2, 2.8e-6 Gemma; 6e-15 GPT-2), so float64 checks on these families hold to 1e-5.
FLOAT32_NORM_FAMILIES = ("llama", "mistral", "qwen2", "gemma")
FLOAT64_TOL_THERE = 1e-5


@functools.lru_cache(maxsize=None)
def hooked_setup(family: str, dtype: str, backend: str = conf.BRIDGE):
    """As ``test_conformance.setup``, with a ``HookedTransformer`` as the engine's model (the
    TransformerLens backend; the conformance bodies are called with its row's name)."""
    torch_dtype = DTYPES[dtype]
    clean, corrupt, answers = random_prompts(len(conf.LENGTHS), max(conf.LENGTHS), lengths=conf.LENGTHS)
    pairs = PromptPairs([c.tolist() for c in clean], [x.tolist() for x in corrupt], answers)
    model = build_hooked(family, torch_dtype)
    hf = build_hf(family, torch_dtype)
    runs = {"clean": clean, "corrupt": corrupt}
    records = {run: [ref.record(hf, t) for t in prompts] for run, prompts in runs.items()}
    return model, pairs, conf.Reference(hf, runs, records, answers)


@pytest.fixture
def hooked(monkeypatch, request):
    """``test_conformance``'s test bodies, run on the ``HookedTransformer`` models."""
    monkeypatch.setattr(conf, "setup", hooked_setup)
    if request.node.callspec.params.get("family") in FLOAT32_NORM_FAMILIES:
        monkeypatch.setitem(conf.TOL, "float64", FLOAT64_TOL_THERE)
    return conf


def families_grid(items, ids, dtypes=tuple(DTYPES)):
    """(family, dtype, *item) for every family converted to HookedTransformer (all have MLPs)."""
    return [
        pytest.param(family, dtype, *item, id=f"{item_id}-{family}-{dtype}")
        for family in HOOKED_FAMILIES
        for dtype in dtypes
        for item, item_id in zip(items, ids)
    ]


def cases(dtypes=tuple(DTYPES)):
    return [pytest.param(family, dtype, id=f"{family}-{dtype}") for family in HOOKED_FAMILIES for dtype in dtypes]


@pytest.mark.parametrize("family, dtype", cases())
def test_the_models_compute_what_the_hugging_face_models_compute(family, dtype):
    model, pairs, reference = hooked_setup(family, dtype)
    tol = FLOAT64_TOL_THERE if dtype == "float64" and family in FLOAT32_NORM_FAMILIES else conf.TOL[dtype]
    for i, tokens in enumerate(reference.runs["clean"]):
        with torch.no_grad():
            logits = model(tokens[None])[0]
        expected = reference.records["clean"][i][("logits",)]
        assert float((logits - expected.to(logits.dtype)).abs().max()) <= tol * max(1.0, float(expected.abs().max())), family


def test_the_backend_is_the_transformer_lens_one_and_names_the_architecture():
    model, _, _ = hooked_setup("llama", "float32")
    backend = TransformerLensBackend(model)
    assert type(model).__name__ == "HookedTransformer"
    assert backend.architecture == "LlamaForCausalLM"
    assert backend.shape.d_mlp == 48 and backend.shape.n_heads == 4


@pytest.mark.parametrize("family, dtype, text, nodes", families_grid(conf.NODE_CIRCUITS, [t for t, _ in conf.NODE_CIRCUITS]))
def test_node_denoise_and_noise(hooked, family, dtype, text, nodes):
    hooked.test_node_denoise_and_noise(conf.BRIDGE, family, dtype, text, nodes)


@pytest.mark.parametrize(
    "family, dtype, text, nodes", families_grid(conf.CIRCUIT_ONLY, ["heads-and-mlp", "neuron-splits-its-mlp", "heads", "empty"])
)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_node_circuit_only(hooked, family, dtype, text, nodes, metric):
    hooked.test_node_circuit_only(conf.BRIDGE, family, dtype, text, nodes, metric)


@pytest.mark.parametrize("family, dtype", cases())
def test_the_mlp_width_is_the_models_own(hooked, family, dtype):
    hooked.test_the_mlp_width_is_the_models_own(conf.BRIDGE, family, dtype)


@pytest.mark.parametrize(
    "family, dtype, over, per_position, metric, path",
    conf.with_paths(families_grid(conf.SWEEPS, [f"{o}{'-per-pos' if p else ''}-{m}" for o, p, m in conf.SWEEPS])),
)
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_sweeps(hooked, family, dtype, over, per_position, metric, path, mode):
    hooked.test_sweeps(conf.BRIDGE, family, dtype, over, per_position, metric, path, mode)


@pytest.mark.parametrize("family, dtype", cases())
def test_the_sweep_fast_path_is_taken_only_where_proven(hooked, family, dtype):
    hooked.test_the_sweep_fast_path_is_taken_only_where_proven(family, dtype)


def test_the_fast_path_is_refused_when_its_probe_disagrees(monkeypatch):
    """The GPT-2 shortcut is enabled by its probe, not by the model's shape: a HookedTransformer
    whose attention is scaled differently (the shortcut divides by sqrt(d_head)) does not get it,
    and takes the suffix path through its own blocks and a key/value cache of the prefix instead."""
    model, pairs, _ = hooked_setup("gpt2", "float32")
    backend = TransformerLensBackend(model)
    assert backend._looks_gpt2_style() and backend.resumes_suffix and backend._suffix_way[0] == "gpt2"
    other = build_hooked("gpt2")
    for block in other.blocks:
        block.attn.attn_scale = block.attn.attn_scale * 2  # not what the shortcut computes
    backend = TransformerLensBackend(other)
    assert backend._looks_gpt2_style() and backend.resumes_suffix and backend._suffix_way[0] == "cache"


@pytest.mark.parametrize("family, dtype", cases())
@pytest.mark.parametrize("text", conf.EDGES, ids=["heads-qkv-logits", "mlp-receivers", "neuron-receivers"])
def test_edge_circuits(hooked, family, dtype, text):
    hooked.test_edge_circuits(conf.BRIDGE, family, dtype, text)


@pytest.mark.parametrize("family, dtype", cases())
def test_an_edge_into_one_query_heads_key_changes_only_that_head(hooked, family, dtype):
    hooked.test_an_edge_into_one_query_heads_key_changes_only_that_head(conf.BRIDGE, family, dtype)


def test_grouped_query_attention_is_ungrouped_only_while_path_patching():
    model, pairs, _ = hooked_setup("llama", "float32")
    assert "llama" in GQA_FAMILIES and model.cfg.n_key_value_heads == 2
    Patcher(model, pairs).denoise("L0H1 -> L1H1.k")
    assert not model.cfg.ungroup_grouped_query_attention
    assert not model.cfg.use_split_qkv_input


@pytest.mark.parametrize("family", [f for f in PARALLEL_FAMILIES if f in HOOKED_FAMILIES])
def test_edges_that_parallel_blocks_do_not_have_are_refused_when_named(hooked, family):
    hooked.test_edges_that_parallel_blocks_do_not_have_are_refused_when_named(conf.BRIDGE, family)


@pytest.mark.parametrize("family, over", [(f, o) for f in HOOKED_FAMILIES for o in ("heads", "mlps", "neurons")])
def test_node_attribution(hooked, family, over):
    hooked.test_node_attribution(conf.BRIDGE, family, over)


@pytest.mark.parametrize("family", HOOKED_FAMILIES)
def test_edge_attribution(hooked, family):
    hooked.test_edge_attribution(conf.BRIDGE, family)


@pytest.mark.parametrize("family", HOOKED_FAMILIES)
def test_minimality_and_pareto(hooked, family):
    hooked.test_minimality_and_pareto(conf.BRIDGE, family)


@pytest.mark.parametrize("family", HOOKED_FAMILIES)
def test_eap_ig(hooked, family):
    hooked.test_eap_ig_on_every_family_that_has_edges(conf.BRIDGE, family)


def test_neuron_receivers_are_refused_when_the_recomputed_activation_disagrees():
    """A neuron receiver recomputes the neuron from its input outside the forward; where that
    recomputation does not match the model's own activations, neuron receivers are refused."""
    backend = TransformerLensBackend(build_hooked("gpt2"))
    backend._hooked_neuron_acts = lambda mlp, normed: torch.zeros(*normed.shape[:-1], 48, dtype=normed.dtype)
    with pytest.raises(BackendError, match="single neurons"):
        backend.check_neuron_receivers()
    backend.check_edges()  # the rest of path patching still works


# -- loading specs without a bridge (TransformerLens 2.x) ------------------------------------------
@pytest.fixture
def no_bridge(monkeypatch):
    """As on TransformerLens 2.x, which has no TransformerBridge (there this changes nothing; on 3.x,
    which has both, it makes the loaders take the HookedTransformer path)."""
    monkeypatch.setattr(loading, "has_bridge", lambda: False)


def _same_logits(model, hf, tokens) -> float:
    with torch.no_grad():
        return float((model(tokens) - hf(tokens).logits).abs().max())


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_a_folder_spec_loads_as_a_hooked_transformer(no_bridge, tmp_path, family):
    hf = build_hf(family)
    hf.save_pretrained(tmp_path / family)
    model = loading.load_model(str(tmp_path / family), "cpu")
    assert type(model).__name__ == "HookedTransformer" and model.cfg.original_architecture == type(hf).__name__
    assert _same_logits(model, hf, torch.stack(random_prompts(3, 12)[0])) < 1e-4
    assert TransformerLensBackend(model).label.endswith(" HookedTransformer")


def test_a_hub_spec_loads_from_the_local_cache_as_a_hooked_transformer(no_bridge, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--tiny-llama" / "snapshots" / ("0" * 40)
    hf = build_hf("llama")
    hf.save_pretrained(snapshot)
    (tmp_path / "models--someone--tiny-llama" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-llama" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(tmp_path), raising=False)  # transformers 4.x reads its own copy
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = loading.load_model("someone/tiny-llama", "cpu")
    assert type(model).__name__ == "HookedTransformer" and model.cfg.n_key_value_heads == 2
    assert _same_logits(model, hf, torch.stack(random_prompts(3, 12)[0])) < 1e-4


@pytest.mark.parametrize("family", ["gemma2", "gptj", "opt", "bloom"])
def test_an_architecture_without_a_conversion_is_refused_naming_those_with_one(no_bridge, tmp_path, family):
    hf = build_hf(family)
    hf.save_pretrained(tmp_path / family)
    with pytest.raises(BackendError) as error:
        loading.load_model(str(tmp_path / family), "cpu")
    message = str(error.value)
    assert f"cannot build a TransformerLens HookedTransformer from a {type(hf).__name__}" in message
    assert "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM" in message
    assert "HookedTransformer.from_pretrained" in message and "TransformerLens 4.x" in message


# -- sliding windows: refused beyond them, not computed differently ----------------------------------
def test_the_context_is_the_sliding_window_where_one_applies():
    import transformers

    shape = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=48,
                 vocab_size=50, max_position_embeddings=64)

    def n_ctx(cls, architecture, **window):
        return _hooked_config(architecture, getattr(transformers, cls)(**shape, **window))["n_ctx"]

    assert n_ctx("MistralConfig", "MistralForCausalLM", sliding_window=16) == 16
    assert n_ctx("MistralConfig", "MistralForCausalLM", sliding_window=None) == 64
    assert n_ctx("Qwen2Config", "Qwen2ForCausalLM", use_sliding_window=True, sliding_window=16, max_window_layers=1) == 16
    assert n_ctx("Qwen2Config", "Qwen2ForCausalLM", use_sliding_window=True, sliding_window=16, max_window_layers=2) == 64
    assert n_ctx("Qwen2Config", "Qwen2ForCausalLM", use_sliding_window=False, sliding_window=16) == 64
    assert n_ctx("LlamaConfig", "LlamaForCausalLM") == 64


def test_a_prompt_longer_than_the_sliding_window_is_refused():
    hf = build_hf("mistral")
    hf.config.sliding_window = 8
    model = hooked_transformer_from_hf(hf)
    clean, corrupt, answers = random_prompts(5, 12, lengths=[8, 8, 8, 8, 12])
    inside = torch.stack(clean[:4])
    assert _same_logits(model, hf, inside) < 1e-4  # within the window the models agree
    pairs = PromptPairs([c.tolist() for c in clean], [x.tolist() for x in corrupt], answers)
    with pytest.raises(PromptError, match="prompt 4: 12 tokens, more than the model's context of 8 tokens"):
        Patcher(model, pairs).denoise("L0H0")


def test_the_backend_names_transformer_lens_its_version_and_hooked_transformer():
    from importlib.metadata import version

    model, pairs, _ = hooked_setup("gemma", "float32")
    assert TransformerLensBackend(model).label == f"transformer_lens {version('transformer_lens')} HookedTransformer"
    result = Patcher(model, pairs).denoise("L0H0")
    assert result.backend == f"transformer_lens {version('transformer_lens')} HookedTransformer"
