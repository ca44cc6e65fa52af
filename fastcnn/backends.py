"""Which kernels run an op: Triton for CUDA tensors, C++ for CPU tensors, the PyTorch
reference for any other device.

`use_backend(name)` (a context manager) and the environment variable FASTCNN_BACKEND,
read when fastcnn is imported, force one backend for every op. Forcing "triton" on CPU
tensors runs Triton's interpreter, which needs TRITON_INTERPRET=1 set before fastcnn is
imported. When the natural backend of a device is missing, the op runs the reference and
says why once (FallbackWarning); asking by name for a missing backend is an error.

The choice is made in Python, per call, before the op's kernel is entered, so
torch.compile sees it as a constant of the traced graph (and re-traces when
`use_backend` changes it); the autograd Function keeps it for the backward.
"""

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import re
import threading
import warnings
from typing import NamedTuple

import torch

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FallbackWarning",
    "info",
    "kernels",
    "report_fallback",
    "select",
    "use_backend",
]

BACKENDS = ("reference", "cpp", "triton")

# The backend each device type runs when none is forced.
_NATURAL = {"cpu": "cpp", "cuda": "triton"}


class FallbackWarning(UserWarning):
    """An op ran on the (slower) PyTorch reference because its kernel backend is missing."""


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot run here."""


class Status(NamedTuple):
    available: bool
    reason: str  # why not, when not available; what it runs, when it is


# Triton decides when a kernel is defined (at import) whether it will be interpreted.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Written by setup.py next to the package when it compiles fastcnn._C: the torch it was
# compiled against, readable without loading the extension.
_BUILD_INFO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")

# How to get kernels that load, for the messages below.
_CPP_FIX = ("install the fastcnn wheel built for torch {torch}, or build fastcnn from source "
            "against this torch: `pip install --no-build-isolation .` (add -e in a checkout)")


def _minor(version):
    """The "major.minor" of a version string ("2.14.1+cu130" -> "2.14"), or None."""
    match = re.match(r"(\d+)\.(\d+)", str(version or ""))
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _read_build_info():
    """What setup.py recorded about the compiled extension (a dict; empty if nothing)."""
    try:
        with open(_BUILD_INFO_FILE) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _probe_cpp(build_info=None, torch_version=None):
    """(module or None, Status, the torch version fastcnn._C was built for or None).

    A mismatched torch minor version is refused before the import: a C++ extension loaded
    into another libtorch than its own can fail to resolve symbols or, worse, crash."""
    build_info = _read_build_info() if build_info is None else build_info
    running = str(torch.__version__ if torch_version is None else torch_version)
    built_for = build_info.get("torch")
    fix = _CPP_FIX.format(torch=_minor(running) or running)
    if built_for and _minor(built_for) != _minor(running):
        return None, Status(
            False, f"fastcnn._C was built for torch {_minor(built_for) or built_for}, this is "
            f"torch {_minor(running) or running}: {fix}"), built_for
    try:
        module = importlib.import_module("fastcnn._C")
    except ModuleNotFoundError as error:
        if error.name != "fastcnn._C":
            return None, Status(False, f"fastcnn._C does not load ({error}): {fix}"), built_for
        return None, Status(
            False, "the C++ extension fastcnn._C is not built (FASTCNN_BUILD_CPP=0, or a "
            f"source install that did not compile it): {fix}"), built_for
    except (ImportError, OSError) as error:
        return None, Status(
            False, f"fastcnn._C does not load ({type(error).__name__}: {error}): {fix}"), built_for
    if not built_for:  # built by hand, without setup.py's record
        built_for = getattr(module, "build_info", dict)().get("torch")
    return module, Status(True, "CPU tensors"), built_for


def _probe_triton():
    if importlib.util.find_spec("triton") is None:
        return Status(False, "Triton is not installed (PyTorch's CUDA wheels bring it)")
    if not (torch.cuda.is_available() or TRITON_INTERPRET):
        return Status(
            False,
            "no CUDA device; to run the Triton kernels on CPU tensors through Triton's "
            "interpreter, set TRITON_INTERPRET=1 before importing fastcnn")
    try:
        importlib.import_module("triton")
    except Exception as error:  # a broken install can fail in many ways
        return Status(False, f"Triton does not import ({type(error).__name__}: {error})")
    if TRITON_INTERPRET:
        return Status(True, "CUDA and CPU tensors, through Triton's interpreter")
    return Status(True, "CUDA tensors")


_cpp_module, _cpp_status, _cpp_built_for = _probe_cpp()
_STATUS = {
    "reference": Status(True, "tensors on any device (pure PyTorch)"),
    "cpp": _cpp_status,
    "triton": _probe_triton(),
}


def _backend_from_environment():
    value = os.environ.get("FASTCNN_BACKEND", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"FASTCNN_BACKEND must be one of {', '.join(BACKENDS)} or auto, got {value!r}")
    return value


# The forced backend (None: chosen from the device) and who forced it. A plain module
# global, so that torch.compile guards on it and re-traces when it changes.
_ENVIRONMENT_BACKEND = _backend_from_environment()
_forced = _ENVIRONMENT_BACKEND
_forced_by = "FASTCNN_BACKEND" if _forced else None
# Open use_backend blocks in the order they were entered, from any thread: the last one
# is in force.
_overrides = []
_overrides_lock = threading.Lock()
_warned = set()


def _unavailable(name, why):
    return BackendUnavailableError(
        f"the {name!r} fastcnn backend was asked for ({_forced_by}) but cannot run: {why}")


def _check_forced(name, device):
    status = _STATUS[name]
    if not status.available:
        raise _unavailable(name, status.reason)
    if name == "cpp" and device.type != "cpu":
        raise _unavailable(name, f"it runs CPU tensors only, got a tensor on {device}")
    if name == "triton" and device.type != "cuda" and not TRITON_INTERPRET:
        raise _unavailable(
            name, f"it runs CUDA tensors, or CPU tensors through Triton's interpreter "
            f"(TRITON_INTERPRET=1 before importing fastcnn); got a tensor on {device}")


def _fallback_reason(device):
    """Why tensors on `device` run the reference when nothing is forced, or None."""
    natural = _NATURAL.get(device.type)
    if natural is None:
        return f"fastcnn has no kernels for {device.type} tensors"
    if not _STATUS[natural].available:
        return (f"the {natural!r} backend for {device.type} tensors is unavailable: "
                f"{_STATUS[natural].reason}")
    return None


def select(op, tensor):
    """The backend that runs `op` on `tensor` (a name from BACKENDS). Free of side effects
    so that torch.compile traces it; a fallback is reported by report_fallback."""
    if _forced is not None:
        _check_forced(_forced, tensor.device)
        return _forced
    if _fallback_reason(tensor.device) is not None:
        return "reference"
    return _NATURAL[tensor.device.type]


def report_fallback(op, backend, device):
    """Warns, once per reason, when `op` runs the reference on `device` although nobody
    asked for it. Called where the kernel runs (inside the custom op), so that compiled
    graphs warn too."""
    if backend != "reference" or _forced == "reference":
        return
    why = _fallback_reason(device)
    if why is None or why in _warned:
        return
    _warned.add(why)
    warnings.warn(
        f"fastcnn.{op} runs on the PyTorch reference, which is slower: {why}. "
        "`fastcnn info` lists the backends.", FallbackWarning, stacklevel=2)


def _apply_overrides():
    global _forced, _forced_by
    if _overrides:
        _, _forced, _forced_by = _overrides[-1]
    else:
        _forced = _ENVIRONMENT_BACKEND
        _forced_by = "FASTCNN_BACKEND" if _forced else None


@contextlib.contextmanager
def use_backend(name):
    """Run every fastcnn op in the block on backend `name` ("reference", "cpp", "triton"),
    or on each device's own backend when `name` is None.

    The setting is process-wide, for every thread: of the blocks open at a time, the one
    entered last is in force, and when all have closed FASTCNN_BACKEND (or the automatic
    choice) is back."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {name!r}")
    if name is not None and not _STATUS[name].available:
        raise BackendUnavailableError(
            f"the {name!r} fastcnn backend cannot run here: {_STATUS[name].reason}")
    token = object()
    with _overrides_lock:
        _overrides.append((token, name, f"use_backend({name!r})"))
        _apply_overrides()
    try:
        yield
    finally:
        with _overrides_lock:
            _overrides[:] = [entry for entry in _overrides if entry[0] is not token]
            _apply_overrides()


def kernels(name):
    """The module holding backend `name`'s kernel entry points (the same names in each)."""
    if name == "cpp":
        return _cpp_module
    if name == "triton":
        return importlib.import_module("fastcnn.kernels.triton")
    if name == "reference":
        return importlib.import_module("fastcnn.kernels.reference")
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info():
    """Versions, devices and, per backend, whether it is available and why not."""
    from fastcnn import __version__

    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        try:
            triton_version = importlib.import_module("triton").__version__
        except Exception:  # reported under backends["triton"]
            pass
    cuda = torch.cuda.is_available()
    return {
        "fastcnn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "forced_backend": _forced,
        "backends": {name: _STATUS[name]._asdict() for name in BACKENDS},
        # the torch fastcnn._C was compiled against (recorded at build time: known even
        # when the extension does not load), next to "torch", the one running
        "cpp_built_for": _cpp_built_for,
        "cpp_build": _cpp_module.build_info() if _cpp_module is not None else None,
    }
