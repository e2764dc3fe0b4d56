"""`python -m moga_core info` and `python -m moga_core bench …`.

``python -m moga_core`` needs the folder that holds ``moga_core/`` (the pack's folder, ``ComfyUI-MoGA``) on the
module path: run it there, or with ``PYTHONPATH=/path/to/ComfyUI-MoGA``. From anywhere else, run this file itself:
``python /path/to/ComfyUI-MoGA/moga_core/__main__.py info``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # run as a file: put the pack's folder (the one above moga_core/) on the path in place of this file's own
    # folder (whose module names, e.g. config or plan, must not shadow others), then import the package so that
    # the relative imports below resolve against it
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))
    import moga_core  # noqa: E402,F401

    __package__ = "moga_core"

import torch  # noqa: E402


def info() -> int:
    from . import __version__
    from .backends import available_backends, choose_backend, cudnn_varlen_works, flex_available

    print(f"moga_core {__version__}")
    print(f"torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"CUDA available: {cuda}" + (f" ({torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda})"
                                       if cuda else ""))
    found = available_backends()
    print("backends:")
    for name, ok in found.items():
        note = ""
        if name == "cudnn_varlen" and ok:
            ok = cudnn_varlen_works(torch.device("cuda"), torch.bfloat16)
            from .backends import _cudnn_varlen_state

            why = _cudnn_varlen_state.get(("error", "cuda", torch.bfloat16), "wrong result")
            note = (" (self-test passed; explicit use only, slower than the loop)" if ok
                    else f" (op present, self-test failed: {why}; not used)")
        print(f"  {name:13s} {'yes' if ok else 'no'}{note}")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if flex_available(device):
        print("auto picks on cuda/bfloat16: flex (the block-sparse FlexAttention kernel) for the router-dependent "
              "keys of both combines; the varlen paths below for mean mode's static window and frame branches")
    else:
        why = "no CUDA device" if not cuda else "no Triton or no FlexAttention in this torch"
        print(f"flex (the block-sparse kernel) is not available here ({why}); auto uses the varlen paths")
    print(f"auto picks among the varlen paths on {device.type}/{str(dtype).replace('torch.', '')}: "
          f"{choose_backend('auto', device, dtype, False, False, 8192, 8)} for router groups (sizes change every "
          f"call), {choose_backend('auto', device, dtype, False, False, 4096, 48, stable=True)} for long static "
          f"windows, {choose_backend('auto', device, dtype, False, False, 300, 2000, stable=True)} for many short "
          f"ones, {choose_backend('auto', device, dtype, True, False)} for equal-size segments")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m moga_core {info|bench} [options]   (in the pack's folder, or with it on PYTHONPATH;\n"
              "       from anywhere: python /path/to/ComfyUI-MoGA/moga_core/__main__.py {info|bench} [options])\n"
              "  info   torch, CUDA, which attention backends exist and which `auto` picks\n"
              "  bench  dense vs MoGA time and error on synthetic structured video tokens (no weights needed);\n"
              "         `python -m moga_core bench --help` for options")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        return info()
    if command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    print(f"unknown command {command!r}; expected 'info' or 'bench'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
