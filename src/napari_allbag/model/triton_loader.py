"""Load triton with its own LLVM, even where software OpenGL put another LLVM in the process.

Why (issue 12): napari crashed with a segmentation fault the first time a widget needed a model
on Mesa's software OpenGL (llvmpipe: Xvfb, virtual machines, remote desktops). The chain:

1. napari's canvas creates a GL context; Mesa's loader dlopens its DRI driver (swrast_dri.so)
   with RTLD_GLOBAL, so the driver's libLLVM (LLVM 15 on Debian 12) joins the process's *global*
   symbol scope.
2. The plugin's first `import timm` imports torchvision, whose `torchvision.ops` imports
   `torch._dynamo`, whose `torch._dynamo.utils` calls `torch.utils._triton.has_triton_package()`,
   which imports triton (plain `import torch` does not).
3. triton's `libtriton.so` links its own, newer LLVM statically but exports those symbols and is
   not built with -Bsymbolic, so the dynamic linker binds its LLVM references to the LLVM 15
   already in the global scope (ELF symbol interposition: ~12,000 bindings, `LD_DEBUG=bindings`).
   Its static initialisers (PassBuilder.cpp's DebugCounter registration) then run LLVM 15 code
   on the data of triton's LLVM (a 23.0 development build) and `free()` a bogus pointer:
   SIGSEGV inside dlopen, before Python sees it.

The other order (triton first, GL later: the CLI's `demo --napari`) is safe: Python loads
extension modules RTLD_LOCAL, so Mesa's LLVM never sees triton's.

The fix, run when this module is imported (`model.networks` imports it before timm, and every path to
a model goes through `model.networks`): before anything can import triton, when another LLVM is already
global, import triton with RTLD_DEEPBIND, so libtriton resolves its symbols in itself first.
triton stays fully usable (it compiles kernels to PTX and cubin this way with Mesa's LLVM
loaded). Should that import fail, triton is marked unavailable, as on a machine without it
(torch runs without triton; only `torch.compile` on a CUDA device needs it), rather than letting
a later plain import crash.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import warnings

#: A function every LLVM build exports (its C API) and triton's libtriton.so carries too.
_LLVM_PROBE_SYMBOL = "LLVMContextCreate"


def llvm_in_global_scope() -> bool:
    """True when a library loaded RTLD_GLOBAL (e.g. Mesa's llvmpipe) exports LLVM's symbols."""
    try:
        return hasattr(ctypes.CDLL(None), _LLVM_PROBE_SYMBOL)
    except OSError:  # no dlopen(NULL) on this platform
        return False


def load_triton_safely() -> str:
    """Import triton now if a plain import later could crash; say what was done.

    Returns "loaded" (imported with RTLD_DEEPBIND), "blocked" (that failed: triton marked
    unavailable), or "not needed" (triton already imported or absent, no foreign LLVM in the
    global scope, or a platform without RTLD_DEEPBIND, i.e. not Linux).
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if "triton" in sys.modules or deepbind is None or not llvm_in_global_scope():
        return "not needed"
    if importlib.util.find_spec("triton") is None:
        return "not needed"
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401 - loaded for its side effect: libtriton bound to itself
    except Exception as error:  # noqa: BLE001 - any failure: run without triton, never crash
        sys.modules["triton"] = None  # later `import triton` raises ImportError
        warnings.warn(f"triton disabled in this process: {error}", RuntimeWarning, stacklevel=2)
        return "blocked"
    finally:
        sys.setdlopenflags(flags)
    return "loaded"


load_triton_safely()
