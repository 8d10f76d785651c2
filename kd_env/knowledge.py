"""The knowledge registry: each kind of teacher knowledge is a loss the student can learn from.

Built in, with the paper's names:

=============  ===============================================================  ==================
name           loss                                                             teacher outputs
=============  ===============================================================  ==================
finetune       CE to the gold labels (MSE for regression)                       none
response       T^2 * KL(teacher_T || student_T) on softened distributions       logits
feature        MSE of mapped hidden states (PKD: L2-normalised sentence vectors)  hidden (pooled)
relation       MSE of FSP matrices of consecutive mapped layer pairs (Yim+17)   hidden (tokens)
attention      MSE of mapped attention maps (TinyBERT)                          attentions
=============  ===============================================================  ==================

Add your own from user code::

    from kd_env import register_knowledge, Knowledge

    @register_knowledge("logit_mse", needs=("logits",))
    def logit_mse(student, teacher, batch):
        return ((student.logits - teacher.logits) ** 2).mean()

or subclass :class:`Knowledge` for parameters (``@register_knowledge("name")`` on the class).
Teacher outputs arrive already aligned to the student: ``teacher.hidden[j]`` pairs with
``student.hidden[j]`` (see :func:`kd_env.models.layer_map`).

Beside it: :mod:`kd_env.loss_maths` (the masked token mean and the FSP / Gram maths the losses
share) and :mod:`kd_env.example_weightings` (per-example weightings such as Dynamic KD's); their
names are importable from here too.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from .example_weightings import (
    EXAMPLE_WEIGHTINGS,
    check_example_weighting,
    example_weighting_names,
    register_example_weighting,
    uncertainty_weighting,
)
from .loss_maths import RELATION_BLOCKS, fsp_matrix, fsp_mse, fsp_mse_chain, masked_mean
from .models import ModelOutputs
from .registry import Registry, check_function_params

if TYPE_CHECKING:
    from .batched.states import StudentStates, TeacherStates

__all__ = [
    "Knowledge",
    "KNOWLEDGE_REGISTRY",
    "register_knowledge",
    "make_knowledge",
    "knowledge_names",
    "DEFAULT_KNOWLEDGE",
    "TEACHER_OUTPUTS",
    "EXAMPLE_WEIGHTINGS",
    "register_example_weighting",
    "example_weighting_names",
    "check_example_weighting",
    "uncertainty_weighting",
    "fsp_matrix",
    "fsp_mse",
    "fsp_mse_chain",
    "RELATION_BLOCKS",
]

#: what a knowledge type may ask of the teacher
TEACHER_OUTPUTS = ("logits", "hidden_pooled", "hidden_cls", "hidden_tokens", "attentions")
"""``hidden_pooled``: each mapped layer's sentence vector under the teacher's pooling
(:meth:`~kd_env.models.ModelOutputs.pooled`); ``hidden_cls``: each layer's first token;
``hidden_tokens``: every real token of every mapped layer"""

#: the paper's four knowledge types, in action-bit order
DEFAULT_KNOWLEDGE = ("finetune", "response", "feature", "relation")


class Knowledge:
    """A kind of teacher knowledge: a loss between student and teacher outputs.

    Class attributes:
        name: registry name.
        needs: teacher outputs it reads, from :data:`TEACHER_OUTPUTS` (empty: labels only).
        cost: relative compute of the term (used by cost-aware rewards); 1 = one CE term.
    """

    name: str = ""
    needs: tuple[str, ...] = ()
    cost: float = 1.0

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"knowledge {self.name!r} takes no parameters; got {sorted(params)}")

    @property
    def student_attentions(self) -> bool:
        return "attentions" in self.needs

    def check(self, student_heads: int, teacher_heads: int) -> None:
        """Raise ``ValueError`` when the models cannot provide what this knowledge needs."""
        if "attentions" in self.needs and (student_heads <= 0 or teacher_heads <= 0):
            raise ValueError(f"knowledge {self.name!r} needs attention maps, which these models do not "
                             f"have (student heads={student_heads}, teacher heads={teacher_heads})")

    def __call__(self, student: ModelOutputs, teacher: ModelOutputs | None,
                 batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # ---- per-example form (for per-example weighting such as Dynamic KD) ----------------------
    @property
    def has_per_example(self) -> bool:
        """Whether :meth:`per_example` is implemented (needed by per-example weightings)."""
        return type(self).per_example is not Knowledge.per_example

    def per_example(self, student: ModelOutputs, teacher: ModelOutputs | None,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of each example, ``(B,)``, such that :meth:`weighted` with unit weights equals
        the term itself.  Knowledge without a per-example form leaves this unimplemented."""
        raise NotImplementedError(f"knowledge {self.name!r} has no per-example form")

    def example_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Which examples of the batch the term is defined on (``None``: all of them)."""
        return None

    def weighted(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor],
                 example_weights: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i l_i / n`` over the examples the term is defined on (``n`` of them)."""
        values = self.per_example(student, teacher, batch)
        w = example_weights.to(values.dtype)
        mask = self.example_mask(batch)
        if mask is None:
            return (values * w).sum() / values.shape[0]
        m = mask.to(values.dtype)
        return (values * w * m).sum() / m.sum().clamp_min(1)

    # ---- batched form (N students at once: kd_env.batched) ----------------------------------
    def batched(self, student: StudentStates, teacher: TeacherStates, batch: dict[str, torch.Tensor],
                example_weights: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        """This loss for each of N students at once, ``(N,)`` (the batched env's form): ``student``
        and ``teacher`` hold ``(N, B, ...)`` tensors (:mod:`kd_env.batched.states`), ``batch``
        ``labels`` ``(N, B)`` and optionally ``label_mask``, ``example_weights`` per-example weights
        ``(N, B)`` by knowledge name.  The default maps :meth:`__call__` over the students with
        ``torch.func.vmap`` (the loss must then be vmap-able: no data-dependent shapes or
        ``.item()``); the built-in types point at forms written out in
        :mod:`kd_env.batched.losses`.  A written-out form belongs to its own class: a subclass
        that does not define ``batched`` gets this default (it may change the loss)."""
        from .batched.losses import vmapped_loss

        return vmapped_loss(self, student, teacher, batch, example_weights)

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "batched" not in cls.__dict__:
            cls.batched = Knowledge.batched  # type: ignore[method-assign]  # see batched: not inherited

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, needs={self.needs})"


KNOWLEDGE_REGISTRY: Registry = Registry("knowledge")


def register_knowledge(name: str, needs: Iterable[str] | None = None, cost: float | None = None,
                       overwrite: bool = False) -> Callable:
    """Decorator registering a :class:`Knowledge` subclass or a loss function under ``name``.

    Args:
        name: the name used in configs and action bits.
        needs: teacher outputs the loss reads (for functions; classes set ``needs``).
        cost: relative compute of the term (default 1).
        overwrite: allow replacing an existing entry (otherwise a clash is an error).
    """

    def wrap(obj):
        if inspect.isclass(obj) and issubclass(obj, Knowledge):
            cls = obj
            if needs is not None:
                cls.needs = tuple(needs)
        elif callable(obj):
            fn = obj
            fn_needs = tuple(needs or ())
            fn_params = inspect.signature(fn).parameters

            class FunctionKnowledge(Knowledge):
                def __init__(self, **params: Any):
                    check_function_params("knowledge", name, fn_params, params)
                    self.params = params

                def __call__(self, student, teacher, batch):
                    return fn(student, teacher, batch, **self.params)

            FunctionKnowledge.__name__ = FunctionKnowledge.__qualname__ = f"Knowledge_{fn.__name__}"
            FunctionKnowledge.needs = fn_needs
            cls = FunctionKnowledge
            cls.__qualname__ = getattr(obj, "__qualname__", cls.__qualname__)
        else:
            raise TypeError("register_knowledge decorates a Knowledge subclass or a loss function")
        bad = [n for n in cls.needs if n not in TEACHER_OUTPUTS]
        if bad:
            raise ValueError(f"knowledge {name!r}: unknown teacher outputs {bad}; valid: {list(TEACHER_OUTPUTS)}")
        if cost is not None:
            cls.cost = float(cost)
        KNOWLEDGE_REGISTRY.add(name, cls, obj, overwrite)
        return obj

    return wrap


def knowledge_names() -> list[str]:
    return KNOWLEDGE_REGISTRY.names()


def make_knowledge(names: Iterable[str], params: dict[str, dict[str, Any]] | None = None) -> list[Knowledge]:
    """Instantiate knowledge types by name (order kept: it is the action-bit order)."""
    names = list(names)
    params = params or {}
    if not names:
        raise ValueError(f"at least one knowledge type is needed; valid: {knowledge_names()}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate knowledge types in {names}")
    unknown = [n for n in names if n not in KNOWLEDGE_REGISTRY]
    if unknown:
        raise ValueError(f"unknown knowledge type(s) {unknown}; valid: {knowledge_names()}")
    stray = [n for n in params if n not in names]
    if stray:
        raise ValueError(f"parameters given for knowledge types not in use: {stray}; in use: {names}")
    return [KNOWLEDGE_REGISTRY[n](**params.get(n, {})) for n in names]


# --------------------------------------------------------------------------------------------
# Built-in knowledge
# --------------------------------------------------------------------------------------------


def _is_regression(logits: torch.Tensor) -> bool:
    return logits.shape[-1] == 1


@register_knowledge("finetune")
class Finetune(Knowledge):
    """Cross-entropy to the gold labels (MSE for regression tasks), averaged over the examples
    that have a label (``batch["label_mask"]`` when only part of the distillation set is
    labelled; examples without one add nothing and give no gradient)."""

    needs = ()

    def per_example(self, student, teacher, batch):
        labels = batch["labels"]
        if _is_regression(student.logits):
            return (student.logits.squeeze(-1) - labels.float()) ** 2
        return F.cross_entropy(student.logits, labels, reduction="none")

    def example_mask(self, batch):
        return batch.get("label_mask")

    def __call__(self, student, teacher, batch):
        if batch.get("label_mask") is not None:
            return self.weighted(student, teacher, batch, torch.ones_like(batch["labels"], dtype=torch.float32))
        labels = batch["labels"]
        if _is_regression(student.logits):
            return F.mse_loss(student.logits.squeeze(-1), labels.float())
        return F.cross_entropy(student.logits, labels)

    def batched(self, student, teacher, batch, example_weights):
        from .batched.losses import finetune_loss

        return finetune_loss(self, student, teacher, batch, example_weights)


@register_knowledge("response")
class Response(Knowledge):
    """KL(teacher_T || student_T) on temperature-softened distributions, times T^2.

    Args:
        temperature: softening temperature T (> 0).
    """

    needs = ("logits",)

    def __init__(self, temperature: float = 2.0):
        if not temperature > 0:
            raise ValueError(f"response: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, student, teacher, batch):
        if _is_regression(student.logits):
            return F.mse_loss(student.logits, teacher.logits.to(student.logits.dtype))
        t = self.temperature
        log_p_s = F.log_softmax(student.logits / t, dim=-1)
        log_p_t = F.log_softmax(teacher.logits.float() / t, dim=-1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * t * t

    def per_example(self, student, teacher, batch):
        if _is_regression(student.logits):
            return ((student.logits - teacher.logits.to(student.logits.dtype)) ** 2).mean(-1)
        t = self.temperature
        log_p_s = F.log_softmax(student.logits / t, dim=-1)
        log_p_t = F.log_softmax(teacher.logits.float() / t, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * t * t

    def batched(self, student, teacher, batch, example_weights):
        from .batched.losses import response_loss

        return response_loss(self, student, teacher, batch, example_weights)


@register_knowledge("uncertainty_kd", cost=2.0)
class UncertaintyKD(Knowledge):
    """Dynamic KD's supervision adjustment (Li et al., EMNLP 2021) as one knowledge type: per
    example, ``u_i * response_i + (1 - u_i) * finetune_i``, with ``u_i`` the student's
    normalised prediction entropy (the ``uncertainty`` example weighting; finetune averaged over
    the labelled examples, response over all, as those terms are).  Alone (``fixed:00001`` after
    the four default types) it trains exactly as ``dynamic_kd`` does; as a knowledge type, a
    selector can choose it in some phases and plain finetune or response in others.

    Args:
        temperature: the response term's softening temperature (> 0).
    """

    needs = ("logits",)

    def __init__(self, temperature: float = 2.0):
        self.finetune, self.response = Finetune(), Response(temperature)

    def __call__(self, student, teacher, batch):
        weights = uncertainty_weighting(student, teacher, batch)
        return (self.finetune.weighted(student, teacher, batch, weights["finetune"])
                + self.response.weighted(student, teacher, batch, weights["response"]))

    def batched(self, student, teacher, batch, example_weights):
        from .batched.losses import uncertainty_kd_loss

        return uncertainty_kd_loss(self, student, teacher, batch, example_weights)


@register_knowledge("feature")
class Feature(Knowledge):
    """MSE between mapped intermediate hidden states (student projected to teacher width).

    Args:
        tokens: which vectors of a layer are matched.  ``"pooled"`` (default; PKD's form: the
            L2-normalised sentence vectors, squared distance), where a sentence vector is read
            the way the models classify (``DistillConfig.pooling``: [CLS] or the token mean);
            ``"cls"`` (the same on the first token, whatever the pooling); ``"all"`` (TinyBERT:
            plain MSE over every real token).
        layers: ``"all"`` (every mapped layer 1..k) or ``"intermediate"`` (PKD: all but the last).
    """

    needs = ("hidden_pooled",)
    _NEEDS = {"pooled": ("hidden_pooled",), "cls": ("hidden_cls",), "all": ("hidden_tokens",)}

    def __init__(self, tokens: str = "pooled", layers: str = "all"):
        if tokens not in self._NEEDS:
            raise ValueError(f"feature: tokens must be one of {list(self._NEEDS)}, got {tokens!r}")
        if layers not in ("all", "intermediate"):
            raise ValueError(f"feature: layers must be 'all' or 'intermediate', got {layers!r}")
        self.tokens, self.layers = tokens, layers
        self.needs = self._NEEDS[tokens]

    def _indices(self, k: int) -> list[int]:
        idx = list(range(1, k + 1))
        return idx[:-1] or idx if self.layers == "intermediate" else idx

    def __call__(self, student, teacher, batch):
        losses = []
        for j in self._indices(len(student.hidden) - 1):
            if self.tokens == "all":
                s, t = student.hidden[j], teacher.hidden[j].to(student.hidden[j].dtype)
                losses.append(masked_mean((s - t) ** 2, student.mask))
                continue
            if self.tokens == "pooled":
                s, t = student.pooled(j), teacher.pooled(j)
            else:
                s, t = student.hidden[j][:, 0], teacher.hidden[j][:, 0]
            a = F.normalize(s, dim=-1)
            b = F.normalize(t.to(s.dtype), dim=-1)
            losses.append(((a - b) ** 2).sum(-1).mean())
        return torch.stack(losses).mean()

    def batched(self, student, teacher, batch, example_weights):
        from .batched.losses import feature_loss

        return feature_loss(self, student, teacher, batch, example_weights)


@register_knowledge("relation", cost=1.5)
class Relation(Knowledge):
    """MSE between FSP matrices of consecutive mapped layer pairs (0,1), (1,2), ... (k-1,k)."""

    needs = ("hidden_tokens",)

    @staticmethod
    def pair_loss(a_s: torch.Tensor, b_s: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """The loss of one layer pair: :func:`fsp_mse` (token Gram matrices)."""
        return fsp_mse(a_s, b_s, a_t, b_t, mask)

    def __call__(self, student, teacher, batch):
        if type(self).pair_loss is Relation.pair_loss:  # each layer's Gram matrices once, not per pair
            return fsp_mse_chain(student.hidden, [t.to(student.hidden[0].dtype) for t in teacher.hidden],
                                 student.mask)
        losses = []
        for j in range(1, len(student.hidden)):
            a_s, b_s = student.hidden[j - 1], student.hidden[j]
            a_t, b_t = teacher.hidden[j - 1].to(a_s.dtype), teacher.hidden[j].to(a_s.dtype)
            losses.append(self.pair_loss(a_s, b_s, a_t, b_t, student.mask))
        return torch.stack(losses).mean()

    def batched(self, student, teacher, batch, example_weights):
        from .batched.losses import relation_loss

        return relation_loss(self, student, teacher, batch, example_weights)


@register_knowledge("attention", cost=1.5)
class Attention(Knowledge):
    """MSE between mapped attention probability maps over real tokens (TinyBERT).  When the head
    counts differ, maps are averaged over heads first."""

    needs = ("attentions",)

    def __call__(self, student, teacher, batch):
        if not student.attentions or teacher.attentions is None:
            raise ValueError("attention knowledge needs attention maps from both models")
        losses = []
        mask = student.mask
        for s, t in zip(student.attentions, teacher.attentions):
            t = t.to(s.dtype)
            if s.shape[1] != t.shape[1]:
                s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
            d = (s - t) ** 2
            if mask is not None:
                m = mask.to(d.dtype)
                pair = m[:, None, :, None] * m[:, None, None, :]
                losses.append((d * pair).sum() / (pair.sum() * d.shape[1]).clamp_min(1))
            else:
                losses.append(d.mean())
        return torch.stack(losses).mean()
