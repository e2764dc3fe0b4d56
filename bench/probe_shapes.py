"""Does a new segment length cost the per-segment cuDNN loop a graph build? (first call vs repeat, per length)

    python bench/probe_shapes.py

For each of a few fresh lengths: the first SDPA call (cuDNN backend) and a repeat, and the same for torch's varlen
kernel, with CUDA-event timing. Reports; used to set when `auto` picks the per-segment loop (bench/NOTES.md).
"""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.varlen import varlen_attn


def ms(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def main():
    torch.manual_seed(0)
    h, d = 12, 128
    print("length | cudnn first | cudnn repeat | varlen first | varlen repeat | ideal at 600 TF/s")
    for length in (1537, 2311, 4099, 8209, 9461, 16411, 37447):
        q, k, v = (torch.randn(1, h, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
            first = ms(f)
            repeat = min(ms(f) for _ in range(3))
        qv, kv, vv = (t[0].transpose(0, 1).contiguous() for t in (q, k, v))
        cu = torch.tensor([0, length], dtype=torch.int32, device="cuda")
        g = lambda: varlen_attn(qv, kv, vv, cu, cu, length, length)
        vfirst = ms(g)
        vrepeat = min(ms(g) for _ in range(3))
        ideal = 4 * h * d * length ** 2 / 600e12 * 1e3
        print(f"{length} | {first:.2f} | {repeat:.2f} | {vfirst:.2f} | {vrepeat:.2f} | {ideal:.2f}")


if __name__ == "__main__":
    main()
