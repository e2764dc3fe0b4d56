"""Tools for the pack's developers, never loaded by ComfyUI: `workflow_graph` (ComfyUI's workflow formats in Python:
UI <-> API conversion, the frontend's widget layout, running a prompt in-process) and `build_workflows` (writes the
example workflows in workflows/ with it). The tests use the same module."""
