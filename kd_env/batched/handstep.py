"""One optimizer step of the batched students written out: forward, knowledge terms and
backward without autograd, for the built-in knowledge of a feature task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..knowledge import Feature, Finetune, Relation, Response, UncertaintyKD
from .states import TeacherStates

if TYPE_CHECKING:
    from .students import StudentBatch

__all__: list[str] = []


class _StepState:
    """What :meth:`_HandStep.forward` keeps of one step for the statistics and the backward."""

    __slots__ = ("values", "stats", "probs", "labels", "teacher_probs", "x", "targets", "logit_parts",
                 "moment_parts")
    values: torch.Tensor  # every term of every student, (N, K)
    stats: torch.Tensor  # the prediction statistics, (N, 5)
    probs: dict[float, torch.Tensor]  # the students' probabilities by temperature, (N, C, B)
    labels: torch.Tensor
    teacher_probs: dict[float, torch.Tensor]
    x: torch.Tensor  # the students' input, (N, B, in)
    targets: list[torch.Tensor]  # the teacher's states of the projected layers
    logit_parts: list[tuple[int, Any, dict[float, Any]]]  # (term, cross-entropy weights, KL weights by T)
    moment_parts: list[tuple[int, torch.Tensor, torch.Tensor, Any]]  # (term, dL/ds, dL/dd, layers)

    def __init__(self, **kwargs: Any):
        for name, value in kwargs.items():
            setattr(self, name, value)


class _HandStep:
    """The arithmetic of one optimizer step of N MLP students with the built-in knowledge of a
    feature task (``finetune``, ``response``, ``uncertainty_kd``, ``feature``, ``relation``),
    written out without autograd.  :meth:`forward` computes every term's value for every
    student (the observation reports each term's mean over the phase, chosen or not), the
    prediction statistics, and each term's derivatives per example; :meth:`backward` runs the
    chain rule through the students by hand for the students' weights of the terms.

    Every term is a function of the logits ``z`` and of two numbers per example and layer
    ``j``, ``s_j = ||P_j h_j||^2`` and ``d_j = (P_j h_j) . t_j`` (see :class:`_ProjectedMoments`),
    so the backward needs only ``dL/dz`` ``(N, B, C)`` and ``a_j = dL/ds_j``, ``c_j = dL/dd_j``
    ``(N, B)``:

    * ``dL/dz = A (softmax(z) - onehot(y)) + sum_T R_T (softmax(z / T) - q_T)``, with ``A`` the
      weights of the cross-entropy per example, ``R_T`` ``T`` times those of the KL terms at
      temperature ``T`` and ``q_T`` the teacher's probabilities;
    * ``dL/dh_j += 2 a_j (h_j G_j) + c_j U_j`` and ``dL/dP_j = t_j^T diag(c_j) h_j
      + 2 P_j (h_j^T diag(a_j) h_j)`` (:class:`_ProjectedMoments`'s backward);
    * then the MLP's layers backwards (ReLU masks from the activations).

    The formulas are those of :func:`~kd_env.batched.losses.batched_knowledge_loss` and of its
    autograd Functions, with the same clamps and gradient masks; values and gradients equal theirs up to float
    rounding (``tests/test_vector_env.py`` checks both).  Against autograd on those expressions
    this saves the graph (about a hundred nodes a step), and about half of the small operations:
    the per-layer arithmetic runs on the layers stacked ``(L, N, B)``, the softmaxes share one
    ``max`` (which is also the prediction), the teacher's side of ``feature`` and ``relation``
    is read from the data table, and activations and moment products are written into buffers
    reused every step.  :meth:`plan` gives ``None`` for anything else (another knowledge type,
    layers of different widths, a layer without a projection): that trains through autograd.
    """

    KINDS = (Finetune, Response, UncertaintyKD, Feature, Relation)

    def __init__(self, batch: "StudentBatch"):
        self.batch = batch
        self.knowledge = list(batch.knowledge)
        self.layers = len(batch.layer_names)
        self.width = int(batch.params[batch.layer_names[0][0]].shape[1])
        self.temperatures = [t for t in batch.temperatures if t != 1.0]
        self.uncertain = any(type(k) is UncertaintyKD for k in self.knowledge)
        #: the projection of each layer past the input (plan(): every one has one)
        self.projection_names = [name for name in batch.projection_names[1:] if name is not None]
        cols = batch._columns
        depth = self.layers + 1
        self._sq_norms = (cols["sq_norm0"][0], cols[f"sq_norm{depth - 1}"][1])  # (first, end) columns
        self._inv_norms = (cols["inv_norm0"][0], cols[f"inv_norm{depth - 1}"][1])
        self._unit_sq_norms = (cols["unit_sq_norm0"][0], cols[f"unit_sq_norm{depth - 1}"][1])
        self._pairs = (cols["sq_norm_pair1"][0], cols[f"sq_norm_pair{depth - 1}"][1]) if depth > 1 else None
        #: the teacher's width of each hidden state
        self.teacher_widths = [float(cols[f"hidden{j}"][1] - cols[f"hidden{j}"][0]) for j in range(depth)]
        self._buffers: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._log_classes: float | None = None
        self._relation_plan: tuple | None = None

    @classmethod
    def plan(cls, batch: "StudentBatch") -> "_HandStep | None":
        """The written-out step for ``batch``, or ``None`` where autograd must run it."""
        if any(type(k) not in cls.KINDS for k in batch.knowledge):
            return None
        widths = {int(batch.params[w].shape[1]) for w, _ in batch.layer_names}
        if len(widths) != 1 or batch._num_hidden != len(batch.layer_names) + 1:
            return None
        if batch.projection_names[0] is not None or any(name is None for name in batch.projection_names[1:]):
            return None
        if any(type(k) is Relation for k in batch.knowledge) and not batch._input_moments:
            return None
        return cls(batch)

    def uncertainty_rows(self) -> torch.Tensor | None:
        """Which students weight their examples by Dynamic KD's ``uncertainty`` (``(N, 1)``), or
        ``None`` when none does; another weighting is refused as the autograd path refuses it."""
        weighting = [d.example_weighting for d in self.batch.distillers]
        for name in set(weighting) - {None}:
            if name != "uncertainty":
                raise ValueError(f"the batched env supports the 'uncertainty' example weighting only, got {name!r}")
        if "uncertainty" not in weighting:
            return None
        return torch.as_tensor([x == "uncertainty" for x in weighting], device=self.batch.device).unsqueeze(1)

    def _buffers_for(self, n: int, bs: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A step's activations ``(L, N, B, d)``, moment products ``(2, L, N, B, d)`` (``h G``
        and ``t P``) and a scratch of that size, reused (a step's are read before the next step
        writes them; a fresh megabyte every step costs the kernel's page faults)."""
        key = (n, bs)
        if key not in self._buffers:
            shape = (self.layers, n, bs, self.width)
            self._buffers = {key: (like.new_empty(shape), like.new_empty((2, *shape)), like.new_empty((2, *shape)))}
        return self._buffers[key]

    def _columns(self, rows: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """Adjacent one-wide fields of the gathered rows as ``(fields, N, B)``."""
        return rows[:, :, span[0]:span[1]].permute(2, 0, 1)

    @torch.no_grad()
    def forward(self, data: dict[str, torch.Tensor], teacher: TeacherStates, rows: torch.Tensor | None) -> _StepState:
        """Every knowledge term of every student on its batch (``values`` ``(N, K)``), the
        prediction statistics (``stats`` ``(N, 5)``: cross-entropy, accuracy, KL to the teacher,
        agreement, entropy, as :meth:`StudentBatch._prediction_stats` computes them) and what
        :meth:`backward` reads."""
        b = self.batch
        p = b.params
        x = data["features"]
        n, bs = x.shape[:2]
        hidden, prods, scratch = self._buffers_for(n, bs, x)
        h = x
        for layer, (wn, bn) in enumerate(b.layer_names):
            torch.baddbmm(p[bn].unsqueeze(1), h, p[wn].transpose(1, 2), out=hidden[layer])
            h = hidden[layer].relu_()
        # the logits class-major, (N, C, B): the softmaxes reduce over a short dimension that is
        # not the innermost, which vectorises over the examples (several times faster than (N, B, C))
        z = torch.baddbmm(p["model.head.bias"].unsqueeze(2), p["model.head.weight"], h.transpose(1, 2))
        for layer in range(self.layers):
            proj = p[self.projection_names[layer]]
            torch.bmm(hidden[layer], torch.bmm(proj.transpose(1, 2), proj), out=prods[0, layer])
            torch.bmm(teacher.hidden[layer + 1], proj, out=prods[1, layer])
        sd = torch.mul(prods, hidden, out=scratch).sum(-1)  # (2, L, N, B): s_j = ||P_j h_j||^2, d_j = (P_j h_j) . t_j
        # log-softmax at every temperature from one max (which is also the prediction)
        top, predicted = z.max(1, keepdim=True)
        shifted = z - top
        exp = shifted.exp()
        total = exp.sum(1, keepdim=True)
        log_p = shifted - total.log()
        probs, log_probs = {1.0: exp.div_(total)}, {1.0: log_p}
        for t in self.temperatures:
            scaled = shifted * (1.0 / t)
            exp = scaled.exp()
            total = exp.sum(1, keepdim=True)
            log_probs[t], probs[t] = scaled.sub_(total.log()), exp.div_(total)
        predicted = predicted.squeeze(1)
        labels = data["labels"]
        ce = log_p.gather(1, labels.unsqueeze(1)).squeeze(1).neg_()
        mask = data.get("label_mask")
        entropy = (probs[1.0] * log_p).sum(1).neg_()
        u: Any = None  # Dynamic KD's u_i (N, B), where a term or the weighting reads it
        if rows is not None or self.uncertain:
            if self._log_classes is None:  # as uncertainty_weighting divides
                self._log_classes = float(torch.log(torch.tensor(float(z.shape[1]))))
            u = (entropy / self._log_classes).clamp_(0.0, 1.0)
        kl: dict[float, torch.Tensor] = {}
        teacher_probs = {t: teacher.softmax(t).transpose(1, 2) for t in probs}  # (N, C, B) views

        def kl_at(t: float) -> torch.Tensor:  # KL(q_T || p_T) per example
            if t not in kl:
                kl[t] = (teacher_probs[t] * (teacher.log_softmax(t).transpose(1, 2) - log_probs[t])).sum(1)
            return kl[t]

        # the prediction statistics
        hit = (predicted == labels).float()
        agree = (predicted == teacher.argmax()).float()
        if mask is None:
            stats = torch.stack([ce, hit, kl_at(1.0), agree, entropy], -1).mean(1)
            ce_weight = None  # 1 / B for every example
        else:
            count = mask.sum(1, keepdim=True)
            ce_weight = mask / count.clamp_min(1)
            labelled = torch.stack([ce, hit], -1).mul_(ce_weight.unsqueeze(-1)).sum(1)
            stats = torch.cat([labelled, torch.stack([kl_at(1.0), agree, entropy], -1).mean(1)], 1)

        values: list[torch.Tensor] = []
        logit_parts: list[tuple[int, Any, dict[float, Any]]] = []  # (term, cross-entropy weights, KL weights by T)
        moment_parts: list[tuple[int, torch.Tensor, torch.Tensor, Any]] = []  # (term, dL/ds, dL/dd, layers)
        rows_data = teacher.rows
        assert rows_data is not None  # set by the batch that gathered the rows
        for k, kn in enumerate(self.knowledge):  # (plan(): exactly these types)
            if isinstance(kn, Finetune):
                if rows is None:
                    weights = ce_weight if ce_weight is not None else 1.0 / bs
                else:
                    extra = torch.where(rows, 1.0 - u, torch.ones_like(u))
                    weights = extra * (ce_weight if ce_weight is not None else 1.0 / bs)
                values.append(ce.mean(1) if isinstance(weights, float) else (ce * weights).sum(1))
                logit_parts.append((k, weights, {}))
            elif isinstance(kn, Response):
                t = kn.temperature
                per = kl_at(t)
                if rows is None:
                    values.append(per.mean(1) * (t * t))
                    logit_parts.append((k, None, {t: t / bs}))
                else:
                    weights = torch.where(rows, u, torch.ones_like(u)) * (1.0 / bs)
                    values.append((per * weights).sum(1) * (t * t))
                    logit_parts.append((k, None, {t: weights * t}))
            elif isinstance(kn, UncertaintyKD):
                t = kn.response.temperature
                ft = (1.0 - u) * (ce_weight if ce_weight is not None else 1.0 / bs)
                resp = u * (1.0 / bs)
                values.append((ce * ft).sum(1) + (kl_at(t) * resp).sum(1) * (t * t))
                logit_parts.append((k, ft, {t: resp * t}))
            elif isinstance(kn, Feature):
                value, ds, dd, which = self._feature(kn, sd, rows_data, teacher, bs)
                values.append(value)
                moment_parts.append((k, ds, dd, which))
            else:
                value, ds, dd = self._relation(sd, rows_data, teacher, bs)
                values.append(value)
                moment_parts.append((k, ds, dd, slice(None)))
        return _StepState(values=torch.stack(values, 1), stats=stats, probs=probs, labels=labels,
                          teacher_probs=teacher_probs, x=x,
                          targets=[teacher.hidden[j + 1] for j in range(self.layers)],
                          logit_parts=logit_parts, moment_parts=moment_parts)

    def _feature(self, kn: Feature, sd: torch.Tensor, rows: torch.Tensor, teacher: TeacherStates,
                 bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """``feature``'s value ``(N,)`` and its derivatives by ``s_j`` and ``d_j`` per example,
        ``(J, N, B)``, on the layers it reads (``which``: their positions in ``0..L-1``)."""
        layers = kn._indices(self.layers)
        which: Any = slice(None) if layers == list(range(1, self.layers + 1)) else [j - 1 for j in layers]
        s, d = sd[0, which], sd[1, which]
        scale = 1.0 / (len(layers) * bs)
        if kn.tokens == "all":  # mean over (B, H) of (P h - t)^2
            q = self._columns(rows, self._sq_norms)[1:][which]
            widths = torch.tensor([self.teacher_widths[j] for j in layers], device=s.device)
            value = (torch.add(s, q).sub_(d, alpha=2.0).mean(2) / widths.unsqueeze(1)).mean(0)
            ds = (scale / widths).view(-1, 1, 1).expand_as(s)
            return value, ds, ds * -2.0, which
        # _PooledFeature: f = s / ns^2 + q / nt^2 - 2 d / (ns nt), ns = max(sqrt(s), 1e-12)
        inv_nt = self._columns(rows, self._inv_norms)[1:][which]
        unit_t = self._columns(rows, self._unit_sq_norms)[1:][which]
        root = s.sqrt()
        inv_ns = root.clamp_min(1e-12).reciprocal_()
        inv_ns2 = inv_ns * inv_ns
        inv_nn = inv_ns.mul_(inv_nt)  # 1 / (ns nt)
        unit_s = s * inv_ns2
        dn = d * inv_nn
        value = torch.add(unit_s, unit_t).sub_(dn, alpha=2.0).mean(2).mean(0)
        # df/ds = 1 / ns^2 + [sqrt(s) >= 1e-12] (d / (ns nt) - s / ns^2) / ns^2
        ds = dn.sub_(unit_s).mul_(inv_ns2).mul_(root >= 1e-12).add_(inv_ns2).mul_(scale)
        return value, ds, inv_nn.mul_(-2.0 * scale), which

    def _relation(self, sd: torch.Tensor, rows: torch.Tensor, teacher: TeacherStates,
                  bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``relation``'s value ``(N,)`` and its derivatives by ``s_j``, ``d_j`` (``(L, N, B)``):
        :class:`_RelationProduct` on the pairs ``(j - 1, j)``, the input's moments and the
        teacher's products of squared norms read from the data table."""
        s0, d0 = teacher.input_moments  # type: ignore[misc]  # plan(): relation needs them in the table
        s = torch.cat([s0.unsqueeze(0), sd[0]])  # (D, N, B)
        d = torch.cat([d0.unsqueeze(0), sd[1]])
        value = (s[:-1] * s[1:]).sub_(d[:-1] * d[1:], alpha=2.0).add_(self._columns(rows, self._pairs))  # type: ignore[arg-type]  # (L, N, B); a relation has pairs
        if self._relation_plan is None:
            widths = self.teacher_widths
            pairs = torch.tensor([a * c for a, c in zip(widths[:-1], widths[1:])], device=s.device)
            self._relation_plan = (pairs.view(-1, 1), (1.0 / (pairs * (self.layers * bs))).view(-1, 1, 1))
        pairs, grad_scale = self._relation_plan
        g = (value >= 0).float().mul_(grad_scale)
        rel = (value.clamp_min_(0).mean(2) / pairs).mean(0)
        ds, dd = g * s[:-1], (g * d[:-1]).mul_(-2.0)  # layer j as the second of pair (j - 1, j)
        if self.layers > 1:  # layer j as the first of pair (j, j + 1)
            ds[:-1].addcmul_(g[1:], s[2:])
            dd[:-1].addcmul_(g[1:], d[2:], value=-2.0)
        return rel, ds, dd

    @torch.no_grad()
    def backward(self, st: _StepState, coef: torch.Tensor) -> None:
        """The gradient of ``sum_i sum_k coef[i, k] L_ik`` by every student's parameters, written
        into :attr:`StudentBatch.grad_flat` (``coef`` ``(N, K)``: each student's weights of the
        terms, zero for a student that does not learn in this step)."""
        b = self.batch
        p = b.params
        x = st.x
        n, bs = x.shape[:2]
        hidden, prods, _ = self._buffers_for(n, bs, x)
        top = self.layers - 1
        ce_coef = None
        kl_coef: dict[float, Any] = {}
        for k, weights, by_t in st.logit_parts:
            c = coef[:, k:k + 1]
            if weights is not None:
                ce_coef = weights * c if ce_coef is None else ce_coef + weights * c
            for t, r in by_t.items():
                kl_coef[t] = r * c if t not in kl_coef else kl_coef[t] + r * c
        a: Any = None  # dL/ds_j and dL/dd_j (L, N, B), when a term reads the moments
        dd: Any = None
        for k, ds_k, dd_k, which in st.moment_parts:
            c = coef[:, k:k + 1]
            if a is None and which == slice(None):
                a, dd = ds_k * c, dd_k * c
                continue
            if a is None:
                a, dd = hidden.new_zeros(hidden.shape[:3]), hidden.new_zeros(hidden.shape[:3])
            if which == slice(None):
                a.addcmul_(ds_k, c)
                dd.addcmul_(dd_k, c)
            else:
                a[which] += ds_k * c
                dd[which] += dd_k * c
        extra = None
        if a is not None:  # dL/dh_j from the moments: 2 a_j (h_j G_j) + c_j U_j
            extra = torch.mul(prods[1], dd.unsqueeze(-1)).addcmul_(prods[0], a.unsqueeze(-1), value=2.0)
        grads: dict[str, torch.Tensor] = {}
        head_w, head_b = p["model.head.weight"], p["model.head.bias"]
        gz = None
        if ce_coef is not None:  # dL/dz class-major, (N, C, B), as the logits
            ce_coef = ce_coef.expand(n, bs).unsqueeze(1)
            gz = st.probs[1.0] * ce_coef
            gz.scatter_add_(1, st.labels.unsqueeze(1), ce_coef.neg())
        for t, r in kl_coef.items():
            diff = st.probs[t] - st.teacher_probs[t]
            r = r.unsqueeze(1)
            gz = diff.mul_(r) if gz is None else gz.addcmul_(diff, r)
        if gz is not None:
            grads["model.head.weight"] = torch.bmm(gz, hidden[top])
            grads["model.head.bias"] = gz.sum(2)
            dz = gz.transpose(1, 2)
            dh = torch.bmm(dz, head_w) if extra is None else extra[top].baddbmm_(dz, head_w)
        else:
            grads["model.head.weight"], grads["model.head.bias"] = torch.zeros_like(head_w), torch.zeros_like(head_b)
            dh = extra[top] if extra is not None else torch.zeros_like(hidden[top])
        for layer in range(top, -1, -1):
            wn, bn = b.layer_names[layer]
            pre = torch.ops.aten.threshold_backward(dh, hidden[layer], 0.0)
            grads[wn] = torch.bmm(pre.transpose(1, 2), x if layer == 0 else hidden[layer - 1])
            grads[bn] = pre.sum(1)
            if layer > 0:
                dh = torch.bmm(pre, p[wn]) if extra is None else extra[layer - 1].baddbmm_(pre, p[wn])
        if a is not None:
            ah = torch.mul(hidden, a.unsqueeze(-1), out=prods[0])  # the products are read: reuse their buffer
            ch = torch.mul(hidden, dd.unsqueeze(-1), out=prods[1])
        for layer in range(self.layers):
            name = self.projection_names[layer]
            if a is None:
                grads[name] = torch.zeros_like(p[name])
                continue
            h = hidden[layer]
            d_gram = torch.bmm(h.transpose(1, 2), ah[layer])
            grads[name] = torch.bmm(st.targets[layer].transpose(1, 2), ch[layer]).baddbmm_(p[name], d_gram, alpha=2.0)
        torch.cat([grads[name].reshape(n, -1) for name in p], 1, out=b.grad_flat)
