"""Where the time of one MoGA layer goes, stage by stage (CUDA events, median of repeats).

    python bench/profile_layer.py --tokens 75600 --heads 12 --groups 8

Prints one line per stage; used to write bench/NOTES.md. Not a test: it asserts nothing about time.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moga_core import MogaConfig, Router, VideoLayout, moga_attention  # noqa: E402
from moga_core.backends import available_backends, cudnn_varlen_works, segmented_attention  # noqa: E402
from moga_core.bench import time_call  # noqa: E402
from moga_core.plan import group_terms  # noqa: E402
from moga_core.router import balanced_assignment  # noqa: E402
from moga_core.synthetic import even_shots, grid_for_tokens, structured_video_tokens, synthetic_qkv  # noqa: E402


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=75600)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    dev = torch.device("cuda")
    grid = grid_for_tokens(a.tokens)
    layout = VideoLayout(grid=grid, shots=even_shots(grid[0], 3))
    c = a.heads * 128
    x, _ = structured_video_tokens(layout, channels=256, device=dev)
    x = x @ (torch.randn(256, c, device=dev) / 16)
    q, k, v = (t.bfloat16() for t in synthetic_qkv(x, a.heads, 128))
    x = x.bfloat16()
    router = Router.fit(x.float(), a.groups).to(dev)
    cfg = MogaConfig(num_groups=a.groups, window=None, frame_branch=False)
    t = lambda fn: time_call(fn, dev, a.repeats)
    print(f"N={layout.num_tokens} grid={grid} H={a.heads} M={a.groups}; backends {available_backends()}; "
          f"cudnn ragged self-test {cudnn_varlen_works(dev, torch.bfloat16)}")
    print(f"router logits           {t(lambda: router.logits(x)):8.3f} ms")
    print(f"router full (argmax)    {t(lambda: router(x)):8.3f} ms")
    logits = router.logits(x)
    print(f"balanced assignment     {t(lambda: balanced_assignment(logits)):8.3f} ms")
    groups, gate = router(x)
    print(f"group sizes {torch.bincount(groups[0]).tolist()}")
    print(f"group_terms (sort+sync) {t(lambda: group_terms(layout, cfg, groups, ('group',))):8.3f} ms")
    term = group_terms(layout, cfg, groups, ("group",))["group"]
    prob = term.problem
    qf, kf, vf = (z.reshape(-1, a.heads, 128) for z in (q, k, v))
    print(f"gather q,k,v            {t(lambda: [z.index_select(0, prob.q_index) for z in (qf, kf, vf)]):8.3f} ms")
    qp, kp, vp = (z.index_select(0, prob.q_index) for z in (qf, kf, vf))
    flops = prob.flops(a.heads, 128)
    for backend in ("torch_varlen", "cudnn_varlen", "loop"):
        try:
            ms = t(lambda: segmented_attention(qp, kp, vp, prob, 128 ** -0.5, False, backend))
            print(f"attention {backend:13s} {ms:8.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
        except Exception as exc:
            print(f"attention {backend:13s} failed: {type(exc).__name__}: {str(exc)[:200]}")
    inv = torch.empty_like(term.out_index)
    print(f"unpack (inverse+gather) {t(lambda: (inv.__setitem__(term.out_index, torch.arange(inv.numel(), device=dev)), qp.index_select(0, inv))):8.3f} ms")
    print(f"moga_attention total    {t(lambda: moga_attention(q, k, v, layout, cfg, groups, gate)):8.3f} ms")
    bal = balanced_assignment(logits)
    gate_b = torch.softmax(logits, -1).gather(-1, bal[..., None])[..., 0]
    cfg_b = MogaConfig(num_groups=a.groups, window=None, frame_branch=False, balanced=True)
    term_b = group_terms(layout, cfg_b, bal, ("group",))["group"]
    qb, kb, vb = (z.index_select(0, term_b.problem.q_index) for z in (qf, kf, vf))
    flops_b = term_b.problem.flops(a.heads, 128)
    for backend in ("sdpa", "torch_varlen", "cudnn_varlen"):
        try:
            ms = t(lambda: segmented_attention(qb, kb, vb, term_b.problem, 128 ** -0.5, False, backend))
            print(f"balanced attn {backend:10s} {ms:8.3f} ms  {flops_b / ms / 1e9:6.0f} TFLOP/s")
        except Exception as exc:
            print(f"balanced attn {backend:10s} failed: {type(exc).__name__}: {str(exc)[:200]}")
    s, l = a.groups, a.tokens // a.groups
    qc = qb.view(s, l, a.heads, 128).transpose(1, 2).contiguous()
    kc, vc = (z.view(s, l, a.heads, 128).transpose(1, 2).contiguous() for z in (kb, vb))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = t(lambda: torch.nn.functional.scaled_dot_product_attention(qc, kc, vc))
    print(f"balanced cudnn contiguous (S,H,L,D) {ms:8.3f} ms  {flops_b / ms / 1e9:6.0f} TFLOP/s")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        qs, ks, vs = (z.view(s, l, a.heads, 128).transpose(1, 2) for z in (qb, kb, vb))
        ms = t(lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs))
    print(f"balanced cudnn strided (S,L,H,D)^T  {ms:8.3f} ms  {flops_b / ms / 1e9:6.0f} TFLOP/s")
    print(f"moga_attention balanced total {t(lambda: moga_attention(q, k, v, layout, cfg_b, bal, gate_b)):8.3f} ms")


if __name__ == "__main__":
    main()
