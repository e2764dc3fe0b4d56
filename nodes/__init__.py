"""ComfyUI-facing layer: V3 nodes, one adapter per model family, and the patcher that installs MoGA on a clone."""
