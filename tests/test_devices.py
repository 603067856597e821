"""Models split over several devices (accelerate's ``device_map``, TransformerLens's ``n_devices``):
each patch is computed where the engine keeps its tensors and put back on its site's device, and
results come back to the first device.

On a machine with one device (CPU here) the bookkeeping runs: a dispatched model whose map names
one device, and the refusals a split model gets. So does the other way a model larger than its
device is run: accelerate's offload, which keeps some layers' weights elsewhere (the CPU beside a
GPU, or the disk) and loads them for each forward; on the CPU, layers offloaded to disk run for
real, through every backend. The split itself runs in the CUDA test, which needs two GPUs and is
skipped without them.
"""

import pytest
import torch
from families import FAMILIES, build_hf
from random_models import random_pairs

from pytest_circuits import PromptPairs, Patcher
from pytest_circuits.backends import backend_from_hf
from pytest_circuits.backends.base import BackendError
from pytest_circuits.backends.transformer_lens import TransformerLensBackend
from pytest_circuits.loading import bridge_from_hf
from pytest_circuits.sweeps import Sweeper
from pytest_circuits.toys import _gpt2

SIZES = dict(n_layer=3, n_head=4, n_embd=32, n_positions=32, vocab_size=40, n_inner=64, initializer_range=0.3)


def hf_gpt2(seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(_gpt2.gpt2_config(**SIZES)).eval()


def layer_map(hf_model, first: str, second: str) -> dict:
    """A device map for a model of any family: the last layer on ``second``; the other layers and
    everything outside the layers (embeddings, final norm, an unembedding that may be tied to the
    embedding) on ``first``."""
    n_layers = hf_model.config.num_hidden_layers
    layers = next(name for name, m in hf_model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers)
    mapped = {f"{layers}.{layer}": first for layer in range(n_layers - 1)}
    mapped[f"{layers}.{n_layers - 1}"] = second
    for name, _ in hf_model.named_parameters():
        if not name.startswith(layers + "."):
            mapped[name.rsplit(".", 1)[0]] = first
    if hasattr(hf_model, "lm_head"):  # tied to the embedding, it is not among the named parameters
        mapped["lm_head"] = first
    return mapped


def measurements(model, pairs: PromptPairs) -> dict:
    patcher = Patcher(model, pairs)
    sweeper = Sweeper(patcher)
    return {
        "denoise": patcher.denoise("L0H1 L1H3 MLP1").score,
        "noise": patcher.noise("L1H0 L1N5").score,
        "circuit_only": patcher.circuit_only("L0H1 L1H2 MLP1").score,
        "heads": sweeper.sweep("heads", "denoise").scores,
        "resid": sweeper.sweep("resid", "noise").scores,
    }


def assert_same(got: dict, expected: dict, atol: float) -> None:
    for name, value in expected.items():
        assert torch.allclose(torch.as_tensor(got[name]).cpu().float(), torch.as_tensor(value).cpu().float(), atol=atol), name


def test_a_model_dispatched_with_a_device_map_measures_as_the_plain_model():
    """accelerate's dispatch (hooks that move each layer's inputs, ``hf_device_map``) on one device:
    the numbers of the same weights undispatched."""
    accelerate = pytest.importorskip("accelerate")
    pairs = random_pairs()
    expected = measurements(bridge_from_hf(hf_gpt2()), pairs)
    hf_model = hf_gpt2()
    dispatched = accelerate.dispatch_model(hf_model, device_map=layer_map(hf_model, "cpu", "cpu"))
    assert dispatched.hf_device_map["lm_head"] == "cpu"
    model = bridge_from_hf(dispatched)
    assert TransformerLensBackend(model).devices == (torch.device("cpu"),)
    assert_same(measurements(model, pairs), expected, atol=1e-5)


BACKEND_ROWS = ("transformer_lens", "hf", "nnsight")


def backend_over(hf_model, backend: str):
    """``hf_model`` as each backend patches it: wrapped in a bridge, or hooked directly."""
    if backend == "transformer_lens":
        return TransformerLensBackend(bridge_from_hf(hf_model))
    if backend == "nnsight":
        pytest.importorskip("nnsight")
    return backend_from_hf(hf_model, None, "offloaded", backend)


@pytest.mark.parametrize("backend", BACKEND_ROWS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_offloaded_to_disk_measures_as_the_plain_model(family, backend, tmp_path):
    """The last layer offloaded to disk (meta tensors between forwards, loaded by accelerate's hooks
    for each one), on every family: every number equals the plain model's. The backend sees the
    offload, so sweeps take the plain path and edges are refused, saying why. A family a backend
    refuses (BLOOM on Hugging Face hooks) is refused offloaded too, with the same words."""
    accelerate = pytest.importorskip("accelerate")
    pairs = random_pairs()
    hf_model = build_hf(family)
    offloaded = accelerate.dispatch_model(hf_model, device_map=layer_map(hf_model, "cpu", "disk"), offload_dir=str(tmp_path))
    assert any(p.device.type == "meta" for p in offloaded.parameters())
    try:
        plain = backend_over(build_hf(family), backend)
    except BackendError as refused:
        with pytest.raises(BackendError) as also:
            backend_over(offloaded, backend)
        assert str(also.value) == str(refused)
        return
    expected = measurements(plain, pairs)
    model = backend_over(offloaded, backend)
    assert model.offloaded and model.devices == (torch.device("cpu"),)
    if backend == "transformer_lens":
        assert not model.resumes_suffix and not model.resumes_layers
    assert_same(measurements(model, pairs), expected, atol=1e-5)
    with pytest.raises(BackendError, match="accelerate offloads some of its weights"):
        model.check_edges()


def test_an_offloaded_model_is_not_copied_into_a_hooked_transformer(tmp_path):
    """TransformerLens 2.x/3.x: a ``HookedTransformer`` copies every weight, and offloaded ones are
    meta tensors between forwards: refused, saying what works instead."""
    accelerate = pytest.importorskip("accelerate")
    from hooked_models import hooked_transformer_missing

    if hooked_transformer_missing():
        pytest.skip(hooked_transformer_missing())
    from pytest_circuits.backends import hooked_transformer_from_hf

    hf_model = hf_gpt2()
    offloaded = accelerate.dispatch_model(hf_model, device_map=layer_map(hf_model, "cpu", "disk"), offload_dir=str(tmp_path))
    with pytest.raises(BackendError, match="accelerate offloads some of its weights.*TransformerBridge runs the offloaded model"):
        hooked_transformer_from_hf(offloaded)


def test_weights_on_the_meta_device_that_nothing_loads_are_refused():
    """A model made without its weights cannot compute: refused at once, naming the module."""
    from pytest_circuits.backends.devices import placement

    with torch.device("meta"):
        empty = hf_gpt2()
    with pytest.raises(BackendError, match=r"meta device \(not loaded\), the first in its Embedding"):
        placement(empty, "empty")


def split_backend(backend: str = "transformer_lens"):
    """A backend told its model spans two devices (what it reads from a split model's weights)."""
    split = backend_over(hf_gpt2(), backend)
    split.devices = (torch.device("cpu"), torch.device("cuda", 1))
    return split


def test_a_split_model_takes_the_plain_path_for_sweeps():
    """The sweeps' shortcuts run every later layer on one device: not on a split model."""
    whole = TransformerLensBackend(bridge_from_hf(hf_gpt2()))
    assert whole.resumes_suffix and whole.resumes_layers
    split = split_backend()
    assert not split.resumes_suffix and not split.resumes_layers


@pytest.mark.parametrize("backend", ("transformer_lens", "hf"))
def test_a_split_model_refuses_edges_saying_what_works(backend):
    with pytest.raises(BackendError) as refused:
        split_backend(backend).check_edges()
    message = str(refused.value)
    assert "GPT2LMHeadModel" in message or "gpt2" in message.lower()
    assert "several devices (cpu, cuda:1)" in message and "path patched" in message
    assert "Node circuits, sweeps and node attribution work" in message


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices to split a model over")
@pytest.mark.parametrize("backend", BACKEND_ROWS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_split_over_two_gpus_measures_as_on_one(family, backend):
    accelerate = pytest.importorskip("accelerate")
    pairs = random_pairs()
    try:
        expected = measurements(backend_over(build_hf(family).to("cuda:0"), backend), pairs)
    except BackendError:
        pytest.skip(f"the {backend} backend refuses {family} on one device already")
    hf_model = build_hf(family)
    split = backend_over(accelerate.dispatch_model(hf_model, device_map=layer_map(hf_model, "cuda:0", "cuda:1")), backend)
    assert split.device == torch.device("cuda", 0) and set(split.devices) == {torch.device("cuda", 0), torch.device("cuda", 1)}
    with pytest.raises(BackendError, match="several devices"):
        split.check_edges()
    got = measurements(split, pairs)
    assert all(torch.as_tensor(value).device.index in (None, 0) for value in got.values())
    assert_same(got, expected, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices to split a model over")
def test_a_hooked_transformer_over_n_devices_measures_as_on_one():
    from hooked_models import hooked_transformer_missing

    if hooked_transformer_missing():
        pytest.skip(hooked_transformer_missing())
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=40, n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0)
    one = HookedTransformer(HookedTransformerConfig(**cfg, device="cuda:0"))
    split = HookedTransformer(HookedTransformerConfig(**cfg, device="cuda:0", n_devices=2))
    split.load_state_dict(one.state_dict())
    assert len(TransformerLensBackend(split).devices) == 2
    pairs = random_pairs()
    assert_same(measurements(split, pairs), measurements(one, pairs), atol=1e-4)


def test_patch_values_follow_the_activation_to_its_device():
    """A remote trace (or a split model's layer) hands the patch an activation on another device than
    the one the mask and values were made on: seen on a GPU machine, where the stand-in for NDIF ran
    the trace on CUDA with values on the CPU. The meta device stands in for "elsewhere" here."""
    from pytest_circuits.patching import _patch

    act = torch.zeros(2, 3, device="meta", dtype=torch.float16)
    patched = _patch([(torch.tensor([True, False]), torch.ones(2, 3, dtype=torch.float32))])(act)
    assert patched.device.type == "meta" and patched.dtype == torch.float16 and patched.shape == (2, 3)
