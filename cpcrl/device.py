"""The `device` config group: where tensors live and how torch is set up."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import random
from collections.abc import Callable

import numpy as np
import torch

from cpcrl.checks import choice, optional_positive_int
from cpcrl.errors import ConfigError

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")  # none: eager; else torch.compile's mode


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would call, if one is on PATH."""
    import os
    import shutil

    return next((c for c in (os.environ.get("CXX"), "g++", "clang++") if c and shutil.which(c)), None)


def check_device(cfg) -> None:
    kind = cfg.type
    if kind not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={kind!r} is not a device: valid are auto, cpu, cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible to torch (torch "
                          f"{torch.__version__}); use device=cpu or device=auto, or install a CUDA build "
                          "with `make TORCH=\"torch==<ver> --index-url https://download.pytorch.org/whl/cu128\" "
                          "install`")
    choice("device.precision", cfg.precision, ("fp32", "bf16"))
    choice("device.compile", cfg.compile, COMPILE_MODES)
    on_cpu = kind == "cpu" or (kind == "auto" and not torch.cuda.is_available())
    if cfg.compile != "none" and on_cpu and not cpp_compiler():
        raise ConfigError(f"device.compile={cfg.compile} on the CPU needs a C++ compiler (inductor builds its kernels "
                          "with g++ or clang++, or $CXX) and none is on PATH; install one or use device.compile=none")
    optional_positive_int("device.threads", cfg.threads)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS (no mmap for large
    blocks, no heap trimming). torch on a CPU frees and re-allocates the same tens-of-MB activations every
    update; returned to the OS, each reuse page-faults the memory back in (~25% of a Dreamer S update here;
    PyTorch's CPU tuning guide suggests jemalloc/tcmalloc for the same reason). Peak memory is unchanged; the
    process just holds on to its peak. A no-op (False) off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def make_device(cfg) -> torch.device:
    check_device(cfg)
    kind = cfg.type
    device = torch.device("cuda" if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()) else "cpu")
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cpu" and cfg.get("keep_freed_memory", False):
        keep_freed_memory()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked for; a no-op context otherwise, so call sites stay one line."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(fn: Callable, mode: str) -> Callable:
    """`fn` compiled with torch.compile (`device.compile`), or `fn` itself for `none`. The eager function stays the
    reference: the compiled one draws its random numbers from torch's generator as eager does (inductor's
    `fallback_random`), so a compiled run takes the same samples as the eager run of its seed and the two agree to
    float rounding. Shapes are static (`dynamic=False`): each batch size (acting, training, imagination) gets its
    own graph, which is what CUDA graphs (`reduce-overhead`) need anyway."""
    if mode == "none":
        return fn
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return torch.compile(fn, mode=mode, dynamic=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch RNG states in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
