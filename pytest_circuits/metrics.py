"""Metrics: functions of a run's logits giving one number per prompt, and the registry by name.

Built-in metrics read only the answer position, so the engine hands them ``[batch, d_vocab]``
logits there. A user metric is any callable ``(logits, pairs) -> tensor[batch]`` and gets the full
``[batch, seq, d_vocab]`` logits and the encoded prompt pairs.

``kl`` is KL(clean ‖ run) of the next-token distribution, so it is 0 on the clean run and the usual
recovered/damage formulas give ``1 − KL(patched)/KL(corrupt)`` and ``KL(patched)/KL(corrupt)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

import torch

from .errors import InputError
from .prompts import EncodedPairs


class MetricError(InputError, ValueError):
    """An unknown metric name, or a metric that returned something other than one finite number per prompt."""


@dataclass(frozen=True)
class Metric:
    """A named per-prompt metric.

    ``at_answer``: the function takes answer-position logits ``[batch, d_vocab]`` instead of the full
    logits. ``needs_clean``: it also takes the clean run's answer-position logits (``reference=``).
    ``higher_is_better`` is for display only; scores use the same formulas either way. ``reads``
    gives the token ids an answer-position metric looks at, so sweeps unembed only those columns.
    """

    name: str
    fn: Callable
    at_answer: bool = False
    needs_clean: bool = False
    higher_is_better: bool = True
    reads: Optional[Callable[[EncodedPairs], torch.Tensor]] = None  # token ids read at the answer; None: all

    def __call__(self, logits: torch.Tensor, pairs: EncodedPairs, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.at_answer and logits.ndim == 3:
            logits = answer_logits(logits, pairs)
        if self.needs_clean:
            values = self.fn(logits, pairs, reference=reference)
        else:
            values = self.fn(logits, pairs)
        return self._checked(values, pairs)

    def _checked(self, values, pairs: EncodedPairs) -> torch.Tensor:
        if not isinstance(values, torch.Tensor):
            try:
                values = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                text = repr(values)
                raise MetricError(
                    f"metric {self.name!r} returned {type(values).__name__} {text[:60]}{'…' if len(text) > 60 else ''}; "
                    f"a metric must return a tensor of one number per prompt ({pairs.n_prompts})"
                ) from None
        if values.is_complex():
            raise MetricError(
                f"metric {self.name!r} returned {str(values.dtype).removeprefix('torch.')} values; a metric must return real "
                "numbers (take .real or .abs() yourself if that is what it means)"
            )
        values = values.detach().to(torch.float64)
        if values.shape != (pairs.n_prompts,):
            raise MetricError(
                f"metric {self.name!r} returned shape {tuple(values.shape)}; a metric must return one number per prompt ({pairs.n_prompts})"
            )
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise MetricError(
                f"metric {self.name!r} is {values[bad[0]].item()} on prompt {bad[0]} ({len(bad)} prompt(s) not finite): "
                "the model produced NaN or infinite logits, or the metric divides by zero"
            )
        return values


def answer_logits(logits: torch.Tensor, pairs: EncodedPairs) -> torch.Tensor:
    """[batch, seq, vocab] -> [batch, vocab] at each prompt's answer position."""
    batch = torch.arange(logits.shape[0], device=logits.device)
    return logits[batch, pairs.answer_positions.to(logits.device)]


def _logit_diff(logits: torch.Tensor, pairs: EncodedPairs) -> torch.Tensor:
    """Logit of the correct answer minus the incorrect one, averaged over each prompt's answer pairs."""
    answers = pairs.answers.to(logits.device)
    picked = logits.gather(1, answers.flatten(1)).view(answers.shape)
    diffs = (picked[..., 0] - picked[..., 1]).to(torch.float64)
    mask = pairs.answer_mask.to(logits.device)
    return (diffs * mask).sum(-1) / mask.sum(-1)


def _prob(logits: torch.Tensor, pairs: EncodedPairs) -> torch.Tensor:
    """Probability of the correct answer, averaged over each prompt's answer pairs."""
    probs = logits.to(torch.float64).softmax(-1)
    answers = pairs.answers.to(logits.device)
    correct = probs.gather(1, answers[..., 0])
    mask = pairs.answer_mask.to(logits.device)
    return (correct * mask).sum(-1) / mask.sum(-1)


def _kl(logits: torch.Tensor, pairs: EncodedPairs, reference: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ this run) of the next-token distribution at the answer position."""
    clean = reference.to(torch.float64).log_softmax(-1)
    run = logits.to(torch.float64).log_softmax(-1)
    return (clean.exp() * (clean - run)).sum(-1)


_REGISTRY: Dict[str, Metric] = {}


def register_metric(
    name: str,
    fn: Callable,
    *,
    at_answer: bool = False,
    higher_is_better: bool = True,
    replace: bool = False,
) -> Metric:
    """Make ``fn`` usable as ``metric=name``. ``fn(logits, pairs) -> tensor[batch]``."""
    if not replace and name in _REGISTRY and _REGISTRY[name].fn is not fn:
        raise MetricError(f"a metric named {name!r} is already registered; pass replace=True to override it")
    metric = Metric(name, fn, at_answer=at_answer, higher_is_better=higher_is_better)
    _REGISTRY[name] = metric
    return metric


def get_metric(metric: Union[str, Callable, Metric]) -> Metric:
    """A ``Metric`` from a registered name, a ``Metric``, or a plain callable ``(logits, pairs)``."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        try:
            return _REGISTRY[metric]
        except KeyError:
            raise MetricError(f"unknown metric {metric!r}; registered metrics: {', '.join(sorted(_REGISTRY))}") from None
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    raise MetricError(f"a metric is a name ({', '.join(sorted(_REGISTRY))}) or a callable (logits, pairs) -> tensor[batch], got {metric!r}")


def metric_names() -> list:
    return sorted(_REGISTRY)


def _answer_tokens(pairs: EncodedPairs) -> torch.Tensor:
    return torch.unique(pairs.answers.flatten())


_REGISTRY["logit_diff"] = Metric("logit_diff", _logit_diff, at_answer=True, reads=_answer_tokens)
_REGISTRY["prob"] = Metric("prob", _prob, at_answer=True)
_REGISTRY["kl"] = Metric("kl", _kl, at_answer=True, needs_clean=True, higher_is_better=False)


class MetricRegistry:
    """The registry as an object, handed to ``pytest_circuits_register_metrics(registry)``.

    Registering through it replaces a metric of the same name: the hook runs once per pytest
    session, and a session started in the same process (pytester, IDE reruns) registers again.
    """

    get = staticmethod(get_metric)
    names = staticmethod(metric_names)

    def register(self, name: str, fn: Callable, *, at_answer: bool = False, higher_is_better: bool = True) -> Metric:
        return register_metric(name, fn, at_answer=at_answer, higher_is_better=higher_is_better, replace=True)

    def __contains__(self, name: str) -> bool:
        return name in _REGISTRY


registry = MetricRegistry()
