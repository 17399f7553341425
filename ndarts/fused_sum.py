"""The fused noisy mixed-op sum as a PyTorch op: ``torch.ops.ndarts.noisy_mixed_sum``.

A torch custom op (opaque to torch.compile, with a fake implementation and registered autograd)
whose implementation runs the Triton kernels (``ndarts_kernels``) or the reference below. Its
seed is an int64 [1] tensor drawn on the operands' device with torch's RNG, so
``torch.manual_seed`` governs the noise and a captured CUDA graph draws new noise each replay.

The backward regenerates ε from the saved seed; it is never stored. The noise is a constant for
autograd: no gradient flows through std(o_skip) or ε.

The reference (used on CPU, and on CUDA when the torch backend is forced) draws ε with a
torch.Generator seeded from the same seed tensor. It is a different generator from Triton's
Philox stream: the two backends give the same distribution, not the same numbers.
"""
from __future__ import annotations

import numbers

import torch

from .backend import TRITON_DTYPES, resolve_backend
from .grad_use import grads_used
from .noise import (
    NO_NOISE,
    NoiseConfig,
    accumulation_dtype,
    apply_noise_with_eps,
    operand_std,
    sample_eps,
    scaled_params,
    split_scale,
)

_KIND_NAMES = {1: "gaussian", 2: "uniform"}
SEED_HIGH = 2**31 - 1


# ----------------------------------------------------------------------------- reference math
def reference_eps(seed: torch.Tensor, shape, kind: int, device) -> torch.Tensor:
    """The reference backend's ε for a seed (host sync: reads the seed)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed.reshape(-1)[0].item()))
    return sample_eps(shape, _KIND_NAMES[kind], like=torch.empty(0, device=device), generator=gen)


def reference_sum_with_eps(operands, weights, skip_index, multiplicative, lam, mean, eps, std=None):
    """y = Σ w_k·o_k with the noisy skip operand for a given ε (None: no noise), fp32 accumulation
    (float64 for float64 operands).

    Plain differentiable torch: autograd through it is the reference gradient, because
    apply_noise_with_eps detaches the noise. std: the skip operand's std when known (None: computed).
    """
    acc = None
    acc_dtype = accumulation_dtype(operands[0].dtype)
    w = weights.to(acc_dtype).unbind(0)  # one stack in backward, not a zero-filled gradient per operand
    for k, o in enumerate(operands):
        o32 = o.to(acc_dtype)
        if eps is not None and k == skip_index:
            o32 = apply_noise_with_eps(o32, eps.reshape(o.shape), multiplicative, lam, mean, std)
        term = w[k] * o32
        acc = term if acc is None else acc + term
    return acc.to(operands[0].dtype)


def _noisy(kind, skip_index, num):
    return kind != 0 and 0 <= skip_index < num


def _reference_forward(operands, weights, seed, skip_index, kind, multiplicative, lam, mean, scale=None):
    first = operands[0]
    lam, mean = scaled_params(lam, mean, multiplicative, scale)
    if not _noisy(kind, skip_index, len(operands)):
        std = torch.zeros((1,), device=first.device, dtype=torch.float32)
        y = reference_sum_with_eps(operands, weights, -1, False, 0.0, 0.0, None)
        return _in_layout(y, _result_strides(first)), std
    eps = reference_eps(seed, first.shape, kind, first.device)
    skip = operands[skip_index]
    std = operand_std(skip).float().reshape(1) if not multiplicative else skip.new_zeros((1,), dtype=torch.float32)
    y = reference_sum_with_eps(operands, weights, skip_index, multiplicative, lam, mean, eps)
    return _in_layout(y, _result_strides(first)), std


def _reference_backward(grad, operands, weights, seed, std, skip_index, kind, multiplicative, lam, mean, scale=None):
    acc_dtype = accumulation_dtype(operands[0].dtype)
    lam, mean = scaled_params(lam, mean, multiplicative, scale)
    g = grad.to(acc_dtype)
    noisy = _noisy(kind, skip_index, len(operands))
    eps = reference_eps(seed, operands[0].shape, kind, g.device) if noisy else None
    grads, dw = [], []
    strides = _result_strides(operands[0])  # every gradient in the kernels' layout of the results
    for k, o in enumerate(operands):
        o32 = o.to(acc_dtype)
        w = weights[k].to(acc_dtype)
        d = w * g
        if noisy and k == skip_index:
            if multiplicative:
                factor = mean + lam * eps
                o32 = o32 * factor
                d = d * factor
            else:
                o32 = o32 + (mean + lam * std.reshape(()) * eps)
        grads.append(_in_layout(d.to(o.dtype), strides))
        dw.append((g * o32).sum())
    return grads, torch.stack(dw)


# ----------------------------------------------------------------------------- the results' layout
def _result_strides(first: torch.Tensor) -> tuple[int, ...]:
    """The strides of the op's results (y, and every operand's gradient) for first operand `first`:
    the Triton kernels compute in first's layout where it is dense (contiguous, or channels_last for
    a 4-D tensor), else in the contiguous one (ndarts_kernels' ``_layout``). Both backends and the
    fake implementations give their results these strides, as torch.compile's inductor checks."""
    if first.is_contiguous() or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)):
        return tuple(first.stride())
    strides, step = [], 1
    for size in reversed(first.shape):  # torch's contiguous strides (a dim of size 0 counts as 1)
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _result_like(first: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(first.shape, _result_strides(first), dtype=first.dtype, device=first.device)


def _in_layout(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """t with the given strides (_result_strides of the first operand), copied only when its own differ."""
    if tuple(t.stride()) == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


# ----------------------------------------------------------------------------- the custom op
@torch.library.custom_op("ndarts::noisy_mixed_sum", mutates_args=())
def _noisy_mixed_sum_op(
    operands: list[torch.Tensor],
    weights: torch.Tensor,
    seed: torch.Tensor,
    skip_index: int,
    kind: int,
    multiplicative: bool,
    lam: float,
    mean: float,
    use_triton: bool,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scale: None (lam, mean are λ_eff, μ_eff) or the decay scale on the device (noise.split_scale).
    It has no default: the registered backward returns one entry per argument, and PyTorch 2.11
    (the GPU machines' image) hands setup_context the defaults too while it checks the backward's
    return against the arguments as passed; every argument always passed keeps the two equal."""
    if use_triton:
        import ndarts_kernels

        return ndarts_kernels.noisy_mixed_sum_forward(
            operands, weights, seed, skip_index, kind, multiplicative, lam, mean, scale=scale)
    return _reference_forward(operands, weights, seed, skip_index, kind, multiplicative, lam, mean, scale)


@_noisy_mixed_sum_op.register_fake
def _(operands, weights, seed, skip_index, kind, multiplicative, lam, mean, use_triton, scale):
    first = operands[0]
    return _result_like(first), first.new_empty((1,), dtype=torch.float32)


@torch.library.custom_op("ndarts::noisy_mixed_sum_backward", mutates_args=())
def _noisy_mixed_sum_backward_op(
    grad: torch.Tensor,
    operands: list[torch.Tensor],
    weights: torch.Tensor,
    seed: torch.Tensor,
    std: torch.Tensor,
    skip_index: int,
    kind: int,
    multiplicative: bool,
    lam: float,
    mean: float,
    use_triton: bool,
    scale: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Operand gradients followed by dW (fp32) as the last element."""
    if use_triton:
        import ndarts_kernels

        grads, dw = ndarts_kernels.noisy_mixed_sum_backward(
            grad, operands, weights, seed, std, skip_index, kind, multiplicative, lam, mean, scale=scale)
    else:
        grads, dw = _reference_backward(grad, operands, weights, seed, std, skip_index, kind, multiplicative, lam,
                                        mean, scale)
    return [*grads, dw]


@_noisy_mixed_sum_backward_op.register_fake
def _(grad, operands, weights, seed, std, skip_index, kind, multiplicative, lam, mean, use_triton, scale=None):
    return [_result_like(operands[0]) for _ in operands] + [weights.new_empty(weights.shape, dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    operands, weights, seed, skip_index, kind, multiplicative, lam, mean, use_triton, scale = inputs
    _, std = output
    ctx.save_for_backward(weights, seed, std, *operands)
    ctx.params = (skip_index, kind, multiplicative, lam, mean, use_triton)
    ctx.scale = scale


def _backward(ctx, grad_y, grad_std):
    weights, seed, std, *operands = ctx.saved_tensors
    out = _noisy_mixed_sum_backward_op(grad_y, operands, weights, seed, std, *ctx.params, ctx.scale)
    # operands, weights, then none for seed, skip_index, kind, multiplicative, lam, mean, use_triton, scale
    return list(out[:-1]), out[-1].to(weights.dtype), *(None,) * 8


_noisy_mixed_sum_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- eager fast path
class _TritonSum(torch.autograd.Function):
    """The Triton kernels under plain autograd, for eager calls: the same kernels and saved
    tensors as the custom op, without its dispatch (the custom op's Python path costs more host
    time than the kernels take on a GPU). torch.compile uses the custom op instead."""

    @staticmethod
    def forward(ctx, weights, seed, params, known_std, scale, *operands):
        import ndarts_kernels

        y, std = ndarts_kernels.noisy_mixed_sum_forward(list(operands), weights, seed, *params, std=known_std,
                                                        scale=scale)
        ctx.save_for_backward(weights, seed, std, *operands)
        ctx.params, ctx.scale = params, scale
        return y

    @staticmethod
    def backward(ctx, grad_y):
        import ndarts_kernels

        weights, seed, std, *operands = ctx.saved_tensors
        # a pass that uses no α gradient (a w step) reads no operand: only the gradient in, theirs out
        need_w = grads_used(ctx, 1)[0]
        with torch.no_grad():
            grads, dw = ndarts_kernels.noisy_mixed_sum_backward(grad_y, operands, weights, seed, std, *ctx.params,
                                                                weight_grad=need_w, scale=ctx.scale)
        out = (dw.to(weights.dtype) if need_w else None, None, None, None, None, *grads)
        if torch.is_grad_enabled():  # create_graph=True: differentiating these gradients is the error
            out = _no_second_derivative(out, (grad_y, weights, *operands))
        return out


class _SecondDerivative(torch.autograd.Function):
    """The gradients _TritonSum's backward computed, under create_graph=True, tied to what they
    depend on (the incoming gradient, the weights, the operands): a second derivative through them
    reaches this backward, a clear error (@once_differentiable's names no op, and where the incoming
    gradient needs no graph, a loss linear in the sum, it silently dropped the op's part)."""

    @staticmethod
    def forward(ctx, count, *tensors):
        return tuple(g.view_as(g) for g in tensors[:count])  # the rest: inputs only, for the graph's edges

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("noisy_mixed_sum: the Triton backend has no second derivative (its backward is a "
                           "Triton kernel); for a double backward (create_graph=True) use backend='torch'")


def _no_second_derivative(out: tuple, depends_on: tuple) -> tuple:
    if not any(t.requires_grad for t in depends_on):
        return out
    present = [i for i, g in enumerate(out) if g is not None]
    tied = _SecondDerivative.apply(len(present), *(out[i] for i in present), *depends_on)
    out = list(out)
    for i, g in zip(present, tied):
        out[i] = g
    return tuple(out)


# ----------------------------------------------------------------------------- public functional form
def _validate_noise(noise, operands, skip_index, training):
    if not isinstance(noise, NoiseConfig):
        raise TypeError(f"noisy_mixed_sum: noise must be a NoiseConfig, got {type(noise).__name__} {noise!r}")
    if (training and skip_index is not None and noise.enabled and noise.mixture == "additive"
            and operands[skip_index].numel() < 2):
        raise ValueError(f"noisy_mixed_sum: the skip operand has {operands[skip_index].numel()} element(s); the "
                         "noise's σ = λ·std needs the unbiased std of at least 2 elements")


def _validate(operands, weights, skip_index):
    if not isinstance(operands, (list, tuple)) or not operands:
        raise ValueError("noisy_mixed_sum: operands must be a non-empty list of tensors")
    first = operands[0]
    for i, o in enumerate(operands):
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"noisy_mixed_sum: operand {i} is a {type(o).__name__}, not a tensor")
        if o.shape != first.shape:
            raise ValueError(f"noisy_mixed_sum: operand {i} has shape {tuple(o.shape)}, operand 0 has {tuple(first.shape)}")
        if o.dtype != first.dtype:
            raise ValueError(f"noisy_mixed_sum: operand {i} has dtype {o.dtype}, operand 0 has {first.dtype}")
        if o.device != first.device:
            raise ValueError(f"noisy_mixed_sum: operand {i} is on {o.device}, operand 0 on {first.device}")
    if not first.is_floating_point():
        raise TypeError(f"noisy_mixed_sum: operands must be floating point, got {first.dtype}")
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.shape[0] != len(operands):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"noisy_mixed_sum: weights must be a 1-D tensor of length {len(operands)} "
                         f"(one per operand), got {shape}")
    if not weights.is_floating_point():
        raise TypeError(f"noisy_mixed_sum: weights must be floating point, got {weights.dtype}")
    if weights.device != first.device:
        raise ValueError(f"noisy_mixed_sum: weights are on {weights.device}, operands on {first.device}")
    if skip_index is not None and (isinstance(skip_index, bool) or not isinstance(skip_index, numbers.Integral)):
        raise TypeError(f"noisy_mixed_sum: skip_index must be an int or None, got {skip_index!r}")
    if skip_index is not None and not (0 <= skip_index < len(operands)):
        raise ValueError(f"noisy_mixed_sum: skip_index {skip_index} is out of range for {len(operands)} operands")


def promote_operands(operands) -> list:
    """The operands in their promoted dtype (copies only of those that differ). Ops of one edge can
    disagree under autocast (a BatchNorm output in fp32 beside a bf16 pool): promote as the
    reference's `w * o` sum would, instead of refusing."""
    dtype = operands[0].dtype
    for o in operands[1:]:
        dtype = torch.promote_types(dtype, o.dtype)
    return [o if o.dtype == dtype else o.to(dtype) for o in operands]


def skip_operand_std(x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """std(x) exactly as noisy_mixed_sum computes it for a skip operand x on `backend` (the Triton
    kernels' Chan merge, an fp32 [1] tensor; or the reference's torch.std, 0-dim), for callers that
    pass it to several sums of the same operand (``std=``, which takes either): a node's identity
    skip is the same tensor on every edge leaving it. NaN for fewer than two elements, as torch.std."""
    if resolve_backend(backend, x.device) == "triton" and x.dtype in TRITON_DTYPES:
        import ndarts_kernels

        return ndarts_kernels.skip_std(x.detach())
    return operand_std(x)


def skip_operand_stds(xs, backend: str | None = None) -> list:
    """[skip_operand_std(x, backend) for x in xs], the Triton ones in one pair of launches for all
    (ndarts_kernels.skip_stds): the skip operands of a reduction input's stride-2 edges."""
    first = xs[0]
    if (resolve_backend(backend, first.device) == "triton" and len(xs) > 1 and first.dtype in TRITON_DTYPES
            and all(x.dtype == first.dtype and x.numel() == first.numel() for x in xs)):
        import ndarts_kernels

        return list(ndarts_kernels.skip_stds([x.detach() for x in xs]).split(1))
    return [skip_operand_std(x, backend) for x in xs]


def draw_seeds(device, count: int = 1) -> torch.Tensor:
    """int64 [count] Philox seeds drawn on `device` with torch's RNG (graph-safe on CUDA)."""
    return torch.randint(0, SEED_HIGH, (count,), device=device, dtype=torch.int64)


def draw_seed(device) -> torch.Tensor:
    """An int64 [1] Philox seed (draw_seeds)."""
    return draw_seeds(device)


def noise_arguments(noise: NoiseConfig, noisy: bool, scale, seed, device):
    """What a fused sum's kernels (or its reference) take of the noise: (kind, multiplicative, λ, μ,
    the device scale or None, seed). λ and μ carry a host scale; a device scale (split_scale) is
    read by the kernels. seed None: a fresh draw_seed where the sum is noisy, a zero seed where not."""
    if seed is not None and (not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1
                             or seed.device != device):
        got = (f"{seed.dtype} tensor of {seed.numel()} elements on {seed.device}" if isinstance(seed, torch.Tensor)
               else type(seed).__name__)
        raise ValueError(f"seed must be a one-element int64 tensor on the operands' device {device} "
                         f"(draw_seed(device)), got a {got}")
    host_scale, device_scale = split_scale(scale, device)
    kind, mult, lam, mean = noise.kernel_params(host_scale) if noisy else (0, False, 0.0, 0.0)
    if seed is None:
        seed = draw_seed(device) if noisy else torch.zeros((1,), device=device, dtype=torch.int64)
    return kind, mult, lam, mean, device_scale if noisy else None, seed


class SeedBlock:
    """The Philox seeds of the fused sums of one forward pass, drawn in one kernel.

    Drawing a seed per mixed sum is one tiny kernel per edge and pass (224 per search step of
    SPEC §6's supernet: 2 % of the graph step's kernels, benchmarks/count_kernels.py); SearchNetwork
    draws `size` seeds once per training forward and each sum takes the next one, a view. The
    seeds come from torch's RNG on the device as before: ``torch.manual_seed`` governs them and a
    CUDA graph draws a new block on every replay. When a forward takes more than `size` seeds, a
    new block is drawn.
    """

    def __init__(self, device, size: int):
        if size < 1:
            raise ValueError(f"SeedBlock: size must be ≥ 1, got {size}")
        self.size = size
        self.seeds = draw_seeds(device, size)
        self._next = 0

    def take(self) -> torch.Tensor:
        """The next seed, an int64 [1] view of the block."""
        if self._next == self.size:
            self.seeds = draw_seeds(self.seeds.device, self.size)
            self._next = 0
        self._next += 1
        return self.seeds[self._next - 1:self._next]


def noisy_mixed_sum(
    operands,
    weights: torch.Tensor,
    skip_index: int | None = None,
    noise: NoiseConfig = NO_NOISE,
    *,
    scale: float | torch.Tensor = 1.0,
    training: bool = True,
    backend: str | None = None,
    seed: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_k weights[k]·operands[k], with NoisyDARTS noise on operands[skip_index] when training.

    The functional form of the fused mixed op, for code bases that build their ops themselves:
    ``y = noisy_mixed_sum([op(x) for op in ops], weights, skip_index=3, noise=NoiseConfig())``.
    Operands share shape, dtype (fp32/bf16/fp16) and device; any shape, contiguous or
    channels_last. With additive noise in training, NaN/Inf in the skip operand make its std NaN
    and so the whole output NaN (never a silently finite result); with multiplicative noise or none
    they stay in the elements they reach. The search loop stops on a non-finite loss.
    seed: an int64 [1] tensor on the operands' device (draw_seed) that fixes the noise (None: a
    fresh draw from torch's RNG, so torch.manual_seed governs it).
    std: the skip operand's std from ``skip_operand_std(operands[skip_index], backend)``, when the
    caller shares one skip operand among several sums (None: computed here, as it would be).
    scale: the noise's decay scale (NoiseConfig.scale_at): a number, or a one-element float32 tensor
    on the operands' device that the kernels read when they run (a CUDA graph captured once then
    follows the values filled into it).
    """
    _validate(operands, weights, skip_index)
    _validate_noise(noise, operands, skip_index, training)
    if std is not None and (not isinstance(std, torch.Tensor) or std.numel() != 1 or std.device != operands[0].device):
        raise ValueError("noisy_mixed_sum: std must be a one-element tensor on the operands' device "
                         "(from skip_operand_std)")
    device = operands[0].device
    noisy = training and skip_index is not None and noise.enabled
    kind, mult, lam, mean, device_scale, seed = noise_arguments(noise, noisy, scale, seed, device)
    use_triton = resolve_backend(backend, device) == "triton"
    if use_triton and operands[0].dtype not in TRITON_DTYPES:
        raise TypeError(f"noisy_mixed_sum: the Triton backend takes float32, float16 or bfloat16 operands, "
                        f"got {operands[0].dtype} (backend='torch' takes any floating dtype)")
    skip = -1 if skip_index is None else int(skip_index)
    if not use_triton and not torch.compiler.is_compiling():
        # eager reference: plain autograd through the same math (the custom op's Python autograd
        # costs ~0.45 ms more per mixed op on a CPU: 1.10 vs 0.65 ms at 64×8×8×8, fwd+bwd)
        eps = reference_eps(seed, operands[0].shape, kind, device) if _noisy(kind, skip, len(operands)) else None
        lam, mean = scaled_params(float(lam), float(mean), mult, device_scale)
        return reference_sum_with_eps(list(operands), weights, skip, mult, lam, mean, eps, std)
    if use_triton and not torch.compiler.is_compiling():
        known = std.reshape(1).float() if std is not None and not mult else None
        return _TritonSum.apply(weights, seed, (skip, kind, mult, float(lam), float(mean)), known, device_scale,
                                *operands)
    y, _ = torch.ops.ndarts.noisy_mixed_sum(list(operands), weights, seed, skip, kind, mult, float(lam),
                                            float(mean), use_triton, device_scale)
    return y
