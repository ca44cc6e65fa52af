"""Hypothesis profiles of the fuzz tests, chosen with pytest's --hypothesis-profile option:

- "default" (loaded unless the option names another): a quick run inside `pytest tests`.
- "ci": at least 2,000 examples per op in all, for a CI job of its own:
  `python -m pytest tests/fuzz --hypothesis-profile=ci`.

Both are derandomized (every run draws the same examples, so a failure reproduces) and keep
no example database. max_examples is the count of each test that runs on the CPU backends
(cpp and reference, drawn per example); the Triton-interpreter tests run a twentieth of it
(fuzz_strategies.triton_settings), the interpreter being slow.
"""

from hypothesis import HealthCheck, Phase, settings

_COMMON = dict(
    derandomize=True,
    database=None,
    deadline=None,
    # no explain phase: it reruns a failure hundreds of times (tens of seconds here)
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)

settings.register_profile("default", max_examples=70, **_COMMON)
settings.register_profile("ci", max_examples=1905, **_COMMON)
