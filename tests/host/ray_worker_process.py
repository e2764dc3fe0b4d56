"""One raylight worker's side of MoGA Patch (Ray), in a fresh process: ComfyUI on sys.path, this pack NOT on it.

Run by tests/host/test_ray_patch.py (copied to a temporary folder first, so nothing of the pack is importable):
``python ray_worker_process.py '<json args>'``. It does what raylight's ``RayWorker`` does with the node's call —
``self.model = fn(self.model, payload)`` with ``(fn, payload)`` unpickled by cloudpickle (Ray's serializer) — on a
tiny ComfyUI WanModel loaded from a state dict with ComfyUI's own loader, samples it, and saves the results.

``mode == "sp"``: one of ``world`` processes of a sequence-parallel run on CPU (gloo). The process groups are real
xfuser ones (``init_distributed_environment`` + ``initialize_model_parallel``, as raylight's
``initialize_xfuser_parallel`` calls them; xfuser is told the device is the CPU, since this torch is a CUDA build on a
machine without a GPU). raylight itself is NOT used: its xdit attention does not construct on CPU with the xfuser /
yunchang versions installable here. In its place `stand_in_usp_inject` is a STAND-IN for raylight's
``USPInjectRegistry.inject`` (ON_LOAD): it replaces WanModel.forward_orig with a forward that pads the token sequence
to a multiple of P and gives every rank its chunk (as raylight's ``usp_dit_forward``), and each block's
``self_attn.forward`` with a dense sequence-parallel attention (all-gathered keys and values, padding dropped).
"""

from __future__ import annotations

import json
import math
import os
import sys
import types


def setup_comfyui(path):
    sys.path.insert(0, path)
    import importlib

    import comfy.options  # noqa: F401
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    importlib.import_module("utils.install_util")  # ComfyUI's utils package before comfy/ lands on sys.path


def ksample(model, pos, neg, latent, seed=0, cfg=5.0, steps=3):
    import comfy.sample

    x = latent["samples"]
    noise = comfy.sample.prepare_noise(x, seed, None)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, x, denoise=1.0,
                               disable_pbar=True, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# sequence parallel: real xfuser groups; a stand-in for raylight's USP injection


def init_xfuser(rank, world, port):
    import torch.distributed as dist
    import xfuser.envs

    xfuser.envs.get_device_name = lambda: "cpu"  # a CUDA build of torch without a GPU: xfuser would pick CUDA
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    init_distributed_environment(rank=rank, world_size=world, backend="gloo")
    initialize_model_parallel(data_parallel_degree=1, sequence_parallel_degree=world,
                              classifier_free_guidance_degree=1, ring_degree=1, ulysses_degree=world,
                              pipeline_parallel_degree=1, backend="gloo")


def _pad_and_chunk(t, world, rank, dim=1):
    import torch

    n = t.shape[dim]
    s = math.ceil(n / world)
    if s * world > n:
        shape = list(t.shape)
        shape[dim] = s * world - n
        t = torch.cat([t, t.new_zeros(shape)], dim=dim)
    return torch.chunk(t, world, dim=dim)[rank]


def stand_in_usp_dit_forward(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):
    """STAND-IN for raylight's Wan ``usp_dit_forward`` (t2v, no reference/context latents): ComfyUI's
    WanModel.forward_orig with the token sequence padded at the end and chunked over the SP group."""
    from comfy.ldm.wan.model import sinusoidal_embedding_1d
    from xfuser.core.distributed import get_sp_group

    sp = get_sp_group()
    x = self.patch_embedding(x.float()).to(x.dtype)
    grid_sizes = x.shape[2:]
    transformer_options["grid_sizes"] = grid_sizes
    x = x.flatten(2).transpose(1, 2)
    e = self.time_embedding(sinusoidal_embedding_1d(self.freq_dim, t.flatten()).to(dtype=x[0].dtype))
    e = e.reshape(t.shape[0], -1, e.shape[-1])
    e0 = self.time_projection(e).unflatten(2, (6, self.dim))
    n = x.shape[1]
    transformer_options["stand_in_tokens"] = n
    x = _pad_and_chunk(x, sp.world_size, sp.rank_in_group)
    freqs = _pad_and_chunk(freqs, sp.world_size, sp.rank_in_group)
    context = self.text_embedding(context)
    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    transformer_options["total_blocks"] = len(self.blocks)
    transformer_options["block_type"] = "double"
    for i, block in enumerate(self.blocks):
        transformer_options["block_index"] = i
        if ("double_block", i) in blocks_replace:
            def block_wrap(args, block=block):
                return {"img": block(args["img"], context=args["txt"], e=args["vec"], freqs=args["pe"],
                                     context_img_len=None, transformer_options=args["transformer_options"])}
            x = blocks_replace[("double_block", i)]({"img": x, "txt": context, "vec": e0, "pe": freqs,
                                                     "transformer_options": transformer_options},
                                                    {"original_block": block_wrap})["img"]
        else:
            x = block(x, e=e0, freqs=freqs, context=context, context_img_len=None,
                      transformer_options=transformer_options)
    x = sp.all_gather(x.contiguous(), dim=1)[:, :n]
    x = self.head(x, e)
    return self.unpatchify(x, grid_sizes)


def stand_in_usp_self_attn_forward(self, x, freqs, transformer_options={}, **kwargs):
    """STAND-IN for raylight's ``usp_self_attn_forward``: q/k/v on the shard as ComfyUI computes them, dense
    attention of the local queries over the all-gathered keys/values (padding dropped)."""
    from comfy.ldm.flux.math import apply_rope1
    from comfy.ldm.modules.attention import optimized_attention
    from xfuser.core.distributed import get_sp_group

    sp = get_sp_group()
    n = transformer_options["stand_in_tokens"]
    b, s, h, d = *x.shape[:2], self.num_heads, self.head_dim
    q = apply_rope1(self.norm_q(self.q(x)).view(b, s, h, d), freqs)
    k = apply_rope1(self.norm_k(self.k(x)).view(b, s, h, d), freqs)
    v = self.v(x).view(b, s, h, d)
    k_all = sp.all_gather(k.contiguous(), dim=1)[:, :n]
    v_all = sp.all_gather(v.contiguous(), dim=1)[:, :n]
    out = optimized_attention(q.view(b, s, h * d), k_all.reshape(b, n, h * d), v_all.reshape(b, n, h * d), heads=h)
    return self.o(out)


def stand_in_usp_inject(model_patcher, *rest):
    """STAND-IN for raylight's ``USPInjectRegistry.inject`` (an ON_LOAD callback): runs at every load."""
    model = model_patcher.model.diffusion_model
    for block in model.blocks:
        block.self_attn.forward = types.MethodType(stand_in_usp_self_attn_forward, block.self_attn)
    model.forward_orig = types.MethodType(stand_in_usp_dit_forward, model)
    model._stand_in_loads = getattr(model, "_stand_in_loads", 0) + 1


# ---------------------------------------------------------------------------------------------------------------


def main():
    args = json.loads(sys.argv[1])
    import importlib.util

    assert importlib.util.find_spec("moga_core") is None, "the pack must not be importable in a worker"
    setup_comfyui(args["comfyui"])
    import cloudpickle
    import torch

    torch.manual_seed(0)
    mode, rank = args["mode"], args.get("rank", 0)
    if mode == "sp":
        init_xfuser(rank, args["world"], args["port"])
    import comfy.patcher_extension
    import comfy.sd

    data = torch.load(args["data"], weights_only=False)
    base = comfy.sd.load_diffusion_model_state_dict(data["sd"], model_options={"dtype": torch.float32})
    if mode == "sp":  # what raylight's RayWorker.patch_usp does before any patch node runs
        base.add_callback(comfy.patcher_extension.CallbacksMP.ON_LOAD, stand_in_usp_inject)
    with open(args["blob"], "rb") as f:
        fn, payload = cloudpickle.load(f)
    patched = fn(base, payload)  # raylight: self.model = fn(self.model, *args)
    clone = base.clone()
    pos, neg, latent = data["pos"], data["neg"], data["latent"]
    out = {"patched": ksample(patched, pos, neg, latent), "clone": ksample(clone, pos, neg, latent),
           "base": ksample(base, pos, neg, latent)}
    holder = patched.model_options.get("moga", {}).get("patch")
    out["holder"] = f"{type(holder).__module__}.{type(holder).__name__}"
    out["stats"] = dict(holder.last_run_stats or {})
    out["pack_modules"] = sorted(m for m in sys.modules if m.startswith("moga_pack_worker_") and m.count(".") == 0)
    out["stand_in_loads"] = getattr(base.model.diffusion_model, "_stand_in_loads", 0)
    if mode == "sp":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    torch.save(out, os.path.join(args["out"], f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
