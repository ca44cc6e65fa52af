"""Backend dispatch: device defaults, forcing, fallbacks and their messages."""

import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from helpers import randn

import fastcnn
from fastcnn import backends
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
