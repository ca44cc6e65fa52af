"""The bad-input harness: a table of calls per op, each made with fastcnn (on every CPU
backend) and with PyTorch, run in a child process so that a crash fails one case instead
of the test run, with a time limit per case so that a hang fails too.

A case passes when fastcnn does what PyTorch does: both return (the same values, dtypes
and input gradients, within tests/helpers.py's tolerances), or both refuse, fastcnn with
an ordinary exception (never MemoryError, ZeroDivisionError, AttributeError, ...) whose
message names the argument the case says it must. Where fastcnn deliberately differs
(PyTorch runs out of memory, reads out of bounds, or has no kernel for a dtype), the case
says how and why, and gives the expected value or demands a refusal.
"""

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TIME_LIMIT_S = 180  # per case, all backends together (Triton's interpreter is slow, and
# PyTorch itself takes seconds for a window of 2^31 - 1)
MEMORY_LIMIT = 8 << 30  # bytes of address space per child: the cases are small, so an
# allocation sized by a user's number fails as an error instead of exhausting the machine

# What a refusal may raise: anything else is a bug that escaped a check.
REFUSALS = (TypeError, ValueError, RuntimeError, NotImplementedError, IndexError)


@dataclasses.dataclass
class Case:
    """ours(track) and theirs(track) each build fresh inputs (the same values), pass the
    tensors to differentiate through track(), and make the call.

    names: words a refusal of ours must contain (the argument and what was expected).
    expected: where PyTorch cannot give the answer, a function giving it.
    refuse: fastcnn refuses although PyTorch returns, for the reason given in `why`.
    precision: the dtype whose tolerance applies, where results carry a narrower dtype's
    rounding than their own (a float64 residual added to a float32 BatchNorm output).
    """
    name: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    names: tuple = ()
    expected: Optional[Callable[[], Any]] = None
    refuse: bool = False
    why: str = ""
    precision: Optional[torch.dtype] = None


def seeded(build):
    """build() with the same random numbers every time it is called."""
    def make():
        torch.manual_seed(0)
        return build()
    return make


def _outcome(call):
    try:
        return "value", call()
    except Exception as error:  # noqa: BLE001 -- sorted below
        return "error", error


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _compare(ours, theirs, precision=None):
    from helpers import tolerance

    ours, theirs = _tensors(ours), _tensors(theirs)
    if len(ours) != len(theirs):
        raise AssertionError(f"{len(ours)} tensors returned, PyTorch returns {len(theirs)}")
    for a, b in zip(ours, theirs):
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            raise AssertionError(f"{a.dtype} {tuple(a.shape)} on {a.device}, PyTorch gives "
                                 f"{b.dtype} {tuple(b.shape)} on {b.device}")
        if a.layout != torch.strided or b.layout != torch.strided:
            a, b = a.to_dense(), b.to_dense()
        if a.device.type == "meta":
            continue
        if a.is_floating_point():
            tol = tolerance(precision or a.dtype)
            scale = max(b.detach().abs().nan_to_num(0, 0, 0).max().item(), 1.0) if b.numel() else 1
            torch.testing.assert_close(a.detach(), b.detach(), equal_nan=True,
                                       rtol=tol["rtol"], atol=tol["atol"] * scale)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _with_gradients(call):
    """call()'s result and, where it is a differentiable tensor, the gradients of its
    first output (against a fixed random gradient) w.r.t. the call's leaf tensors."""
    leaves = []

    def track(t):
        """Marks a fresh input tensor as a leaf to differentiate (where it can be)."""
        if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.is_leaf
                and t.layout == torch.strided and t.device.type != "meta"):
            leaves.append(t.requires_grad_())
        return t

    result = call(track)
    first = _tensors(result)[:1]
    if not leaves or not first or not first[0].requires_grad or first[0].numel() == 0:
        return result
    out = first[0]
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)
    found = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    return (result, [g if g is not None else torch.zeros(()) for g in found])


def check(case, backends):
    """'' when the case passes, or what went wrong."""
    from fastcnn import use_backend

    if case.expected is not None:
        kind_theirs, theirs = _outcome(case.expected)
    else:
        kind_theirs, theirs = _outcome(lambda: _with_gradients(case.theirs))
    problems = []
    for backend in backends:
        with use_backend(backend):
            kind, ours = _outcome(lambda: _with_gradients(case.ours))
        where = f"[{backend}] "
        if kind == "error" and not isinstance(ours, REFUSALS):
            problems.append(f"{where}raised {type(ours).__name__}: {ours}")
        elif kind == "error" and not str(ours).strip():
            problems.append(f"{where}raised {type(ours).__name__} with no message")
        elif kind == "error" and any(n.lower() not in str(ours).lower() for n in case.names):
            problems.append(f"{where}refused without naming {case.names}: "
                            f"{type(ours).__name__}: {ours}")
        elif case.refuse:
            if kind != "error":
                problems.append(f"{where}returned where it must refuse ({case.why})")
        elif kind == "error" and kind_theirs == "value":
            problems.append(f"{where}refused what PyTorch accepts: {type(ours).__name__}: {ours}")
        elif kind == "value" and kind_theirs == "error":
            problems.append(f"{where}returned where PyTorch refuses with "
                            f"{type(theirs).__name__}: {theirs}")
        elif kind == "value":
            try:
                _compare(ours, theirs, case.precision)
            except AssertionError as error:
                problems.append(f"{where}differs from PyTorch: {error}")
    return "; ".join(problems)


def run_table(module, start=0):
    """Child process: checks module's CASES from `start`, one JSON line per case."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    from fastcnn import backends as fastcnn_backends

    names = ["cpp", "reference"] + (["triton"] if fastcnn_backends.TRITON_INTERPRET else [])
    cases = __import__(module).CASES
    for i in range(start, len(cases)):
        print(json.dumps({"i": i, "started": True}), flush=True)
        print(json.dumps({"i": i, "problem": check(cases[i], names)}), flush=True)


def run_in_children(module, count):
    """Parent: every case of `module` in child processes, restarted after a crash or a
    hang. Returns {case index: problem} for the cases that failed."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONFAULTHANDLER="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    problems, start = {}, 0
    while start < count:
        # stderr to a file: a full pipe of warnings would stall the child
        log = tempfile.TemporaryFile()
        child = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); "
             f"import harness; harness.run_table({module!r}, {start})"],
            stdout=subprocess.PIPE, stderr=log, env=env)
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        current, pending = None, b""
        deadline = time.monotonic() + TIME_LIMIT_S
        while True:
            # unbuffered reads: a buffered readline could hold lines the selector never sees
            while b"\n" not in pending:
                if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
                    break
                chunk = os.read(child.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                pending += chunk
            if b"\n" not in pending:
                if child.poll() is None and time.monotonic() >= deadline:
                    child.kill()
                    problems[current if current is not None else start] = (
                        f"no answer within {TIME_LIMIT_S} s (a hang)")
                    break
                child.wait()  # the child died
                log.seek(0)
                stderr = log.read()[-2000:].decode(errors="replace")
                if current is None or current in problems:
                    raise RuntimeError(f"the harness child failed outside a case: {stderr}")
                problems[current] = f"the process died (exit {child.returncode}): {stderr}"
                break
            line, pending = pending.split(b"\n", 1)
            record = json.loads(line)
            current = record["i"]
            if record.get("started"):
                deadline = time.monotonic() + TIME_LIMIT_S
            elif record["problem"]:
                problems[current] = record["problem"]
            if record.get("problem") is not None and current == count - 1:
                break
        child.stdout.close()
        log.close()
        if child.poll() is None:
            child.kill()
        child.wait()
        start = (current if current is not None else start) + 1
    return problems
