"""MoGA — Mixture-of-Groups Attention (arXiv 2510.18692) as a plain PyTorch library.

Never imports ComfyUI: diffusers users and researchers can call it on tensors.

    from moga_core import MogaConfig, VideoLayout, Router, moga_attention, reference_attention
"""

from .attention import PlanCache, dense_attention, moga_attention, reference_attention
from .config import MogaConfig, VideoLayout
from .distill import distill_routers
from .parallel import sequence_parallel_moga_attention
from .router import RandomGroups, Router, balance_loss, balanced_assignment, capacity_assignment, kmeans

__all__ = [
    "MogaConfig",
    "VideoLayout",
    "Router",
    "RandomGroups",
    "PlanCache",
    "moga_attention",
    "reference_attention",
    "dense_attention",
    "balance_loss",
    "balanced_assignment",
    "capacity_assignment",
    "kmeans",
    "distill_routers",
    "sequence_parallel_moga_attention",
]
__version__ = "0.1.0"
