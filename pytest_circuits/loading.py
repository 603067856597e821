"""Model specs: one string names a model, and ``load_model`` turns it into a patchable model.

Specs:
  ``toy:NAME``                   a toy shipped with pytest-circuits (``toy:induction``)
  ``package.module:factory``     a callable returning a model (``device``/``dtype`` passed if accepted)
  ``path/to/folder``             a local Hugging Face folder: config.json + *.safetensors (never unpickled)
  ``gpt2``, ``org/name@rev``     a hub model booted through TransformerLens; ``@rev`` is a revision

Folders, hub models and toys become a ``TransformerBridge`` where the installed TransformerLens has
one (3.x, 4.x) and a ``HookedTransformer`` with the same weights where it does not (2.x), so the
same specs work on every TransformerLens line the package admits.

Everything here works without pytest; the plugin adds its own hook in front of it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import pickle
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch

from .errors import InputError

# torch is imported where a function needs it: check_spec, checkpoint_labels and ModelSpecError
# stay light, for the pytest plugin's option checks at startup.

TOY_PREFIX = "toy:"
DTYPES = {  # name -> the torch dtype's own name
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # the names from_pretrained looks for
WAYS = (
    "provide it as toy:NAME, a local folder with config.json and *.safetensors, package.module:factory, "
    "or implement pytest_circuits_load_model in conftest.py"
)


class ModelSpecError(InputError, ValueError):
    """A model spec that names nothing loadable; the message is one line saying what to do."""


BACKEND_NAMES = ("transformer_lens", "hf", "nnsight")
_SCHEME = re.compile(r"([A-Za-z_]\w*)(\+remote)?://(.*)", re.S)


def split_backend(spec: str) -> Tuple[Optional[str], bool, str]:
    """``(backend, remote, model spec)`` of a spec that names its backend, ``nnsight://gpt2``,
    ``hf://./checkpoints/step1000`` or ``nnsight+remote://meta-llama/Meta-Llama-3.1-8B``;
    ``(None, False, spec)`` for one that does not. A spec's backend wins over ``--circuits-backend``,
    so one checkpoint matrix can hold the same weights under two backends."""
    found = _SCHEME.fullmatch(spec) if isinstance(spec, str) else None
    if found is None:
        return None, False, spec
    backend, remote, inner = found.group(1), bool(found.group(2)), found.group(3)
    if backend not in BACKEND_NAMES:
        raise ModelSpecError(f"model spec {spec!r}: unknown backend {backend!r} before '://'; choose {', '.join(BACKEND_NAMES)}")
    if remote and backend != "nnsight":
        raise ModelSpecError(f"model spec {spec!r}: only nnsight runs models remotely (nnsight+remote://...)")
    if not inner.strip():
        raise ModelSpecError(f"model spec {spec!r} names a backend but no model after '://'")
    return backend, remote, inner


def toy_of(spec) -> Optional[str]:
    """The ``toy:NAME`` a model spec loads (its backend aside), whose own prompt pairs a test gets
    when none are configured; None for any other model."""
    try:
        inner = split_backend(spec)[2]
        return inner if spec_kind(inner) == "toy" else None
    except ModelSpecError:
        return None  # a bad spec fails where the model is loaded, with its own message


def toy_names() -> list:
    from . import toys

    return list(toys.NAMES)


def resolve_device(device: Optional[str]) -> torch.device:
    """``auto`` (or None) is CUDA when available, else CPU."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelSpecError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:1, mps, ...") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device {device!r} asked for, but this machine has no CUDA GPU: use --circuits-device auto or cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ModelSpecError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "meta":
        raise ModelSpecError("the meta device holds no weights; patching needs a real one: use auto, cpu or cuda")
    return resolved


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("", "auto"):
        return None
    try:
        return getattr(torch, DTYPES[str(dtype).removeprefix("torch.")])
    except KeyError:
        raise ModelSpecError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(set(DTYPES)))}") from None


def spec_kind(spec: str) -> str:
    """``toy``, ``factory``, ``folder`` or ``hub``: what a spec names (its backend aside), judged from its text."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"a model spec must be a non-empty string, got {spec!r}")
    spec = split_backend(spec)[2]
    if spec.startswith(TOY_PREFIX):
        return "toy"
    if Path(spec).expanduser().is_dir() or spec.startswith((".", "/", "~")):
        return "folder"
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        return "factory"
    return "hub"


def spec_label(spec: str) -> str:
    """A short readable name for test ids and tables (a folder's name, not its whole path)."""
    backend, remote, inner = split_backend(spec)
    label = Path(inner).name if spec_kind(inner) == "folder" else inner
    return f"{_scheme(backend, remote)}{label}"


def _scheme(backend: Optional[str], remote: bool) -> str:
    return f"{backend}{'+remote' if remote else ''}://" if backend else ""


def checkpoint_labels(specs) -> dict:
    """Spec -> a label unique among ``specs``: a folder is named by the shortest tail of its path
    that no other checkpoint shares (``x/model`` and ``y/model``, not ``model`` twice), so the same
    specs get the same labels on every run. A checkpoint given twice is an error."""
    split = {spec: split_backend(spec) for spec in specs}
    schemes = {spec: _scheme(backend, remote) for spec, (backend, remote, _) in split.items()}
    paths = {spec: Path(inner).expanduser().resolve() for spec, (_, _, inner) in split.items() if spec_kind(inner) == "folder"}
    seen: dict = {}
    for spec in specs:
        key = (schemes[spec], paths.get(spec, split[spec][2]))
        if key in seen:
            raise ModelSpecError(f"checkpoint {spec!r} is given twice (also as {seen[key]!r}): name each checkpoint once")
        seen[key] = spec
    labels = {spec: spec for spec in specs if spec not in paths}
    for spec, path in paths.items():
        others = [other for name, other in paths.items() if name != spec and schemes[name] == schemes[spec]]
        for depth in range(1, len(path.parts) + 1):
            label = schemes[spec] + ("/".join(path.parts[-depth:]).lstrip("/") or "/")
            if label not in labels.values() and not any(other.parts[-depth:] == path.parts[-depth:] for other in others):
                break
        labels[spec] = label
    return {spec: labels[spec] for spec in specs}


def check_spec(spec: str, search: Sequence[Path] = (), import_factory_module: bool = True) -> None:
    """Cheap checks that need no loading: the toy exists, the folder has weights, the factory
    imports (from ``sys.path``, else from the folders in ``search``: the plugin gives the rootdir),
    the backend a spec names is installed. Without ``import_factory_module`` a factory's module is
    only found, not run (a pytest-xdist controller, which loads no model, skips its imports)."""
    backend, _, spec = split_backend(spec)
    if backend == "nnsight" and importlib.util.find_spec("nnsight") is None:
        raise ModelSpecError(f"model spec {spec!r} asks for the nnsight backend, which is not installed: pip install 'pytest-circuits[nnsight]'")
    kind = spec_kind(spec)
    if kind == "toy":
        _toy_name(spec)  # not imported: a toy module imports torch, which the xdist controller never needs
    elif kind == "folder":
        _folder_files(Path(spec).expanduser(), spec)
    elif kind == "factory":
        if import_factory_module:
            import_factory(spec, search=search)
        else:
            find_factory_module(spec, search=search)


def load_model(
    spec: str,
    device: Optional[str] = "auto",
    dtype=None,
    allow_pickle: bool = False,
    search: Sequence[Path] = (),
    backend: str = "transformer_lens",
    remote: bool = False,
):
    """The model named by ``spec`` on ``device`` in ``dtype``, in eval mode. Weights are read from
    safetensors only; ``allow_pickle`` lets a hub model whose only weights are pickled load them
    (unpickling can run code from the file: only for repositories you trust). ``backend`` says how
    the model is patched: a TransformerLens model (default), ``hf`` hooks on the Hugging Face model or
    ``nnsight`` tracing (``remote``: on NDIF); a spec that names its backend (``nnsight://gpt2``,
    ``split_backend``) overrides it. A model the engine cannot patch is refused here, at load, not at
    its first measurement."""
    named, named_remote, inner = split_backend(spec)
    if named is not None:
        backend, remote = named, named_remote or (remote and named == "nnsight")
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    kind = spec_kind(inner)
    with quiet_progress_bars():
        if remote:
            return _remote_model(inner, kind, spec)
        if backend != "transformer_lens":
            from .backends import backend_from_hf

            hf_model, tokenizer = _hf_model(inner, kind, device, dtype, allow_pickle, search, spec, backend)
            return backend_from_hf(hf_model.eval(), tokenizer, spec, backend, remote)
        if kind == "toy":
            model = _toy_module(inner).load(device=device, dtype=dtype)
        elif kind == "factory":
            model = _call_factory(import_factory(inner, search=search), device, dtype)
        elif kind == "folder":
            model = load_folder(Path(inner).expanduser(), device, dtype, spec)
        else:
            model = load_hub(inner, device, dtype, allow_pickle)
    if hasattr(model, "eval"):
        model.eval()
    check_patchable(model, spec)
    return model


def _remote_model(inner: str, kind: str, spec: str):
    """A hub model patched by nnsight traces that run on NDIF: nothing is downloaded but its config
    and tokenizer (NDIF runs its own copy of the weights)."""
    if kind != "hub":
        raise ModelSpecError(
            f"model spec {spec!r}: remote (NDIF) runs take a hub model NDIF serves (nnsight+remote://meta-llama/...), "
            f"not a {kind}; run a {kind} locally (without --circuits-remote)"
        )
    from .backends.nnsight import NNsightBackend, remote_model

    name, _, revision = inner.partition("@")
    try:
        model = remote_model(name, revision or None)
    except OSError as error:
        raise ModelSpecError(f"cannot read model {spec!r}'s config and tokenizer: {_first_line(error)}; {WAYS}") from None
    return NNsightBackend(model, tokenizer=model.tokenizer, name=inner, remote=True)


def _hf_model(inner: str, kind: str, device, dtype, allow_pickle: bool, search, spec: str, backend: str):
    """The plain Hugging Face model and tokenizer a spec names, for the ``hf`` and ``nnsight``
    backends (which patch the model itself, no TransformerLens wrapping)."""
    if kind == "toy":
        return _toy_module(inner).load_hf(device=device, dtype=dtype)
    if kind == "folder":
        return load_folder(Path(inner).expanduser(), device, dtype, spec, wrap=False)
    if kind == "hub":
        return load_hub(inner, device, dtype, allow_pickle, wrap=False)
    from transformers import PreTrainedModel

    model = _call_factory(import_factory(inner, search=search), device, dtype)
    if not isinstance(model, PreTrainedModel):
        raise ModelSpecError(
            f"model spec {spec!r}: the {backend} backend patches a Hugging Face model (a PreTrainedModel); the factory "
            f"returned {type(model).__name__} (return the Hugging Face model, or drop '{backend}://')"
        )
    return model, getattr(model, "tokenizer", None)


BUILT_IN_CODE = (
    "for a Hugging Face model built in code, return pytest_circuits.loading.bridge_from_hf(hf_model, tokenizer) "
    "(README: 'A model built in code')"
)


def check_patchable(model, spec: str) -> None:
    """Refuse, when it is loaded, a model no backend can patch (the backend's own reason, and how
    to wrap a model built in code)."""
    from .backends import BackendError, backend_for

    try:
        backend_for(model)
    except BackendError as error:
        raise ModelSpecError(f"model spec {spec!r} gave a model that cannot be patched: {error} Or, {BUILT_IN_CODE}.") from None


@contextlib.contextmanager
def quiet_progress_bars():
    """Hugging Face's download and weight-loading bars (``Loading weights``, ``Writing model
    shards``) off while we load: in pytest's output they would garble the progress line."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_on, hub_was_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            enable_progress_bars()


def _toy_name(spec: str) -> str:
    from . import toys

    name = spec[len(TOY_PREFIX) :]
    if name not in toys.NAMES:
        raise ModelSpecError(f"unknown toy {name!r} in model spec {spec!r}; shipped toys: {', '.join(toys.NAMES)}")
    return name


def _toy_module(spec: str):
    from . import toys

    return importlib.import_module(f"{toys.__name__}.{_toy_name(spec)}")


def import_factory(spec: str, what: Optional[str] = "model spec", search: Sequence[Path] = ()):
    """The callable named by ``package.module:name``; errors start with ``what`` and the spec.

    The module is imported from ``sys.path``; when it is not there but one of the folders in
    ``search`` holds it (``mymodels.py`` or ``mymodels/``), that folder is added to ``sys.path``
    first: the pytest plugin passes the rootdir, so plain ``pytest`` finds the project's own
    modules as ``python -m pytest`` (which puts the current folder on ``sys.path``) does.
    """
    module_name, _, attr = spec.partition(":")
    prefix = f"{what} {spec!r}: " if what else ""
    try:
        module = _import_module(module_name, search)
    except ImportError as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]:
            looked = f" or in {', '.join(str(folder) for folder in search)}" if search else ""
            hint = (
                f": it is not on sys.path{looked}. Plain `pytest` does not put the current folder on sys.path "
                "(`python -m pytest` does): add `pythonpath = .` (the folder holding it, relative to the ini file) to "
                "your pytest ini file, or install your package (pip install -e .)"
            )
        raise ModelSpecError(f"{prefix}cannot import module {module_name!r} ({error}){hint}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"{prefix}module {module_name!r} has no callable {attr!r}")
    return factory


def find_factory_module(spec: str, what: Optional[str] = "model spec", search: Sequence[Path] = ()) -> None:
    """Check ``package.module:name`` without running the module where its source shows ``name``
    defined at top level (a def, class, assignment or import); anything else is imported, as
    ``import_factory`` does, so an error reads the same."""
    module_name, _, attr = spec.partition(":")
    source = _module_source(module_name, search)
    if source is not None and attr in _top_level_names(source):
        return
    import_factory(spec, what, search)


def _module_source(name: str, search: Sequence[Path]) -> Optional[Path]:
    """The ``.py`` file of module ``name``, found on ``sys.path`` or in ``search`` without importing
    anything; None where it is not a plain source file."""
    top, *rest = name.split(".")
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    roots = [Path(found.origin)] if found is not None and found.origin and found.origin.endswith(".py") else []
    roots += [Path(folder) / f"{top}.py" for folder in search] + [Path(folder) / top / "__init__.py" for folder in search]
    for root in roots:
        if not root.is_file():
            continue
        if not rest:
            return root
        if root.name == "__init__.py":
            below = root.parent.joinpath(*rest)
            for candidate in (below.with_suffix(".py"), below / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _top_level_names(source: Path) -> set:
    import ast

    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _import_module(name: str, search: Sequence[Path]):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        top = name.split(".")[0]
        if error.name != top:
            raise  # the module exists but something it imports does not: its own error says what
        for folder in map(Path, search):
            if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
                if str(folder) not in sys.path:
                    sys.path.insert(0, str(folder))
                importlib.invalidate_caches()
                return importlib.import_module(name)
        raise


def _call_factory(factory, device, dtype):
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    kwargs = {name: value for name, value in (("device", device), ("dtype", dtype)) if name in accepted}
    model = factory(**kwargs)
    if "device" not in kwargs and hasattr(model, "to"):
        model = model.to(device)
    return model


def _folder_files(folder: Path, spec: Optional[str] = None) -> list:
    spec = spec or str(folder)
    if not folder.is_dir():
        raise ModelSpecError(f"model folder {spec!r} does not exist; {WAYS}")
    if not (folder / "config.json").is_file():
        raise ModelSpecError(f"model folder {spec!r} has no config.json; save it with model.save_pretrained(folder)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        extra = f" (found {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)" if pickles else ""
        raise ModelSpecError(f"model folder {spec!r} has no *.safetensors weights{extra}")
    if not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise ModelSpecError(
            f"model folder {spec!r} has {', '.join(p.name for p in weights)}, but Hugging Face loads {HF_WEIGHTS[0]} "
            f"(or the shards {HF_WEIGHTS[1]} lists): rename the file, or save the model with model.save_pretrained(folder)"
        )
    return weights


def load_folder(folder: Path, device: torch.device, dtype, spec: Optional[str] = None, wrap: bool = True):
    """A local Hugging Face folder, loaded offline from safetensors and wrapped as a bridge
    (without ``wrap``: the Hugging Face model and its tokenizer or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _folder_files(folder, spec)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, **({"dtype": dtype} if dtype else {})
        )
        tokenizer = None
        if any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelSpecError(f"cannot load model folder {spec or str(folder)!r}: {_first_line(error)}") from None
    if not wrap:
        return hf_model.to(device), tokenizer
    return model_from_hf(hf_model.to(device), tokenizer, model_name=str(folder))


def has_bridge() -> bool:
    """Whether the installed TransformerLens has ``TransformerBridge`` (3.x and 4.x; 2.x does not)."""
    try:
        from transformer_lens.model_bridge.sources import build_bridge_from_module  # noqa: F401
    except ImportError:
        return False
    return True


def model_from_hf(hf_model, tokenizer=None, model_name: str = "local"):
    """A loaded Hugging Face causal LM as a TransformerLens model: a bridge where TransformerLens has
    one, else (2.x) a ``HookedTransformer`` converted from the same weights, computing the same numbers
    (``hooked_transformer_from_hf``; an architecture it does not convert is a BackendError naming those it does)."""
    if has_bridge():
        return bridge_from_hf(hf_model, tokenizer, model_name=model_name)
    from .backends.transformer_lens import hooked_transformer_from_hf

    return hooked_transformer_from_hf(hf_model, tokenizer, model_name=model_name)


def bridge_from_hf(hf_model, tokenizer=None, model_name: str = "local"):
    """Wrap a loaded Hugging Face causal LM as a TransformerLens bridge, leaving global RNG alone."""
    import torch
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf_model.eval()
    with torch.random.fork_rng(devices=[]):
        model = build_bridge_from_module(
            hf_model,
            type(hf_model).__name__,
            hf_config=hf_model.config,
            tokenizer=tokenizer,
            model_name=model_name,
        )
    return model.eval()


def load_hub(spec: str, device: torch.device, dtype, allow_pickle: bool = False, wrap: bool = True):
    """A hub model through TransformerLens: the local cache first, the hub only when reachable.
    With a bridge, ``TransformerBridge.boot_transformers``; on TransformerLens 2.x the Hugging Face
    model is loaded and converted to a ``HookedTransformer`` (``model_from_hf``); without ``wrap``,
    the Hugging Face model and its tokenizer (or None), for the ``hf`` and ``nnsight`` backends.

    Hugging Face loads safetensors when a repository has them and falls back to pickled
    ``pytorch_model.bin`` otherwise; that fallback is refused unless ``allow_pickle``.
    """
    name, _, revision = spec.partition("@")
    revision = revision or None

    def boot():
        try:
            return _boot_hub(name, device, dtype, revision, wrap)
        except pickle.UnpicklingError as error:
            raise ModelSpecError(f"cannot load model {spec!r}: its pickled weights do not load ({_first_line(error)})") from None

    cached = _cached(name, revision, "config.json")
    usable = cached and (allow_pickle or any(_cached(name, revision, file) for file in HF_WEIGHTS))
    if usable:
        with _offline():
            try:
                return boot()
            except OSError:
                pass  # an incomplete cache entry: try the hub below
    if not _hub_reachable():
        if usable:
            where = "its copy in the local Hugging Face cache does not load"
        elif cached:
            where = "the local Hugging Face cache holds no safetensors weights for it (pickled weights load only with --circuits-allow-pickle)"
        else:
            where = "it is not in the local Hugging Face cache"
        raise ModelSpecError(f"cannot load model {spec!r}: {where} and the hub is unreachable; {WAYS}")
    if not allow_pickle:
        _require_safetensors(spec, name, revision)
    try:
        return boot()
    except OSError as error:
        raise ModelSpecError(f"cannot load model {spec!r}: {_first_line(error)}; {WAYS}") from None


def _boot_hub(name: str, device, dtype, revision: Optional[str], wrap: bool = True):
    import torch

    if wrap and has_bridge():
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(name, device=device, dtype=dtype or torch.float32, revision=revision)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype or torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError, KeyError):  # a repository without a tokenizer: token-id prompts still work
        tokenizer = None
    if not wrap:
        return hf_model.to(device), tokenizer
    return model_from_hf(hf_model.to(device), tokenizer, model_name=name)


def _require_safetensors(spec: str, name: str, revision: Optional[str]) -> None:
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(name, revision=revision)
    except Exception:  # no such repository, revision or access: boot() says so in its own words
        return
    if not any(file.endswith(".safetensors") for file in files):
        pickles = [file for file in files if file.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ModelSpecError(
            f"hub model {spec!r} has no safetensors weights ({', '.join(pickles) or 'none'}): pickled weights can run code "
            "when loaded, so they are refused; convert them to safetensors, or, for a repository you trust, pass "
            "--circuits-allow-pickle (load_model(..., allow_pickle=True))"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cached(name: str, revision: Optional[str], file: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, file, revision=revision)
    except Exception:  # an invalid repo id, or no hub client: not cached
        return False
    return isinstance(found, str)


class _offline:
    """Run with the Hugging Face libraries in offline mode, restoring the environment after."""

    KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

    def __enter__(self):
        self.saved = {key: os.environ.get(key) for key in self.KEYS}
        os.environ.update({key: "1" for key in self.KEYS})

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:
        endpoint = urlparse("https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
