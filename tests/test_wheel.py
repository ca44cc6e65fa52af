"""The binary wheel: built from this checkout, repaired to a manylinux tag, inspected, and
installed into a fresh virtual environment with no compiler, where fastcnn._C must load.

Slow (a build of the extension, about 90 s here): CI runs it. When FASTCNN_TEST_WHEEL names
a repaired wheel (.ci/run builds one before the tests), that wheel is inspected and
installed instead of building a second one.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# Shared libraries that come with torch: the wheel links them, never carries them.
TORCH_LIBRARIES = ("libtorch.so", "libtorch_cpu.so", "libtorch_python.so", "libc10.so",
                   "libgomp.so.1")

TORCH_MAJOR, TORCH_MINOR = (int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def build_repaired_wheel(directory):
    """pip wheel of the checkout, then auditwheel repair with torch's libraries excluded."""
    raw, repaired = directory / "raw", directory / "repaired"
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         str(ROOT), "-w", str(raw)])
    (built,) = raw.glob("fastcnn-*.whl")
    exclude = [arg for lib in TORCH_LIBRARIES for arg in ("--exclude", lib)]
    run([sys.executable, "-m", "auditwheel", "repair", *exclude, "-w", str(repaired),
         str(built)])
    (wheel,) = repaired.glob("fastcnn-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    given = os.environ.get("FASTCNN_TEST_WHEEL")
    if given:
        assert Path(given).is_file(), f"FASTCNN_TEST_WHEEL={given} is not a file"
        return Path(given)
    return build_repaired_wheel(tmp_path_factory.mktemp("wheel"))


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        tags = Parser().parsestr(archive.read(f"{dist_info}/WHEEL").decode()).get_all("Tag")
        build_info = json.loads(archive.read("fastcnn/_build_info.json"))
    return names, metadata, tags, build_info


def test_wheel_holds_the_extension_and_none_of_torch(wheel):
    names, _, _, _ = wheel_metadata(wheel)
    assert [n for n in names if re.fullmatch(r"fastcnn/_C\..*\.so", n)], names
    carried = [n for n in names if re.search(r"lib(torch|c10|gomp)[^/]*\.so", n)]
    assert not carried, f"the wheel carries torch's libraries: {carried}"
    assert wheel.stat().st_size < 5 * 2**20, f"{wheel.stat().st_size} bytes"


def test_wheel_is_manylinux_and_pins_the_torch_minor(wheel):
    from packaging.requirements import Requirement

    _, metadata, tags, build_info = wheel_metadata(wheel)
    assert tags and all(re.fullmatch(r"cp3\d+-cp3\d+-manylinux_\d+_\d+_x86_64", t) for t in tags)
    assert metadata["Version"].endswith(f"+pt{TORCH_MAJOR}{TORCH_MINOR}cpu")
    (torch_requirement,) = [Requirement(r) for r in metadata.get_all("Requires-Dist")
                            if Requirement(r).name == "torch"]
    spec = torch_requirement.specifier
    assert spec.contains(f"{TORCH_MAJOR}.{TORCH_MINOR}.0")
    assert spec.contains(f"{TORCH_MAJOR}.{TORCH_MINOR}.9")
    assert not spec.contains(f"{TORCH_MAJOR}.{TORCH_MINOR + 1}.0")
    assert not spec.contains(f"{TORCH_MAJOR}.{TORCH_MINOR - 1}.9")
    assert build_info["torch"] == str(torch.__version__)


SMOKE = """
import sys, warnings
import torch
import fastcnn, fastcnn._C
from fastcnn import backends
assert fastcnn.__file__.startswith(sys.prefix), (fastcnn.__file__, sys.prefix)
assert backends.info()["backends"]["cpp"]["available"], backends.info()["backends"]["cpp"]
warnings.simplefilter("error", backends.FallbackWarning)
x = torch.randn(2, 8, 13, 11)
with fastcnn.use_backend("cpp"):
    y = fastcnn.functional.max_pool2d(x, 3, 2, padding=1)
    z = fastcnn.functional.local_response_norm(x, 5, alpha=1e-3, beta=0.75, k=2.0)
torch.testing.assert_close(y, torch.nn.functional.max_pool2d(x, 3, 2, padding=1), rtol=0, atol=0)
torch.testing.assert_close(z, torch.nn.functional.local_response_norm(x, 5, 1e-3, 0.75, 2.0))
print("smoke ok", fastcnn.__file__)
"""


def test_wheel_installs_without_a_compiler_and_loads(wheel, tmp_path):
    venv = tmp_path / "venv"
    # pip comes from the system site-packages (as torch does): no ensurepip, faster
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    no_compiler = tmp_path / "no-compiler"
    no_compiler.mkdir()
    for name in ("cc", "c++", "gcc", "g++", "clang", "clang++"):
        (no_compiler / name).symlink_to("/bin/false")
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false",
               PATH=f"{no_compiler}:{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    # --ignore-installed: the system's editable fastcnn has the same version
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
         "-q", str(wheel)], env=env, cwd=tmp_path)
    result = run([str(python), "-c", SMOKE], env=env, cwd=tmp_path)
    assert str(venv) in result.stdout
    info = json.loads(run([str(venv / "bin" / "fastcnn"), "info", "--json"], env=env,
                          cwd=tmp_path).stdout)
    assert info["cpp_built_for"] == info["torch"] == str(torch.__version__)
    assert info["backends"]["cpp"]["available"]
