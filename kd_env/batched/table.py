"""The batched students' data table: every slot's distillation set as its student sees it
(features, labels, the teacher's outputs and the statistics of them a step reads), in row blocks
shared by the slots with the same data and teacher, gathered into each step's batch."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..engine import Distiller
from ..knowledge import Knowledge, Response, UncertaintyKD
from .states import TeacherStates

__all__: list[str] = []


class _DataTable:
    """:class:`~kd_env.batched.students.StudentBatch`'s data: the table, each slot's labels,
    label mask and dev probe, and the batches a step gathers from them."""

    n: int
    device: torch.device
    distillers: list[Distiller]
    knowledge: Sequence[Knowledge]
    projection_names: list[str | None]
    _hand: Any

    def _init_table(self, first: Distiller) -> None:
        """The table's columns for ``first``'s data and teacher, and empty per-slot tables."""
        # each slot's distillation set as the student sees it, in row blocks shared by the slots
        # with the same data and teacher, so that a step gathers every student's batch with one index
        n_train = len(first.train_data)
        dev = self.device
        self._teacher_memo: dict[int, tuple] = {}
        t_out = self._teacher_outputs(first)
        # the temperatures the knowledge softens the teacher's outputs with (their log-probabilities
        # are stored, not recomputed every step)
        self.temperatures = sorted({1.0} | {float(k.temperature) for k in self.knowledge if isinstance(k, Response)}
                                   | {float(k.response.temperature) for k in self.knowledge
                                      if isinstance(k, UncertaintyKD)})
        widths = [("features", first.train_data.features.shape[1])]
        widths += [(f"teacher_logp@{t}", t_out[0].shape[1]) for t in self.temperatures]
        widths += [(f"teacher_p@{t}", t_out[0].shape[1]) for t in self.temperatures]
        widths += [("teacher_argmax", 1)]
        widths += [(f"hidden{j}", h.shape[1]) for j, h in enumerate(t_out[1]) if j > 0]
        widths += [(f"sq_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [("input_sq_norm", 1), ("input_dot0", 1)]  # the student's layer 0 is its input: data too
        # the teacher's side of feature and relation per example, for the written-out step
        # (:class:`_HandStep`): 1 / max(||t_j||, 1e-12), ||t_j||^2 / max(||t_j||, 1e-12)^2 and
        # ||t_{j-1}||^2 ||t_j||^2, each group in adjacent columns
        widths += [(f"inv_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [(f"unit_sq_norm{j}", 1) for j in range(len(t_out[1]))]
        widths += [(f"sq_norm_pair{j}", 1) for j in range(1, len(t_out[1]))]
        #: the columns a written-out step reads (those above, the rest only autograd's terms)
        self._hand_width = int(sum(w for _, w in widths))
        widths += [("teacher_logits", t_out[0].shape[1])] + [("hidden0", h.shape[1]) for h in t_out[1][:1]]
        #: whether the input's moments with the teacher's first state are read from the table
        self._input_moments = (len(t_out[1]) > 0 and len(self.projection_names) > 0
                               and self.projection_names[0] is None
                               and tuple(t_out[1][0].shape) == tuple(first.train_data.features.shape))
        ends = np.cumsum([w for _, w in widths])
        self._columns = {name: (int(e - w), int(e)) for (name, w), e in zip(widths, ends)}
        self._num_hidden = len(t_out[1])
        #: the distillation sets as the students see them, one block ``(n, F)`` per distinct
        #: (data, teacher) pair (fields side by side, so a step gathers all of them with one index);
        #: the copies of one config share a block, so a step reads a table that stays in cache
        #: (gathering 32 copies' rows from 32 private blocks missed the cache on every row)
        self.table = torch.zeros((0, n_train, int(ends[-1])), device=dev)
        self._blocks: list[tuple[Any, Any] | None] = []  # block -> the (train_data, teacher) it holds
        self._block_of = np.zeros(self.n, dtype=np.int64)  # slot -> its block
        #: per slot: the student's labels (N, n) and label mask (N, n) (1 = labelled)
        self.labels = torch.zeros((self.n, n_train), dtype=torch.long, device=dev)
        self.label_masks = torch.ones((self.n, n_train), device=dev)
        self.has_mask = np.zeros(self.n, dtype=bool)
        n_probe = len(first.probe_indices)
        self.probe_features = torch.zeros((self.n, n_probe, first.train_data.features.shape[1]), device=dev)
        self.probe_labels = torch.zeros((self.n, n_probe), dtype=torch.long)
        self._source: list[Distiller | None] = [None] * self.n  # whose data each slot holds
        self._slot_offsets = (np.arange(self.n) * n_train)[:, None]
        self._row_offsets = self._slot_offsets.copy()  # each slot's first row in the flattened table
        self._gather_buffer: torch.Tensor | None = None  # the rows a training step gathers (reused)
        self._buffer_fields: tuple[torch.Tensor, dict[str, Any]] | None = None  # its field views

    def _teacher_outputs(self, d: Distiller) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's logits and mapped hidden states (one vector per layer) on the whole
        distillation set, read once per teacher cache."""
        key = id(d.teacher)
        hit = self._teacher_memo.get(key)
        if hit is None or hit[0] is not d.teacher:
            with torch.no_grad():
                out = d.teacher.outputs(d.train_data.batch(np.arange(len(d.train_data))))
            hit = (d.teacher, (out.logits.float(), [h[:, 0].float() for h in out.hidden]))
            self._teacher_memo[key] = hit
        return hit[1]

    def _load_data(self, i: int, d: Distiller) -> None:
        """Slot ``i``'s rows of the data tables from distiller ``d``: its labels, mask and probe,
        and a block of :attr:`table` holding ``d``'s data and teacher outputs (shared with the
        slots whose distillers have the same data and teacher, written when no slot has it)."""
        if len(d.train_data) != self.labels.shape[1] or len(d.probe_indices) != self.probe_features.shape[1]:
            raise ValueError("the batched env needs every copy and instance to have the same distillation set and "
                             "dev probe sizes (train_examples, dev_probe_size)")
        labels = d.student_labels if d.student_labels is not None else d.train_data.labels
        probe = d.dev_data.batch(d.probe_indices)
        self._source[i] = None  # slot i's block is free to reuse unless another slot holds it too
        block = self._block_for(i, d)
        with torch.no_grad():
            self.labels[i].copy_(torch.as_tensor(np.asarray(labels)).long())
            if d.label_mask is None:
                self.label_masks[i].fill_(1.0)
            else:
                self.label_masks[i].copy_(torch.as_tensor(d.label_mask, dtype=torch.float32))
            self.has_mask[i] = d.label_mask is not None
            self.probe_features[i].copy_(probe["features"])
            self.probe_labels[i].copy_(probe["labels"].long())
        self._block_of[i] = block
        self._row_offsets[i] = block * self.labels.shape[1]
        self._source[i] = d

    def _block_for(self, i: int, d: Distiller) -> int:
        """The block of :attr:`table` with ``d``'s data and teacher outputs: one that already has
        them, else a block no other slot uses (a new one when every block is in use), filled.
        Blocks are matched by the identity of the data and teacher objects they were read from
        (held in :attr:`_blocks`, so they stay alive and their identities are not reused)."""
        for b, held in enumerate(self._blocks):
            if held is not None and held[0] is d.train_data and held[1] is d.teacher:
                return b
        used = {int(self._block_of[s]) for s in range(self.n) if s != i and self._source[s] is not None}
        free = [b for b in range(len(self._blocks)) if b not in used]
        if free:
            b = int(self._block_of[i]) if int(self._block_of[i]) in free else free[0]
        else:
            b = len(self._blocks)
            self.table = torch.cat([self.table, self.table.new_zeros((1, *self.table.shape[1:]))])
            self._blocks.append(None)
        self._blocks[b] = None  # until it is filled
        full = d.train_data.batch(np.arange(len(d.train_data)))
        logits, hidden = self._teacher_outputs(d)
        fields = {"features": full["features"], "teacher_logits": logits}
        for t in self.temperatures:
            fields[f"teacher_logp@{t}"] = torch.log_softmax(logits / t, -1)
            fields[f"teacher_p@{t}"] = fields[f"teacher_logp@{t}"].exp()
        fields["teacher_argmax"] = logits.argmax(-1, keepdim=True).float()
        for j, h in enumerate(hidden):
            fields[f"hidden{j}"] = h
            fields[f"sq_norm{j}"] = (h * h).sum(-1, keepdim=True)
            norm = fields[f"sq_norm{j}"].sqrt().clamp_min(1e-12)
            fields[f"inv_norm{j}"] = 1.0 / norm
            fields[f"unit_sq_norm{j}"] = fields[f"sq_norm{j}"] / (norm * norm)
            if j > 0:
                fields[f"sq_norm_pair{j}"] = fields[f"sq_norm{j - 1}"] * fields[f"sq_norm{j}"]
        x = full["features"].float()
        fields["input_sq_norm"] = (x * x).sum(-1, keepdim=True)
        fields["input_dot0"] = ((x * hidden[0]).sum(-1, keepdim=True) if self._input_moments
                                else torch.full_like(x[:, :1], math.nan))  # unused then
        with torch.no_grad():
            for name, (a, c) in self._columns.items():
                self.table[b, :, a:c].copy_(fields[name])
        self._blocks[b] = (d.train_data, d.teacher)
        return b


    def _gather(self, live: np.ndarray) -> tuple[dict[str, torch.Tensor], TeacherStates]:
        """The next training batch of every live slot (from its distiller's own data order); idle
        slots get their first examples (computed on, never learnt from)."""
        bs = self.distillers[0].config.batch_size
        first = np.arange(bs)
        width = self._hand_width if self._hand is not None else self.table.shape[2]  # the columns the step reads
        if self._gather_buffer is None or self._gather_buffer.shape != (self.n, bs, width):
            self._gather_buffer = self.table.new_empty((self.n, bs, width))
        return self._batch_at(np.stack([d._next_indices() if live[i] else first
                                        for i, d in enumerate(self.distillers)]), out=self._gather_buffer)

    def _batch_at(self, idx: np.ndarray, out: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], TeacherStates]:
        """The batch of examples ``idx[i]`` of each slot i (``(N, B)`` indices), its table rows
        written into ``out`` (``(N, B, F)``) when given: a training step reuses one buffer (a
        fresh 3 MB tensor every step costs the kernel's page faults, more than the copy), whose
        field views are made once.  An ``out`` narrower than the table gets the first columns
        (the fields beyond them are ``None``: the written-out step does not read them)."""
        bs = idx.shape[1]
        flat = torch.as_tensor((idx + self._row_offsets).reshape(-1), device=self.device)
        rows = self.table.view(-1, self.table.shape[2])
        if out is not None:
            rows = rows[:, :out.shape[2]]
        if out is None:
            out = rows.index_select(0, flat).view(self.n, bs, -1)
            fields = self._fields(out)
        else:
            torch.index_select(rows, 0, flat, out=out.view(-1, rows.shape[1]))
            if self._buffer_fields is None or self._buffer_fields[0] is not out:
                self._buffer_fields = (out, self._fields(out))
            fields = self._buffer_fields[1]
        per_slot = torch.as_tensor((idx + self._slot_offsets).reshape(-1), device=self.device)
        labels = self.labels.view(-1).index_select(0, per_slot).view(self.n, bs)
        batch = {"features": fields["features"], "labels": labels}
        if self.has_mask.any():
            batch["label_mask"] = self.label_masks.view(-1).index_select(0, per_slot).view(self.n, bs)
        h = range(self._num_hidden)
        teacher = TeacherStates(fields["teacher_logits"], [fields[f"hidden{j}"] for j in h],
                                [fields[f"sq_norm{j}"] for j in h],
                                {t: fields[f"teacher_logp@{t}"] for t in self.temperatures},
                                {t: fields[f"teacher_p@{t}"] for t in self.temperatures},
                                fields["teacher_argmax"].long())
        teacher.input_moments = (fields["input_sq_norm"], fields["input_dot0"]) if self._input_moments else None
        teacher.rows = out
        return batch, teacher

    def _fields(self, table: torch.Tensor) -> dict[str, Any]:
        """Views of gathered table rows ``(N, B, F)`` by field: ``(N, B, width)``, or ``(N, B)``
        for the one-column fields (``None`` for a field beyond the rows' columns)."""
        out: dict[str, Any] = {}
        for name, (a, b) in self._columns.items():
            if b > table.shape[2]:
                out[name] = None
                continue
            out[name] = table[:, :, a] if b - a == 1 else table[:, :, a:b]
        return out
