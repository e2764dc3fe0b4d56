"""Variable-length ("segmented") attention behind one interface, with the log-sum-exp when asked.

A *segmented problem* is a packed list of independent attention problems: query rows ``q[cu_q[i]:cu_q[i+1]]``
attend to key rows ``k[cu_k[i]:cu_k[i+1]]``. Every MoGA branch (the router's groups, the spatio-temporal windows,
the frames, and the intersections that ``combine="union"`` needs) is one such problem.

Backends (``python -m moga_core info`` prints which exist here and which ``auto`` picks):

- ``flash_attn``   – ``flash_attn.flash_attn_varlen_func`` (optional package; CUDA, fp16/bf16).
- ``cudnn_varlen`` – cuDNN's ragged SDPA through ``aten::_cudnn_attention_forward`` (CUDA, fp16/bf16, torch that
  has the op; opt-in until proven on the user's torch, see ``cudnn_varlen_works``).
- ``torch_varlen`` – ``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.9, CUDA, fp16/bf16).
- ``sdpa``         – equal-size segments as one batched ``scaled_dot_product_attention`` call (any device).
- ``loop``         – one SDPA call per segment; works on any torch >= 2.1 and on CPU, any dtype.

Shapes: ``q`` (Lq, H, D), ``k``/``v`` (Lk, H, D), ``cu_q``/``cu_k`` int32 (S+1,) on the tensors' device.
Output (Lq, H, D) in q's dtype; log-sum-exp (Lq, H) float32 (natural log, scaled scores).
"""

from __future__ import annotations

import importlib.util
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------
# detection (at import; never required)

try:  # optional accelerator
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func  # type: ignore
    else:
        _flash_attn_varlen_func = None
except Exception:  # a broken install must not break the pack
    _flash_attn_varlen_func = None

try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn  # type: ignore

    try:
        from torch.nn.attention.varlen import AuxRequest as _AuxRequest  # type: ignore
    except Exception:
        _AuxRequest = None
except Exception:
    _torch_varlen_attn = None
    _AuxRequest = None

_HAS_CUDNN_VARLEN_OP = hasattr(torch.ops.aten, "_cudnn_attention_forward")
_HAS_CPU_FLASH_OP = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
_HAS_CUDNN_SDPA_OP = hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention")
_HAS_EFFICIENT_OP = hasattr(torch.ops.aten, "_scaled_dot_product_efficient_attention")

_cudnn_varlen_state: dict = {}


@functools.lru_cache(maxsize=None)
def _flex_importable() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
        import triton  # noqa: F401
    except Exception:  # torch without FlexAttention, or no Triton (some Windows installs)
        return False
    return True


def flex_available(device: torch.device | str) -> bool:
    """True when the compiled FlexAttention kernel (`blocksparse`) can run on ``device``: CUDA, torch's
    FlexAttention and Triton."""
    return torch.device(device).type == "cuda" and _flex_importable()


def available_backends() -> dict[str, bool]:
    """Which backends can run at all in this process (device-independent view)."""
    cuda = torch.cuda.is_available()
    return {
        "flex": cuda and _flex_importable(),
        "flash_attn": _flash_attn_varlen_func is not None and cuda,
        "cudnn_varlen": _HAS_CUDNN_VARLEN_OP and cuda,
        "torch_varlen": _torch_varlen_attn is not None and cuda,
        "sdpa": True,
        "loop": True,
    }


def cudnn_varlen_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once per (device, dtype) that cuDNN ragged attention runs and matches a reference.

    The op is private in torch; a build whose cuDNN lacks ragged support raises or returns garbage, so ``auto``
    only uses it after this self-test passed.
    """
    key = (str(device), dtype)
    if key in _cudnn_varlen_state:
        return _cudnn_varlen_state[key]
    ok = False
    if _HAS_CUDNN_VARLEN_OP and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            gen = torch.Generator(device="cpu").manual_seed(0)
            sizes = [37, 128, 5, 64]
            total = sum(sizes)
            q, k, v = (torch.randn(total, 4, 128, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
            cu = torch.tensor([0] + list(torch.tensor(sizes).cumsum(0)), dtype=torch.int32, device=device)
            out, lse = _cudnn_varlen(q, k, v, cu, cu, max(sizes), max(sizes), 128 ** -0.5)
            ref, ref_lse = _loop(q.float(), k.float(), v.float(), cu, cu, 128 ** -0.5, True)
            err = (out.float() - ref).abs().max() / ref.abs().max()
            lse_err = (lse - ref_lse).abs().max()
            ok = bool(err < 2e-2 and lse_err < 2e-2)
            if not ok:
                _cudnn_varlen_state[("error",) + key] = f"max error {float(err):.2e}, lse error {float(lse_err):.2e}"
        except Exception as exc:  # reported by `python -m moga_core info`
            _cudnn_varlen_state[("error",) + key] = f"{type(exc).__name__}: {exc}"[:300]
            ok = False
    _cudnn_varlen_state[key] = ok
    return ok


# The per-segment loop runs cuDNN's dense kernel (579 TFLOP/s on an H100 vs 366 for torch's varlen FA2 kernel), but
# cuDNN builds an execution graph for every new (length, length) pair: 55-70 ms the first time a length is seen
# (bench/probe_shapes.py, H100). So the loop is only worth it for segments whose lengths repeat from call to call —
# the static window problems of a layout — and that are long enough that a call is not launch-bound. Router groups
# change size at every block and step: those go to a varlen kernel (or one batched call when balanced routing
# makes them equal). bench/NOTES.md has the measurements.
LOOP_MIN_MEAN_SEGMENT = 2048
LOOP_MAX_SEGMENTS = 512


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype, equal: bool, need_grad: bool,
                   mean_segment: float = 0.0, num_segments: int = 0, stable: bool = False) -> str:
    """Resolve ``auto`` (and refuse a named backend that cannot run here, with a clear message).

    ``auto``: equal segments → one batched SDPA call; CUDA half precision → flash-attn if installed, else one SDPA
    (cuDNN) call per segment when the segment lengths are ``stable`` across calls (static layout problems) and few
    and long, else torch's varlen kernel; otherwise the loop.
    cuDNN's ragged kernel (``cudnn_varlen``) is never picked automatically: it measured 6-9× slower than the
    per-segment loop on torch 2.11 / H100.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    cuda = device.type == "cuda"
    if requested == "auto":
        if equal:
            return "sdpa"  # one batched call on the fastest dense kernel (cuDNN on Hopper)
        if cuda and half:
            if _flash_attn_varlen_func is not None:
                return "flash_attn"
            if stable and mean_segment >= LOOP_MIN_MEAN_SEGMENT and num_segments <= LOOP_MAX_SEGMENTS:
                return "loop"
            if _torch_varlen_attn is not None:
                return "torch_varlen"
        return "loop"
    if requested in ("flash_attn", "torch_varlen", "cudnn_varlen"):
        if not (cuda and half):
            raise ValueError(
                f"backend {requested!r} needs CUDA tensors in float16/bfloat16; got {device.type} {dtype}. "
                "Use backend='auto' or 'loop'."
            )
        present = {
            "flash_attn": _flash_attn_varlen_func is not None,
            "torch_varlen": _torch_varlen_attn is not None,
            "cudnn_varlen": _HAS_CUDNN_VARLEN_OP,
        }[requested]
        if not present:
            raise ValueError(
                f"backend {requested!r} is not available in this environment (torch {torch.__version__}); "
                "run `python -m moga_core info` to see what is"
            )
        return requested
    if requested == "sdpa" and not equal:
        return "loop"  # unequal segments: the per-segment SDPA loop is the same kernel, one call per segment
    return requested


# ---------------------------------------------------------------------------------------------------------------
# dense SDPA with log-sum-exp: the building block of the "sdpa" and "loop" backends


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """Log-sum-exps and merges run in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sdpa_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, need_lse: bool):
    """Dense attention on (B, H, Lq, D) x (B, H, Lk, D) -> out (B, H, Lq, D) [, lse (B, H, Lq) float32].

    Without ``need_lse`` this is plain ``F.scaled_dot_product_attention`` (fastest kernel, autograd). With it we
    use the private kernels that also return the log-sum-exp; those treat the lse as non-differentiable, so when
    autograd is recording we use the math formulation instead (correct gradients through the merge).
    """
    if not need_lse:
        return F.scaled_dot_product_attention(q, k, v, scale=scale), None
    recording = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not recording:
        if q.device.type == "cpu" and _HAS_CPU_FLASH_OP and q.dtype in (torch.float32, torch.float64,
                                                                          torch.bfloat16, torch.float16):
            try:
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False,
                                                                                      scale=scale)
                return out, lse.to(lse_dtype(q.dtype))
            except RuntimeError:
                pass
        if q.device.type == "cuda":
            if q.dtype in (torch.float16, torch.bfloat16) and _HAS_CUDNN_SDPA_OP and q.shape[-1] <= 128:
                try:
                    res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False,
                                                                             scale=scale)
                    if res[1].numel() == q.shape[0] * q.shape[1] * q.shape[2]:
                        return res[0], res[1].reshape(q.shape[:3]).float()
                except RuntimeError:
                    pass
            if _HAS_EFFICIENT_OP:
                try:
                    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0,
                                                                                      False, scale=scale)[:2]
                    return out, lse[..., : q.shape[2]].float()
                except RuntimeError:
                    pass
    return _math_attention(q, k, v, scale)


def _math_attention(q, k, v, scale, chunk_bytes: int = 1 << 28):
    """Exact attention in (at least) float32 with lse, chunked over queries to bound the score matrix."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    kc, vc = k.to(compute), v.to(compute)
    rows = max(1, chunk_bytes // max(1, b * h * lk * 4))
    outs, lses = [], []
    for start in range(0, lq, rows):
        qc = q[:, :, start:start + rows].to(compute)
        scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), vc))
        lses.append(lse)
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    lse = torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]
    return out.to(q.dtype), lse.to(lse_dtype(q.dtype))


# ---------------------------------------------------------------------------------------------------------------
# the backends


def _loop(q, k, v, cu_q, cu_k, scale, need_lse, cu_q_host=None, cu_k_host=None):
    cq = (cu_q_host if cu_q_host is not None else cu_q.cpu().numpy()).tolist()
    ck = (cu_k_host if cu_k_host is not None else cu_k.cpu().numpy()).tolist()
    outs, lses = [], []
    for i in range(len(cq) - 1):
        a, b = cq[i], cq[i + 1]
        c, d = ck[i], ck[i + 1]
        if b == a:
            continue
        qs = q[a:b].transpose(0, 1).unsqueeze(0)  # (1, H, lq, D)
        ks = k[c:d].transpose(0, 1).unsqueeze(0)
        vs = v[c:d].transpose(0, 1).unsqueeze(0)
        o, l = sdpa_with_lse(qs, ks, vs, scale, need_lse)
        outs.append(o[0].transpose(0, 1))
        if need_lse:
            lses.append(l[0].transpose(0, 1))
    out = torch.cat(outs, 0) if outs else q.new_zeros(q.shape)
    lse = (torch.cat(lses, 0) if lses else q.new_zeros(q.shape[:2], dtype=lse_dtype(q.dtype))) if need_lse else None
    return out, lse


def _sdpa_equal(q, k, v, num_segments, scale, need_lse):
    s = num_segments
    lq, lk = q.shape[0] // s, k.shape[0] // s
    h, d = q.shape[1], q.shape[2]
    qs = q.view(s, lq, h, d).transpose(1, 2)
    ks = k.view(s, lk, h, d).transpose(1, 2)
    vs = v.view(s, lk, h, d).transpose(1, 2)
    out, lse = sdpa_with_lse(qs, ks, vs, scale, need_lse)
    out = out.transpose(1, 2).reshape(s * lq, h, out.shape[-1])
    if lse is not None:
        lse = lse.transpose(1, 2).reshape(s * lq, h)
    return out, lse


def _flash_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale, need_lse):
    res = _flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale,
                                  return_attn_probs=need_lse)
    if not need_lse:
        return res, None
    out, lse = res[0], res[1]
    return out, _lse_to_lh(lse, q.shape[0], q.shape[1])


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, need_lse):
    if need_lse:
        if _AuxRequest is None:
            raise RuntimeError("this torch's varlen_attn cannot return the log-sum-exp")
        out, lse = _torch_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale,
                                      return_aux=_AuxRequest(lse=True))
        return out, _lse_to_lh(lse, q.shape[0], q.shape[1])
    return _torch_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale), None


def _cudnn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    res = torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu_q, cu_k, max_q, max_k, True, 0.0, False, False,
                                                  scale=scale)
    return res[0], _lse_to_lh(res[1], q.shape[0], q.shape[1])


def _lse_to_lh(lse: torch.Tensor, total: int, heads: int) -> torch.Tensor:
    """Kernels return the lse as (H, L), (L, H) or (1, H, L); bring it to (L, H) float32."""
    lse = lse.float()
    while lse.dim() > 2 and lse.shape[0] == 1:
        lse = lse[0]
    while lse.dim() > 2 and lse.shape[-1] == 1:
        lse = lse[..., 0]
    if lse.shape == (heads, total):
        return lse.transpose(0, 1)
    if lse.shape == (total, heads):
        return lse
    raise RuntimeError(f"unexpected log-sum-exp shape {tuple(lse.shape)} for {total} rows x {heads} heads")


@dataclass
class SegmentedProblem:
    """Index form of a packed attention problem (see module doc). Indices are flat rows of (B*N, H, D) tensors.

    ``q_index``/``k_index``: (Lq,), (Lk,) int64 on the device; ``q_index is None`` means the queries are the rows
    in order (no gather); ``k_index is None`` means keys = queries.
    ``cu_q``/``cu_k``: int32 (S+1,) on the device; ``cu_q_host``/``cu_k_host`` mirror them as numpy arrays, so that
    nothing has to read the device again.
    ``equal``: every segment has the same query length and the same key length (a batched SDPA call works).
    """

    q_index: torch.Tensor | None
    k_index: torch.Tensor | None
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    cu_q_host: np.ndarray
    cu_k_host: np.ndarray
    max_q: int
    max_k: int
    equal: bool
    stable: bool = False  # the same segment lengths come back call after call (a static layout problem)

    @property
    def num_segments(self) -> int:
        return len(self.cu_q_host) - 1

    @property
    def num_queries(self) -> int:
        return int(self.cu_q_host[-1])

    def pair_count(self) -> int:
        """Σ n_q·n_k over segments: the number of scores computed."""
        return int((np.diff(self.cu_q_host) * np.diff(self.cu_k_host)).sum())

    def flops(self, heads: int, head_dim: int) -> float:
        """4·H·D·Σ n_q·n_k (the FlashAttention forward convention)."""
        return 4.0 * heads * head_dim * self.pair_count()


def make_problem(q_index, k_index, counts_q, counts_k, device, stable: bool = False) -> SegmentedProblem:
    """Build a problem from per-segment counts (numpy/list/tensor); segments without queries are dropped.

    ``counts_k is None`` means each segment's keys are its queries. When ``k_index`` is given, its rows must be
    laid out segment after segment in the order of ``counts_k`` (also for the segments that get dropped).
    """
    cq = np.asarray(counts_q.cpu() if torch.is_tensor(counts_q) else counts_q, dtype=np.int64).reshape(-1)
    ck = cq if counts_k is None else np.asarray(counts_k.cpu() if torch.is_tensor(counts_k) else counts_k,
                                                  dtype=np.int64).reshape(-1)
    keep = cq > 0
    if (ck[keep] <= 0).any():
        raise RuntimeError("internal: a query segment with no keys")  # cannot happen by construction
    if counts_k is not None and k_index is not None and (ck[~keep] > 0).any():
        # key rows of dropped segments are still in k_index: remove them
        row_keep = torch.repeat_interleave(torch.from_numpy(keep).to(device), torch.from_numpy(ck).to(device))
        k_index = k_index[row_keep]
    kq, kk = cq[keep], ck[keep]
    cu_q_host = np.concatenate([[0], np.cumsum(kq)]).astype(np.int64)
    cu_k_host = np.concatenate([[0], np.cumsum(kk)]).astype(np.int64)
    equal = bool(len(kq) == 0 or ((kq == kq[0]).all() and (kk == kk[0]).all()))
    cu_q = torch.from_numpy(cu_q_host.astype(np.int32)).to(device)
    cu_k = cu_q if counts_k is None else torch.from_numpy(cu_k_host.astype(np.int32)).to(device)
    return SegmentedProblem(q_index, k_index, cu_q, cu_k, cu_q_host, cu_k_host,
                            int(kq.max(initial=0)), int(kk.max(initial=0)), equal, stable)


def segmented_attention(q, k, v, problem: SegmentedProblem, scale: float, need_lse: bool, backend: str = "auto"):
    """Run one segmented problem on *already packed* (Lq, H, D) / (Lk, H, D) tensors."""
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    segments = problem.num_segments
    name = choose_backend(backend, q.device, q.dtype, problem.equal, need_grad,
                          problem.num_queries / max(segments, 1), segments, problem.stable)
    if need_lse and need_grad and name in ("flash_attn", "torch_varlen", "cudnn_varlen", "sdpa"):
        # their lse carries no gradient; the merge that consumes it would silently get wrong gradients
        name = "loop"
    if problem.num_segments == 0:
        lse = q.new_zeros(q.shape[:2], dtype=torch.float32) if need_lse else None
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2]), lse
    if name == "sdpa" and problem.equal:
        return _sdpa_equal(q, k, v, problem.num_segments, scale, need_lse)
    if name == "flash_attn":
        return _flash_attn(q, k, v, problem.cu_q, problem.cu_k, problem.max_q, problem.max_k, scale, need_lse)
    if name == "torch_varlen":
        return _torch_varlen(q, k, v, problem.cu_q, problem.cu_k, problem.max_q, problem.max_k, scale, need_lse)
    if name == "cudnn_varlen":
        out, lse = _cudnn_varlen(q, k, v, problem.cu_q, problem.cu_k, problem.max_q, problem.max_k, scale)
        return out, (lse if need_lse else None)
    return _loop(q, k, v, problem.cu_q, problem.cu_k, scale, need_lse, problem.cu_q_host, problem.cu_k_host)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
