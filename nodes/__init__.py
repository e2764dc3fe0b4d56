"""ComfyUI-facing layer: V3 nodes, one adapter per model family, and the patcher that installs MoGA on a clone.

Where each concept lives:

- ``extension.py``: the node list ComfyUI asks for; ``types.py``: the custom socket types.
- one file per node (or pair of nodes): ``apply.py``, ``load_model.py``, ``load_router.py``, ``save_router.py``,
  ``calibrate.py`` (with the calibration pass's own patch holder), ``multishot.py``, ``long_video.py``.
- ``options.py``: MoGA's options as node inputs and `PatchOptions` (derived from `moga_core.MogaConfig`).
- ``wiring.py``: every key the pack reads or writes in ComfyUI's ``model_options``/``transformer_options``, and
  the helpers that read them (call options, latent grid, shot plan and cuts).
- ``patcher.py``: the patch holders and how they are installed (DIFFUSION_MODEL wrapper, block replace patches,
  attention override); `MogaPatch` runs MoGA.
- ``shots.py``: shot plans (text -> frames -> latent frames, caption ranges); pure Python, mirrored by
  ``web/shot_plan.js``; ``shot_attention.py``: per-shot captions inside the model.
- ``adapters/``: what the patcher needs to know about each model family; ``router_files.py``: ``models/moga``.
- raylight (multi-GPU): ``ray_patch.py`` (the node; imports ``ray`` only when it runs), ``raylight_worker.py``
  (what each worker runs), ``sequence_parallel.py`` (the patch holder and Wan self-attention rewire under Ulysses
  sequence parallelism).

Imports go one way: nodes -> patcher -> (options, wiring, adapters) -> shots; ``tests/core/test_import_graph.py``
fails on a cycle.
"""
