"""ProxProp layers: autograd functions whose backward passes the ordinary BackProp signal
down (Eq. 10, old weights) and writes the ProxProp direction into ``.grad``, and the
``ProxLinear``/``ProxConv2d`` modules built on them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .config import ConvGeometry, ProxConfig
from .conv import _flat, conv2d_needs_gradient, conv2d_path, conv2d_prox_direction
from .solvers import bias_prox_direction, linear_prox_parts


# --------------------------------------------------------------------------------------------
# Autograd functions: forward as usual, backward writes the ProxProp direction
# --------------------------------------------------------------------------------------------
def _backward_config(ctx) -> ProxConfig:
    """The settings the backward uses: those of the forward, or, for a layer that was still
    a candidate for the output layer at its forward (``proxprop`` without ``output_layer``
    or ``example_input``), the layer's settings now: the model's first forward has decided
    by then, and the output layer got ``solver="gradient"`` (its explicit step, Eq. 12)."""
    layer = ctx.layer
    if layer is None:
        return ctx.cfg
    if layer._output_pending:
        raise RuntimeError(
            f"proxprop: {type(layer).__name__} ran backward before the model's output layer "
            "(kept explicit, Eq. 12) was known. It is found when a forward call of the "
            "converted model itself returns; this backward comes from a forward that did "
            "not go through that call (a submodule called directly?). Call the model once, "
            "or pass output_layer= or example_input= to proxprop()")
    return layer.prox


class ProxLinearFunction(torch.autograd.Function):
    """y = x W^T + b; backward: ordinary dJ/dx (old W), ProxProp direction for (W, b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, cfg, layer=None):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.cfg, ctx.layer = cfg, layer
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        cfg = _backward_config(ctx)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, m = weight.shape[1], weight.shape[0]
        g2 = grad_out.reshape(-1, m).to(weight.dtype)  # autocast: grad_out may be half
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = (g2 @ weight).reshape(x.shape).to(x.dtype)
        if need_w:  # the prox variable is the trainable part of (W, b)
            x2 = x.reshape(-1, n).to(weight.dtype)
            if cfg.solver == "gradient":
                grad_w = g2.T @ x2
                grad_b = g2.sum(0) if need_b else None
            else:
                grad_w, grad_b = linear_prox_parts(x2, g2, None, bool(need_b), cfg)
                grad_w = grad_w.to(weight.dtype)
                grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        elif need_b:  # frozen weight: the bias alone is the prox variable
            grad_b = bias_prox_direction(g2.sum(0), g2.shape[0], g2.shape[0], cfg)
        return grad_x, grad_w, grad_b, None, None


class ProxConv2dFunction(torch.autograd.Function):
    """Conv2d forward; backward: ordinary dJ/dx (old W), ProxProp direction for (W, b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, geo, cfg, layer=None):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geo, ctx.cfg, ctx.layer = geo, cfg, layer
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, geo.stride, geo.padding, geo.dilation, geo.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        geo: ConvGeometry = ctx.geo
        cfg = _backward_config(ctx)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        x_dtype = x.dtype
        x, grad_out = x.to(weight.dtype), grad_out.to(weight.dtype)  # autocast: may be half
        prox_w = need_w and cfg.solver != "gradient"
        path = conv2d_path(x.shape, weight.shape, bool(need_b), geo, cfg) if prox_w else None
        # the unfolded paths form dJ/dW from their own unfold: BackProp computes dJ/dx only
        native = not prox_w or conv2d_needs_gradient(path)
        grad_x, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, weight, bias_sizes, list(geo.stride), list(geo.padding),
            list(geo.dilation), False, [0, 0], geo.groups,
            [need_x, need_w and native, need_b and native])
        if prox_w:
            use_b = bool(need_b)
            gth = _flat(gw, gb if use_b else None) if native else None
            d = conv2d_prox_direction(x, gth, weight.shape, use_b, geo, cfg,
                                      grad_out=grad_out, path=path)
            kw = weight[0].numel()
            gw = d[:, :kw].reshape(weight.shape)
            if use_b:
                gb = d[:, kw].contiguous()
        elif need_b:  # frozen weight: the bias alone is the prox variable
            gb = bias_prox_direction(gb, grad_out.numel() // grad_out.shape[1], x.shape[0],
                                     cfg, conv=True)
        return (grad_x.to(x_dtype) if need_x else None, gw if need_w else None,
                gb if need_b else None, None, None, None)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
def _config(cfg: ProxConfig | None, kwargs: dict[str, Any]) -> ProxConfig:
    if cfg is not None and kwargs:
        raise ValueError("give either config= or individual prox settings, not both")
    return cfg if cfg is not None else ProxConfig(**kwargs)


class ProxLinear(nn.Linear):
    """``nn.Linear`` whose backward writes the ProxProp direction into ``.grad``.

    ``ProxLinear(in_features, out_features, bias=True, *, tau_theta=1.0, solver="cg",
    cg_iters=3, cg_tol=1e-2, cg_eps=1e-6, gram="sum", cg_block="auto", ...)``. Same parameters,
    state_dict keys and forward as ``nn.Linear``; without grad (``torch.no_grad``) it is a plain
    ``F.linear``. Inputs of any shape (..., in_features); the batch rows are all leading dims.
    """

    _output_pending = False  # a candidate for the output layer until the model's 1st forward

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, config: ProxConfig | None = None,
                 **prox: Any):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.prox = _config(config, prox)

    @classmethod
    def from_module(cls, layer: nn.Linear, config: ProxConfig) -> ProxLinear:
        """A ProxLinear sharing ``layer``'s Parameter objects (no copy, no RNG use)."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None,
                  device="meta", config=config)
        new.weight = layer.weight
        new.bias = layer.bias
        new.train(layer.training)
        return new

    def to_plain(self) -> nn.Linear:
        """The plain ``nn.Linear`` sharing this layer's Parameter objects."""
        new = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device="meta")
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return ProxLinearFunction.apply(x, self.weight, self.bias, self.prox,
                                        self if self._output_pending else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.prox}"


def _geometry(conv: nn.Conv2d) -> ConvGeometry:
    pad = conv.padding
    if conv.padding_mode != "zeros":
        pad = (0, 0)  # the non-zero padding is applied by F.pad in forward
    elif isinstance(pad, str):
        if pad == "valid":
            pad = (0, 0)
        else:  # "same" (stride 1, enforced by nn.Conv2d)
            totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            if any(t % 2 for t in totals):
                raise ValueError(
                    "ProxConv2d: padding='same' with an even effective kernel size pads "
                    f"asymmetrically (kernel {conv.kernel_size}, dilation {conv.dilation}); "
                    "accepted: integer padding or 'same' with odd effective kernels")
            pad = tuple(t // 2 for t in totals)
    return ConvGeometry(tuple(conv.stride), tuple(pad), tuple(conv.dilation), conv.groups)


class ProxConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward writes the ProxProp direction into ``.grad``.

    Same constructor as ``nn.Conv2d`` plus the keyword-only ProxProp settings of
    :class:`ProxConfig`. Supports stride, dilation, groups, integer/'valid'/'same' padding
    (symmetric) and every ``padding_mode``.
    """

    _output_pending = False  # a candidate for the output layer until the model's 1st forward

    def __init__(self, *args: Any, config: ProxConfig | None = None, **kwargs: Any):
        prox = {k: kwargs.pop(k) for k in list(kwargs) if k in ProxConfig.__dataclass_fields__}
        super().__init__(*args, **kwargs)
        self.prox = _config(config, prox)
        self.geometry = _geometry(self)

    @classmethod
    def from_module(cls, layer: nn.Conv2d, config: ProxConfig) -> ProxConv2d:
        """A ProxConv2d sharing ``layer``'s Parameter objects (no copy, no RNG use)."""
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  layer.padding_mode, device="meta", config=config)
        new.weight = layer.weight
        new.bias = layer.bias
        new.train(layer.training)
        return new

    def to_plain(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d`` sharing this layer's Parameter objects."""
        new = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                        self.padding, self.dilation, self.groups, self.bias is not None,
                        self.padding_mode, device="meta")
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        geo = self.geometry
        if not torch.is_grad_enabled():
            return F.conv2d(x, self.weight, self.bias, geo.stride, geo.padding, geo.dilation,
                            geo.groups)
        return ProxConv2dFunction.apply(x, self.weight, self.bias, geo, self.prox,
                                        self if self._output_pending else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.prox}"
