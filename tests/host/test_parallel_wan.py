"""A tiny ComfyUI WanModel forward with sequence-parallel MoGA across 2 processes (CPU, gloo) equals the
single-process MoGA forward.

Every process builds the same tiny `comfy.ldm.wan.model.WanModel` (ComfyUI's real class, seeded random weights) and
replaces each block's self-attention forward with MoGA: the router reads the self-attention input (the block's
normed, modulated tokens), q/k get ComfyUI's qk-norm and RoPE. In the parallel run each rank computes q/k/v, the
router output and RoPE on *its shard only* and calls `sequence_parallel_moga_attention`; the output shards are
gathered so the rest of the block runs on the whole sequence (the non-attention layers are per-token, so this is the
Ulysses layer inside a real model without rewriting Wan's forward).
"""

from __future__ import annotations

import os
import socket
import types
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moga_core import MogaConfig, Router, VideoLayout, moga_attention
from moga_core.parallel import gather_sequence, sequence_parallel_moga_attention, shard_sequence

WORLD = 2
DIM, LAYERS, FFN = 256, 2, 512  # 2 heads of 128
LATENT = (1, 16, 5, 6, 10)  # (B, C, T, H, W) -> patch grid (5, 3, 5) = 75 tokens: uneven over 2 ranks
GRID = (5, 3, 5)
SHOTS = (0, 3)
COMBINES = ("mean", "union")


def _import_comfy(comfy_path):
    import sys

    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    import comfy.options  # noqa: F401
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.model as wan
    import comfy.ops
    from comfy.ldm.flux.math import apply_rope1

    return wan, comfy.ops, apply_rope1


def build_model(comfy_path):
    wan, ops, _ = _import_comfy(comfy_path)
    model = wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=DIM, ffn_dim=FFN,
                         freq_dim=256, text_dim=4096, out_dim=16, num_heads=DIM // 128, num_layers=LAYERS,
                         window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                         operations=ops.disable_weight_init)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    routers = [Router(DIM, 3) for _ in range(LAYERS)]
    for i, r in enumerate(routers):
        with torch.no_grad():
            r.weight.copy_(torch.randn(r.weight.shape, generator=torch.Generator().manual_seed(10 + i)))
    return model, routers


def install_moga(model, routers, cfg, apply_rope1, parallel, calls):
    layout = VideoLayout(grid=GRID, shots=SHOTS)

    def make(router):
        def forward(self, x, freqs, transformer_options={}):
            b, n, h, d = x.shape[0], x.shape[1], self.num_heads, self.head_dim
            if parallel:
                world, rank = dist.get_world_size(), dist.get_rank()
                x = shard_sequence(x, world, rank)
                freqs = shard_sequence(freqs, world, rank)
            groups, gate = router(x)
            q = apply_rope1(self.norm_q(self.q(x)).view(b, -1, h, d), freqs)
            k = apply_rope1(self.norm_k(self.k(x)).view(b, -1, h, d), freqs)
            v = self.v(x).view(b, -1, h, d)
            if parallel:
                out = sequence_parallel_moga_attention(q, k, v, layout, cfg, groups=groups, gate=gate)
                out = gather_sequence(out, num_tokens=n)
            else:
                out = moga_attention(q, k, v, layout, cfg, groups=groups, gate=gate)
            calls.append(parallel)
            return self.o(out.flatten(2))

        return forward

    for block, router in zip(model.blocks, routers):
        block.self_attn.forward = types.MethodType(make(router), block.self_attn)


def inputs():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(LATENT, generator=gen)
    context = torch.randn(1, 12, 4096, generator=gen)
    t = torch.tensor([500.0])
    return x, t, context


def _worker(rank, comfy_path, port, path):
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _, _, apply_rope1 = _import_comfy(comfy_path)
        x, t, context = inputs()
        results = {}
        with torch.no_grad():
            dense_model, _ = build_model(comfy_path)
            results["dense"] = dense_model(x, t, context)
            for combine in COMBINES:
                cfg = MogaConfig(num_groups=3, window=(2, 2), temporal_group=2, neighbor_frames=1, combine=combine)
                for parallel in (False, True):
                    model, routers = build_model(comfy_path)
                    calls = []
                    install_moga(model, routers, cfg, apply_rope1, parallel, calls)
                    results[(combine, parallel)] = (model(x, t, context), calls)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(results, path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def wan_results(comfyui, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("parallel_wan") / "results.pt")
    mp.spawn(_worker, args=(str(comfyui), _free_port(), path), nprocs=WORLD, join=True)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("combine", COMBINES)
def test_sequence_parallel_wan_forward_equals_single_process(wan_results, combine):
    single, single_calls = wan_results[(combine, False)]
    par, par_calls = wan_results[(combine, True)]
    dense = wan_results["dense"]
    assert single_calls == [False] * LAYERS and par_calls == [True] * LAYERS  # every block ran the intended path
    assert single.shape == par.shape == dense.shape == LATENT
    err = float((par.double() - single.double()).abs().max() / single.double().abs().max())
    assert err <= 1e-5, err
    # MoGA is in effect: the patched forward is not the dense model's
    assert float((single - dense).abs().max() / dense.abs().max()) > 1e-3
