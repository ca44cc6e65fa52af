"""Backend dispatch: device defaults, forcing, fallbacks and their messages."""

import json
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from helpers import randn

import fastcnn
from fastcnn import backends, cli
from fastcnn.functional import local_response_norm


def run_python(code, **env):
    """Runs code in a fresh interpreter (environment variables are read at import)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("FASTCNN_BACKEND",
                                                                 "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_cpu_tensors_run_the_cpp_kernels_by_default():
    assert backends.select("op", torch.zeros(1)) == "cpp"


def test_use_backend_forces_and_restores():
    x = torch.zeros(1)
    with fastcnn.use_backend("reference"):
        assert backends.select("op", x) == "reference"
        with fastcnn.use_backend(None):
            assert backends.select("op", x) == "cpp"
        assert backends.select("op", x) == "reference"
    assert backends.select("op", x) == "cpp"


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of reference, cpp, triton"):
        with fastcnn.use_backend("cuda"):
            pass


def test_cpp_backend_refuses_other_devices():
    with fastcnn.use_backend("cpp"):
        with pytest.raises(backends.BackendUnavailableError, match="CPU tensors only"):
            local_response_norm(torch.empty(2, 3, 4, device="meta"), 3)


def test_devices_without_kernels_run_the_reference_and_say_so_once(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    device = torch.device("meta")  # meta tensors only propagate shapes, like any device here
    assert backends.select("op", torch.empty(1, device=device)) == "reference"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            backends.report_fallback("local_response_norm", "reference", device)
    assert len(caught) == 1 and caught[0].category is backends.FallbackWarning
    assert "no kernels for meta tensors" in str(caught[0].message)


def test_missing_backend_falls_back_once_and_errors_when_named(monkeypatch):
    monkeypatch.setitem(backends._STATUS, "cpp", backends.Status(False, "not built (test)"))
    monkeypatch.setattr(backends, "_warned", set())
    x = randn(2, 6, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = local_response_norm(x, 3)
        local_response_norm(x, 3)
    fallbacks = [w for w in caught if w.category is backends.FallbackWarning]
    assert len(fallbacks) == 1 and "not built (test)" in str(fallbacks[0].message)
    torch.testing.assert_close(y, torch.nn.functional.local_response_norm(x, 3))
    with pytest.raises(backends.BackendUnavailableError, match="'cpp'.*not built"):
        with fastcnn.use_backend("cpp"):
            pass


def test_environment_variable_forces_a_backend():
    code = ("import torch, fastcnn; "
            "print(fastcnn.backends.select('op', torch.zeros(1)))")
    result = run_python(code, FASTCNN_BACKEND="reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"


def test_environment_variable_with_an_unknown_name_is_an_error():
    result = run_python("import fastcnn", FASTCNN_BACKEND="fast")
    assert result.returncode != 0
    assert "FASTCNN_BACKEND must be one of reference, cpp, triton or auto" in result.stderr


def test_triton_on_cpu_tensors_needs_the_interpreter():
    code = ("import torch, fastcnn\n"
            "if torch.cuda.is_available(): raise SystemExit('has a GPU')\n"
            "fastcnn.functional.local_response_norm(torch.randn(2, 3, 4), 3)\n")
    result = run_python(code, FASTCNN_BACKEND="triton")
    assert result.returncode != 0
    assert "TRITON_INTERPRET=1" in result.stderr


def test_info_lists_every_backend_with_a_reason():
    info = backends.info()
    assert info["fastcnn"] == fastcnn.__version__
    assert info["torch"] == torch.__version__
    for name in backends.BACKENDS:
        status = info["backends"][name]
        assert isinstance(status["available"], bool) and status["reason"]
    assert info["cpp_build"]["openmp"] is True
    assert backends._minor(info["cpp_built_for"]) == backends._minor(info["torch"])


def test_use_backend_blocks_overlapping_across_threads_restore_cleanly():
    """Thread A enters, thread B enters, A leaves, B leaves: B's choice holds while it is
    open, and the automatic choice is back at the end."""
    a_entered, b_entered, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with fastcnn.use_backend("cpp"):
            a_entered.set()
            b_entered.wait(10)
        a_left.set()

    def b():
        a_entered.wait(10)
        with fastcnn.use_backend("reference"):
            b_entered.set()
            a_left.wait(10)
            seen["inside"] = backends.select("op", torch.zeros(1))

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["inside"] == "reference"
    assert backends._forced is None and backends.select("op", torch.zeros(1)) == "cpp"


def _fallback_warnings_of_a_few_ops():
    """The FallbackWarnings of several fastcnn ops on CPU tensors, checked against torch."""
    x = randn(2, 6, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = local_response_norm(x, 3)
        local_response_norm(x, 3)
        z = fastcnn.functional.max_pool2d(x, 3, 2)
    torch.testing.assert_close(y, torch.nn.functional.local_response_norm(x, 3))
    torch.testing.assert_close(z, torch.nn.functional.max_pool2d(x, 3, 2))
    return [w for w in caught if w.category is backends.FallbackWarning]


def test_extension_that_does_not_load_falls_back_with_one_warning(monkeypatch):
    real_import = backends.importlib.import_module

    def failing_import(name, *args):
        if name == "fastcnn._C":
            raise ImportError("fastcnn/_C.so: undefined symbol: _ZN3c104impl3fooEv")
        return real_import(name, *args)

    monkeypatch.setattr(backends.importlib, "import_module", failing_import)
    module, status, built_for = backends._probe_cpp(build_info={"torch": str(torch.__version__)})
    assert module is None and not status.available and built_for == str(torch.__version__)
    assert "undefined symbol" in status.reason
    assert "pip install --no-build-isolation ." in status.reason

    monkeypatch.setitem(backends._STATUS, "cpp", status)
    monkeypatch.setattr(backends, "_warned", set())
    fallbacks = _fallback_warnings_of_a_few_ops()
    assert len(fallbacks) == 1, [str(w.message) for w in fallbacks]
    assert "undefined symbol" in str(fallbacks[0].message)


def test_extension_built_for_another_torch_is_not_loaded(monkeypatch):
    def no_import(name, *args):
        raise AssertionError(f"imported {name} although it was built for another torch")

    monkeypatch.setattr(backends.importlib, "import_module", no_import)
    module, status, built_for = backends._probe_cpp(build_info={"torch": "2.13.0+cpu"},
                                                    torch_version="2.14.1+cu130")
    monkeypatch.undo()
    assert module is None and not status.available and built_for == "2.13.0+cpu"
    assert "built for torch 2.13, this is torch 2.14" in status.reason
    assert "wheel built for torch 2.14" in status.reason

    monkeypatch.setitem(backends._STATUS, "cpp", status)
    monkeypatch.setattr(backends, "_warned", set())
    fallbacks = _fallback_warnings_of_a_few_ops()
    assert len(fallbacks) == 1 and "built for torch 2.13" in str(fallbacks[0].message)


def test_same_minor_version_loads_the_extension():
    module, status, built_for = backends._probe_cpp(
        build_info={"torch": f"{backends._minor(torch.__version__)}.99"})
    assert module is not None and status.available


def test_info_shows_the_torch_of_the_build_and_the_running_one(monkeypatch, capsys):
    monkeypatch.setattr(backends, "_cpp_built_for", "2.13.0+cpu")
    monkeypatch.setitem(backends._STATUS, "cpp", backends.Status(False, "built for 2.13 (test)"))
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "built for torch 2.13.0+cpu" in text and f"running torch {torch.__version__}" in text
    assert "built for 2.13 (test)" in text
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpp_built_for"] == "2.13.0+cpu" and info["torch"] == str(torch.__version__)


def test_fastcnn_imports_and_falls_back_when_the_extension_fails_to_load():
    """In a fresh interpreter whose import of fastcnn._C fails (as a missing libtorch symbol
    makes it fail), fastcnn imports, runs on the reference and warns once."""
    code = """
import importlib.abc, sys, warnings
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fastcnn._C":
            raise ImportError("undefined symbol: _ZN3c104impl3fooEv (simulated)")
sys.meta_path.insert(0, Broken())
import torch, fastcnn
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    x = torch.randn(2, 6, 5, 5)
    fastcnn.functional.local_response_norm(x, 3)
    fastcnn.functional.max_pool2d(x, 2)
print(len(caught), caught[0].category.__name__, caught[0].message)
print("C loaded:", "fastcnn._C" in sys.modules)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first.startswith("1 FallbackWarning") and "undefined symbol" in first, first
    assert second == "C loaded: False"


@pytest.mark.skipif(not os.path.exists(backends._BUILD_INFO_FILE),
                    reason="no fastcnn/_build_info.json (the extension was not built by setup.py)")
def test_fastcnn_does_not_load_an_extension_built_for_another_torch():
    code = """
import sys, warnings
import torch
torch.__version__ = torch.torch_version.TorchVersion("2.1.0")  # as if another torch ran
import fastcnn
from fastcnn import backends
print("C loaded:", "fastcnn._C" in sys.modules)
print(backends.info()["backends"]["cpp"]["reason"])
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    loaded, reason = result.stdout.strip().splitlines()[-2:]
    assert loaded == "C loaded: False"
    assert "this is torch 2.1: install the fastcnn wheel built for torch 2.1" in reason
