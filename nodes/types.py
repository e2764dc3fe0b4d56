"""Custom socket types of the pack."""

from comfy_api.latest import io

# a moga_core.routers.RouterSet: one router per patched block plus its metadata
MogaRouter = io.Custom("MOGA_ROUTER")
# a shot plan (nodes.shots.ShotPlan): per-shot captions and latent-frame ranges
MogaShots = io.Custom("MOGA_SHOTS")
# raylight's actors: {"workers": [ray actor handle, ...]} (komikndr/raylight's RAY_ACTORS socket)
RayActors = io.Custom("RAY_ACTORS")
