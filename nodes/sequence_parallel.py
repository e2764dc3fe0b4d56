"""MoGA under Ulysses sequence parallelism (raylight's xDiT/USP mode): the patch holder and Wan's self-attention rewire.

Under sequence parallelism an engine shards the token sequence over the P ranks of a process group: raylight's
``usp_dit_forward`` pads the N tokens at the end to a multiple of P and gives every rank one contiguous chunk of
``s = ceil(N / P)`` tokens (``torch.chunk``), runs every block on the chunks and all-gathers at the end. Each block
call therefore sees this rank's shard only (``args["img"]``: (B, s, C)), and the engine replaces each block's
``self_attn.forward`` with its own (USP) forward, which never reaches ComfyUI's attention override.

So MoGA is wired differently from the single-GPU patch, with the same holder machinery (`patcher.MogaPatch`):

- `SequenceParallelMogaPatch`: the block patch routes this rank's shard — router *logits* (B, s, M) on the shard's
  self-attention input — and leaves a `patcher.Route` carrying the *global* layout (grid of the whole video) and
  the logits; `sequence_parallel_moga_attention` gathers them, so capacity-bounded routing is the same assignment
  over all video tokens as on one GPU;
- `rewire_wan_self_attention`: every Wan block's ``self_attn.forward`` becomes `moga_self_attn_forward`, which
  keeps the forward it found (the engine's USP forward) and delegates to it whenever the call's
  ``transformer_options`` carry no such route — an unpatched clone of the model runs exactly the engine's forward.
  With a route it computes q, k, v on the shard as the USP forward does (qk-norm, RoPE on the local
  ``freqs``) and runs `sequence_parallel_moga_attention` (all-to-all to head shards, MoGA over the whole sequence,
  back) with ``sizes = [s] * P``: the tail padding is dropped, never attended, and its output rows are zero.

The rewire replaces an attribute of the model's own modules (shared by its clones, hence the delegation); it is run
by the patched clone's ON_LOAD callback, after the engine's own ON_LOAD injection (see `nodes.raylight_worker`).
Only Wan's plain token layout is supported: reference-latent or context-latent tokens stay dense (counted).
"""

from __future__ import annotations

import math
import types

import torch
import torch.distributed as dist

from ..moga_core import RandomGroups, VideoLayout
from ..moga_core.parallel import sequence_parallel_moga_attention
from ..moga_core.routers import RouterSet

from . import wiring
from .adapters import BlockKey, ModelAdapter
from .options import PatchOptions
from .patcher import ForwardInfo, MogaPatch, Route

NOT_REWIRED = "self-attention not rewired for sequence parallelism"


class SequenceParallelMogaPatch(MogaPatch):
    """`MogaPatch` for a model whose blocks run on sequence shards of ``process_group`` (P ranks, Ulysses).

    Every rank holds one of these (same routers, same options); all decisions to go dense are taken from facts that
    every rank shares (grid, sigma, options, shard length), so either all ranks enter the collective attention of a
    block or none does.
    """

    def __init__(self, adapter: ModelAdapter, routers: RouterSet | None, options: PatchOptions, process_group,
                 world_size: int):
        if adapter.family != "wan":
            raise ValueError(f"MoGA under sequence parallelism supports Wan only so far; got a {adapter.display_name} "
                             f"model with a sequence-parallel world size of {world_size}. HunyuanVideo under "
                             "raylight's sequence parallelism is not supported yet (raylight's HunyuanVideo USP "
                             "forward cannot run block-replace patches, and it shards the text tokens too: "
                             "docs/RAYLIGHT.md §9): run it with ulysses/ring degree 1 "
                             "(data or CFG parallel), or use MoGA Attention Patch on one GPU")
        if routers is None and options.grouping != "random":
            raise ValueError("auto routers (no router connected, grouping 'k-means on this video') are not "
                             "supported under sequence parallelism yet: they are fitted with k-means on the tokens "
                             "one process sees, and every rank sees a different shard. Use grouping 'random "
                             "(balanced)' or connect a router (MoGA Router Loader or MoGA Calibrate Router)")
        super().__init__(adapter, routers, options)
        if self.cfg.second_group:
            raise ValueError("second_group is not supported under sequence parallelism yet; turn it off")
        self.process_group = process_group
        self.world_size = int(world_size)

    def override_over(self, previous):
        return previous  # self-attention goes through the rewired forward, never through ComfyUI's override

    def video_tokens(self, key: BlockKey, args: dict, to: dict, info: ForwardInfo):
        """(grid, (0, 0)) of the *whole* video when this block call holds one chunk of it, else a dense reason."""
        adapter = info.adapter or self.adapter  # the model being run (a delegate may have replaced the patched one)
        attn = adapter.diffusion_model.blocks[key.block_index].self_attn
        if getattr(attn.forward, "__func__", None) is not moga_self_attn_forward:
            return self._dense(NOT_REWIRED)
        grid = wiring.video_grid(adapter, info.facts, to)
        if grid is None:
            return self._dense("no video grid")
        if info.facts.get("has_reference") or info.facts.get("has_context_latents"):
            return self._dense("extra tokens under sequence parallelism")
        n = grid[0] * grid[1] * grid[2]
        if args["img"].shape[1] != math.ceil(n / self.world_size):
            return self._dense("token layout not understood")
        return grid, (0, 0)

    def route(self, router, x_mod: torch.Tensor, key: BlockKey, layout: VideoLayout, info: ForwardInfo) -> Route:
        """The shard's router logits (B, s, M) float32; the attention gathers them (padding rows are dropped)."""
        return Route(self, key, layout, None, None, info, logits=router.logits(x_mod))

    def route_random(self, groups: RandomGroups, tokens: torch.Tensor, key: BlockKey, layout: VideoLayout,
                     info: ForwardInfo) -> Route:
        """Random groups as router scores of this rank's shard ``tokens`` (B, s, C): 0 for each token's group in
        the partition of the *whole* video, a large negative number for the others. Gathered over the ranks, their
        argmax is that partition, and the capacity bound moves none of its tokens (its groups differ in size by one
        at most), so every rank routes exactly as one process does with the same `RandomGroups`."""
        b, s = tokens.shape[:2]
        n = layout.num_video_tokens
        rank = dist.get_rank(self.process_group)
        padded = torch.zeros(s * self.world_size, dtype=torch.int64, device=tokens.device)
        padded[:n] = groups.partition(n, tokens.device)
        mine = padded[rank * s:(rank + 1) * s]  # padding rows get group 0; the attention drops them
        logits = torch.full((b, s, groups.num_groups), -1e4, dtype=torch.float32, device=tokens.device)
        logits.scatter_(2, mine.view(1, s, 1).expand(b, s, 1), 0.0)
        return Route(self, key, layout, None, None, info, logits=logits)

    @torch.compiler.disable
    def attend_shard(self, route: Route, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: this rank's shard (B, s, H, D) → its MoGA output (B, s, H, D); collective over the group."""
        call = {}
        out = sequence_parallel_moga_attention(
            q, k, v, route.layout, self.cfg, logits=route.logits, process_group=self.process_group,
            sizes=[q.shape[1]] * self.world_size, stats=call, dense_fallback=self.options.dense_if_slower)
        self.count_call(route, call)
        return out


def moga_self_attn_forward(self, x, freqs, transformer_options={}, **kwargs):
    """Wan self-attention on a sequence shard: MoGA when the call carries a sequence-parallel route, else the forward
    this one replaced (kept as ``self._moga_sp_previous``).

    x: (B, s, C) this rank's tokens (the block's normed, modulated input); freqs: this rank's RoPE rows, as
    ``apply_rope1`` takes them. Returns (B, s, C).
    """
    route = transformer_options.get(wiring.ROUTE) if isinstance(transformer_options, dict) else None
    attend = getattr(getattr(route, "patch", None), "attend_shard", None)
    if attend is None or route.logits is None:
        return self._moga_sp_previous(x, freqs, transformer_options=transformer_options, **kwargs)
    from comfy.ldm.flux.math import apply_rope1

    transformer_options.pop(wiring.ROUTE, None)  # one self-attention call per block takes the routing
    b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
    q = apply_rope1(self.norm_q(self.q(x)).view(b, s, n, d), freqs)
    k = apply_rope1(self.norm_k(self.k(x)).view(b, s, n, d), freqs)
    v = self.v(x).view(b, s, n, d)
    out = attend(route, q, k, v).flatten(2)
    for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
        out = patch({"x": out, "q": q, "k": k, "transformer_options": transformer_options})
    return self.o(out)


def rewire_wan_self_attention(diffusion_model: torch.nn.Module) -> int:
    """Put `moga_self_attn_forward` on every block's ``self_attn`` over the forward it has now (idempotent: a
    forward that is already ours keeps the one it wraps). Returns how many blocks were rewired now.

    Only a forward the engine set on the instance (its USP forward) is wrapped; a block still on the class's own
    forward is left alone (its sequence is not sharded, so MoGA's parallel path must not run there).
    """
    count = 0
    for block in diffusion_model.blocks:
        attn = block.self_attn
        current = attn.__dict__.get("forward")
        if current is None or getattr(current, "__func__", None) is moga_self_attn_forward:
            continue
        attn._moga_sp_previous = current
        attn.forward = types.MethodType(moga_self_attn_forward, attn)
        count += 1
    return count


def check_group_order(sp_group) -> None:
    """The engine chunks the sequence by ``sp_group.rank_in_group``; `sequence_parallel_moga_attention` orders shards
    by ``dist.get_rank(device_group)``. They agree when the group's ranks are ascending (xfuser's RankGenerator)."""
    torch_rank = dist.get_rank(sp_group.device_group)
    if torch_rank != sp_group.rank_in_group:
        raise ValueError(f"the sequence-parallel group numbers this process {sp_group.rank_in_group} (ranks "
                         f"{list(sp_group.ranks)}) but torch.distributed numbers it {torch_rank}; MoGA expects the "
                         "group's ranks in ascending order")
