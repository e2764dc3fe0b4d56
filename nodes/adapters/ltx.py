"""LTX-2 audio-video (comfy.ldm.lightricks.av_model.LTXAVModel): MoGA on the video stream's self-attention only.

A ``BasicAVTransformerBlock`` carries two token streams, video ``vx`` (B, Nv', C_v) and audio ``ax`` (B, Na, C_a),
and makes up to eight attention calls: video self-attention (``attn1``), video→text (``attn2``), audio
self-attention (``audio_attn1``), audio→text (``audio_attn2``), audio→video and video→audio cross-attention, in
that order. MoGA takes ``attn1`` only; every other call keeps the dense backend. Heads are merged in the last
dimension, (B, N, H·D). ``attn1`` is the block's first attention call whenever the video part runs, and the two
self-attentions have different widths in LTX-2 (video 32 × 128, audio 32 × 64), which `attention_width` states so
the patcher never hands the routing to the audio call.

Token layout of ``attn1``: ``video tokens (t, h, w row-major; SymmetricPatchifier with patch 1) + [guide tokens]``.
Guides (``LTXVAddGuide``: keyframes, IC-LoRA references) are appended to the latent along time, named by
``keyframe_idxs`` (B, 3, K, 2), and ``LTXVModel._process_input`` drops every token whose denoise mask is negative
(``grid_mask``) before the blocks; the surviving guide tokens are a global suffix (attend to all, attended by all).
`forward_info` reads the same ``denoise_mask`` and explains the layout, or records why it cannot (then dense).

Dense, with the block's video self-attention left to ComfyUI:
- a guide attention mask (a guide with strength != 1, or a pixel mask): ComfyUI v0.19 passes a (1, 1, N, N) soft
  bias (the patcher finds it is not a padding mask: "attention mask"); newer ComfyUI passes a ``GuideAttentionMask``
  that splits the queries into several masked calls, which this adapter declines up front;
- blocks whose video part does not run (``run_vx`` False) or whose self-attention spatio-temporal guidance turns into
  a value passthrough (``stg_skip_self_attn``, newer ComfyUI): no ``attn1`` call exists to take, so no routing is
  left for a later call (text cross-attention has the same width and may have as many keys as there are tokens);
- per-shot captions: LTX-2's embeddings connectors run full self-attention over all caption tokens (and pad them to
  1024 with learnable registers) before the blocks, so a shot's caption tokens already depend on the other shots:
  `text_layout` returns None and captions stay global.

Router input: the video self-attention input, ``rms_norm(vx)·(1 + vscale_msa) + vshift_msa`` with the block's own
``get_ada_values`` (which expands ComfyUI's per-frame ``CompressedTimestep``).
"""

from __future__ import annotations

import torch

from .base import BlockKey, ModelAdapter

# why a block's video self-attention is left to ComfyUI (`LTXAVAdapter.dense_reason`)
VIDEO_NOT_RUN = "video stream not run in this block"
STG_SKIPPED = "self-attention skipped by spatio-temporal guidance"
GUIDE_MASK = "attention mask"  # the patcher's own name for a mask it does not serve


class LTXAVAdapter(ModelAdapter):
    family = "ltxav"
    display_name = "LTX-2"

    @property
    def hidden_size(self) -> int:
        return int(self.diffusion_model.inner_dim)

    def blocks(self) -> list[BlockKey]:
        # LTX numbers its blocks as ("double_block", i) in patches_replace["dit"]
        return [BlockKey("double", i, i) for i in range(len(self.diffusion_model.transformer_blocks))]

    def attention_width(self, key: BlockKey) -> int:
        attn = self.diffusion_model.transformer_blocks[key.block_index].attn1
        return int(attn.heads * attn.dim_head)

    def scoped_self_attention(self, key: BlockKey) -> str:
        # the routing is taken inside attn1 only: when attn1 makes no attention call (STG's value passthrough, or a
        # node that bypasses ComfyUI's attention) the text cross-attention after it may have the very same shape
        return f"diffusion_model.transformer_blocks.{key.block_index}.attn1"

    def block_tokens(self, args: dict) -> torch.Tensor:
        """The video stream (B, Nv', C_v) of a block call; ``args["img"]`` is the pair ``(vx, ax)``."""
        return args["img"][0]

    def grid(self, x_shape, transformer_options):
        pt, ph, pw = self.diffusion_model.patchifier.patch_size
        _, _, t, h, w = x_shape
        return (t // pt, h // ph, w // pw)

    # ---- per forward
    def forward_info(self, args, kwargs):
        """Facts of one ``LTXBaseModel._forward`` call: ``execute(x, timestep, context, attention_mask, frame_rate,
        transformer_options, keyframe_idxs, denoise_mask=..., **kwargs)`` with ``x`` = [vx (B, 128, T, H, W),
        ax (B, 8, Ta, 16)] (or [vx] / a tensor without audio).

        ``x_shape``: the main video's latent shape (B, C, T - guide frames, H, W); ``guide_tokens``: how many guide
        tokens survive the denoise-mask filter (the suffix of ``attn1``); ``layout_error``: why the layout cannot be
        explained (the blocks then stay dense).
        """
        x = args[0] if args else kwargs.get("x")
        vx = x[0] if isinstance(x, (list, tuple)) else x
        info = {"x_shape": None, "guide_tokens": 0, "layout_error": None}
        if not torch.is_tensor(vx) or vx.ndim != 5:
            return info
        keyframe_idxs = kwargs.get("keyframe_idxs", args[6] if len(args) > 6 else None)
        if keyframe_idxs is None or keyframe_idxs.shape[2] == 0:
            info["x_shape"] = tuple(vx.shape)
            return info
        b, c, t, h, w = vx.shape
        error, main_frames, guides = self._guide_layout(vx, keyframe_idxs, kwargs.get("denoise_mask"))
        info["layout_error"] = error
        info["x_shape"] = (b, c, main_frames if error is None else t, h, w)
        info["guide_tokens"] = guides
        return info

    def _guide_layout(self, vx, keyframe_idxs, denoise_mask) -> tuple[str | None, int, int]:
        """(error, main latent frames, surviving guide tokens) of a latent (B, C, T, H, W) with guide frames appended
        along time. The model keeps the tokens whose denoise mask is nowhere negative (batch row 0, as ComfyUI's
        ``grid_mask``); the video grid must survive whole for the guides to be a suffix of the sequence."""
        patch = tuple(self.diffusion_model.patchifier.patch_size)
        _, _, t, h, w = vx.shape
        guide_count = int(keyframe_idxs.shape[2])  # guide tokens before the filter, appended after the video's
        per_frame = h * w
        if patch != (1, 1, 1) or guide_count % per_frame or guide_count >= t * per_frame:
            return "guide tokens are not whole latent frames", t, 0
        if denoise_mask is None or tuple(denoise_mask.shape[2:]) != (t, h, w):
            return "guide tokens without a full denoise mask", t, 0
        tokens = self.diffusion_model.patchifier.patchify(denoise_mask)[0]  # (B, T·H·W, C): ComfyUI's own order
        keep = ~torch.any(tokens < 0, dim=-1)[0]
        main = t * per_frame - guide_count
        if not bool(keep[:main].all()):
            return "the denoise mask drops video tokens", t, 0
        return None, t - guide_count // per_frame, int(keep[main:].sum())

    def dense_reason(self, key: BlockKey, args: dict, forward_info: dict) -> str | None:
        """Why this block call's video self-attention must be left to ComfyUI (see the module doc), or None."""
        to = args.get("transformer_options") or {}
        if not to.get("run_vx", True):
            return VIDEO_NOT_RUN
        if to.get("stg_skip_self_attn", False):
            return STG_SKIPPED
        mask = args.get("self_attention_mask")
        if mask is not None and not torch.is_tensor(mask):
            # newer ComfyUI's GuideAttentionMask: attn1 becomes several calls over query slices, each with a soft
            # bias over all keys; none of them is the whole-sequence self-attention the routing describes
            return GUIDE_MASK
        return forward_info.get("layout_error")

    def video_span(self, key, args, num_video_tokens, forward_info):
        extra = args["img"][0].shape[1] - num_video_tokens
        if extra != forward_info.get("guide_tokens", 0):
            return None  # tokens we cannot place (another node added some): stay dense
        return (0, extra)

    def text_layout(self, q_tokens, k_tokens, joint, num_video, text_tokens, facts):
        # the embeddings connectors mix every caption token with the others before the blocks (module doc)
        return None

    def router_input(self, key, args, span):
        import comfy.ldm.common_dit

        block = self.diffusion_model.transformer_blocks[key.block_index]
        vx = args["img"][0]
        shift, scale = block.get_ada_values(block.scale_shift_table, vx.shape[0], args["v_timestep"], slice(0, 2))
        x_mod = comfy.ldm.common_dit.rms_norm(vx) * (1 + scale) + shift  # as BasicAVTransformerBlock.forward
        prefix, suffix = span
        return x_mod[:, prefix:x_mod.shape[1] - suffix]

    def ffn_paths(self):
        # the video stream's feed-forward (token-wise); the audio one is small
        blocks = self.diffusion_model.transformer_blocks
        return [f"diffusion_model.transformer_blocks.{i}.ff" for i in range(len(blocks))]
