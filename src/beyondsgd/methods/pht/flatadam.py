"""The weight step's Adam on flat buffers (:class:`_FlatAdam`), bit-identical to
``torch.optim.Adam(foreach=True)``; used by :class:`~.alternating.Alternating`."""

from __future__ import annotations

import torch
from torch.optim import optimizer as _optim_mod


def _hooked(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step()`` would run step hooks (its own or global ones); unknown: True."""
    names = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
    return (any(getattr(opt, n, True) for n in names)
            or any(getattr(_optim_mod, f"_global_optimizer_{w}_hooks", True)
                   for w in ("pre", "post")))


class _FlatAdam:
    """``optimizer.step()`` of a ``torch.optim.Adam(foreach=True)`` (one parameter group, no
    weight decay, amsgrad, maximize, capturable, differentiable or fused) on few flat buffers.

    On the CPU the ``_foreach_*`` ops of Adam loop over the parameter tensors in C++, one kernel
    call per tensor and operation, after a Python walk of the group; for the small networks of
    the inner steps that overhead is most of the step. Here the parameters whose size is a
    multiple of 64 elements share one contiguous buffer each for the weights, gradients and both
    moments (the moments *are* views of it in ``optimizer.state``, so ``state_dict`` keeps its
    per-parameter form), and the other parameters stay separate tensors; the operations and
    scalars are those of ``torch.optim.adam._multi_tensor_adam``, so the step is bit-identical:
    an elementwise CPU kernel rounds each element alike except in a scalar tail of fewer than
    ``2 * Vec::size() <= 64`` elements, which no flattened element is in either way (every
    flattened size and the buffer's are multiples of 64, and no kernel is split over threads:
    one thread, or a buffer below ATen's 32768-element grain). Anything else (hooks, a state
    not yet created or loaded, other settings) runs ``optimizer.step()`` itself.
    """

    _TAIL, _GRAIN = 64, 32768

    def __init__(self, opt: torch.optim.Adam):
        self.opt = opt
        self.flat: list[torch.nn.Parameter] = []
        self.rest: list[torch.nn.Parameter] = []
        self.views: list[torch.Tensor] = []
        self.bufs: tuple[torch.Tensor, ...] | None = None
        self.m_views: list[torch.Tensor] = []
        self.v_views: list[torch.Tensor] = []
        self.one = torch.tensor(1.0)

    @staticmethod
    def eligible(opt: torch.optim.Optimizer) -> bool:
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
            return False
        g = opt.param_groups[0]
        return (g.get("foreach") is True and not g.get("fused") and not g["amsgrad"]
                and not g["maximize"] and not g["capturable"] and not g["differentiable"]
                and not g.get("decoupled_weight_decay", False) and g["weight_decay"] == 0
                and isinstance(g["lr"], float) and isinstance(g["eps"], float)
                and all(isinstance(b, float) for b in g["betas"]))

    def _build(self, params: list[torch.nn.Parameter]) -> bool:
        """(Re)build the buffers from the optimizer's state; False when the fast path does not
        apply."""
        self.bufs = None
        p0 = params[0]
        if any(p.dtype != p0.dtype or p.device != p0.device or p.device.type != "cpu"
               or p.is_complex() or not p.is_contiguous() for p in params):
            return False
        state = self.opt.state
        if any(set(state.get(p, ())) != {"step", "exp_avg", "exp_avg_sq"} for p in params):
            return False  # state not created yet: the first step creates it
        flat = [p for p in params if p.numel() % self._TAIL == 0]
        if len(flat) < 2:
            return False
        n = sum(p.numel() for p in flat)
        if n > self._GRAIN and torch.get_num_threads() > 1:
            return False
        self.flat, self.rest = flat, [p for p in params if p.numel() % self._TAIL != 0]
        bp, bg, bm, bv = (torch.empty(n, dtype=p0.dtype) for _ in range(4))

        def split(buf: torch.Tensor) -> list[torch.Tensor]:
            out, i = [], 0
            for p in flat:
                out.append(buf[i:i + p.numel()].view(p.shape))
                i += p.numel()
            return out

        self.views = split(bp)
        self.m_views, self.v_views = split(bm), split(bv)
        with torch.no_grad():
            for p, m, v in zip(flat, self.m_views, self.v_views, strict=True):
                m.copy_(state[p]["exp_avg"])
                v.copy_(state[p]["exp_avg_sq"])
                state[p]["exp_avg"], state[p]["exp_avg_sq"] = m, v
        self.bufs = (bp, bg, bm, bv)
        self.threads = torch.get_num_threads()
        return True

    def _ready(self, params: list[torch.nn.Parameter]) -> bool:
        if self.bufs is not None and self.flat and self.threads == torch.get_num_threads():
            state = self.opt.state
            if all(state[p]["exp_avg"] is m and state[p]["exp_avg_sq"] is v
                   for p, m, v in zip(self.flat, self.m_views, self.v_views, strict=True)) \
                    and len(params) == len(self.flat) + len(self.rest):
                return True
        return self._build(params)

    @torch.no_grad()
    def step(self) -> None:
        opt = self.opt
        params = opt.param_groups[0]["params"]
        if (_hooked(opt) or not self.eligible(opt) or any(p.grad is None or p.grad.is_sparse
                                                 or p.grad.dtype != p.dtype for p in params)
                or not self._ready(params)):
            opt.step()
            return
        g = opt.param_groups[0]
        lr, eps = g["lr"], g["eps"]
        beta1, beta2 = g["betas"]
        state = opt.state
        bp, bg, bm, bv = self.bufs
        torch.cat([p.reshape(-1) for p in self.flat], out=bp)
        torch.cat([p.grad.reshape(-1) for p in self.flat], out=bg)
        steps = [state[p]["step"] for p in self.flat] + [state[p]["step"] for p in self.rest]
        torch._foreach_add_(steps, self.one, alpha=1.0)
        value = steps[0].item()
        if any(s.item() != value for s in steps[1:]):
            raise RuntimeError("Adam parameters at different step counts")  # not reached
        ps = [bp, *self.rest]
        gs = [bg, *(p.grad for p in self.rest)]
        ms = [bm, *(state[p]["exp_avg"] for p in self.rest)]
        vs = [bv, *(state[p]["exp_avg_sq"] for p in self.rest)]
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        bc1 = 1 - beta1 ** value
        bc2 = 1 - beta2 ** value
        k = len(ps)
        step_size = [(lr / bc1) * -1] * k
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [bc2 ** 0.5] * k)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(ps, ms, denom, step_size)
        torch._foreach_copy_(self.flat, self.views)
