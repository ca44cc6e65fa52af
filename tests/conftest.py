"""Test setup: with no GPU, the Triton kernels run through Triton's interpreter, which has
to be switched on before fastcnn (and so its kernels) is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

import fastcnn  # noqa: E402
from fastcnn import backends  # noqa: E402

# Hypothesis profiles of tests/fuzz, chosen with pytest's --hypothesis-profile option
# (registered here, in the first conftest pytest reads, so that the option finds them):
# "default" (loaded unless the option names another) is a quick run inside `pytest tests`;
# "ci" draws at least 2,000 examples per op. Both are derandomized (a failure reproduces)
# and keep no example database. max_examples counts the examples of each test on the CPU
# backends; the Triton-interpreter tests draw a twentieth of it
# (fuzz_strategies.triton_settings).
_HYPOTHESIS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    # no explain phase: it reruns a failure hundreds of times (tens of seconds here)
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)

settings.register_profile("default", max_examples=70, **_HYPOTHESIS)
settings.register_profile("ci", max_examples=1905, **_HYPOTHESIS)


def pytest_configure(config):
    # A test that meant to exercise a kernel must not pass on the reference by accident.
    config.addinivalue_line("filterwarnings", "error::fastcnn.backends.FallbackWarning")
    # Triton's interpreter computes with NumPy, which warns where IEEE arithmetic makes
    # inf and NaN on purpose (the tests of special values and extreme magnitudes).
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")


def _backend_devices():
    """(backend, device) pairs that this machine can run, as pytest params."""
    pairs = [("reference", "cpu"), ("cpp", "cpu")]
    if torch.cuda.is_available():
        pairs += [("reference", "cuda"), ("triton", "cuda")]
    if backends.TRITON_INTERPRET:
        pairs.append(("triton", "cpu"))
    return [pytest.param(pair, id=f"{pair[0]}-{pair[1]}") for pair in pairs]


@pytest.fixture(params=_backend_devices())
def backend_device(request):
    """Every backend on every device it runs on here. A backend that should be here and is
    not fails the test instead of skipping it."""
    name, device = request.param
    status = backends.info()["backends"][name]
    if not status["available"]:
        pytest.fail(f"the {name} backend is not available: {status['reason']}")
    with fastcnn.use_backend(name):
        yield name, device
