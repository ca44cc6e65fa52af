"""Builds fastcnn and its C++ CPU extension, fastcnn._C.

The extension is compiled against the PyTorch that is installed, so build without build
isolation (pip would otherwise fetch a second, multi-gigabyte torch into a throwaway
environment):

    pip install --no-build-isolation -e .

FASTCNN_BUILD_CPP=0 skips the extension; fastcnn then runs its ops on the PyTorch
reference and says so (`fastcnn info`).

A build that compiles fastcnn._C (wheel, editable or plain install) is tied to the torch
minor version it compiled against (its C++ ABI): its metadata then requires that minor
version (torch>=2.14,<2.15), its version carries it (0.1.0+pt214cpu), and
fastcnn/_build_info.json records the torch version, so that fastcnn can refuse a mismatched
extension before loading it. An sdist, or a build without the extension, keeps the plain
version and the lower bound.
"""

import json
import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version():
    text = (ROOT / "fastcnn" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


# The lowest torch fastcnn's Python code runs with (the extension-free requirement).
TORCH_LOWER_BOUND = "torch>=2.4"
BUILD_INFO = ROOT / "fastcnn" / "_build_info.json"


def compiles_extension():
    """Whether this run builds fastcnn._C: not for an sdist (its users compile it
    against their own torch) and not with FASTCNN_BUILD_CPP=0."""
    return os.environ.get("FASTCNN_BUILD_CPP", "1") != "0" and "sdist" not in sys.argv[1:]


def cpp_extensions():
    if not compiles_extension():
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.exit(
            "fastcnn compiles its C++ extension against the installed PyTorch, and none is "
            "importable here. Install torch first (pip install -r requirements.txt), then "
            "build with: pip install --no-build-isolation -e ."
        )
    if sys.platform == "win32":
        cxx_flags, link_flags = ["/O2", "/openmp", "/std:c++17"], []
    else:
        # -fno-math-errno and -fno-trapping-math let sqrt and the branch-free selects of
        # csrc/cpu/power.h vectorise (no errno is read and no FP trap is ever enabled; NaN
        # and inf still behave as IEEE says); -fno-loop-unroll-and-jam keeps GCC from
        # fusing the row loops of a window sum into one scalar loop; -fopenmp makes
        # at::parallel_for parallel (it is an inline OpenMP region) and links the libgomp
        # that torch has already loaded. -g0 drops the debug info Python's own CFLAGS ask
        # for (12 MB of it).
        cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                     "-fno-loop-unroll-and-jam", "-fno-tree-loop-distribute-patterns", "-Wall"]
        link_flags = ["-fopenmp"]
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    extension = CppExtension(
        name="fastcnn._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def torch_pin():
    """(local version suffix, requirement, build record) for the installed torch."""
    import torch

    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    record = {"torch": str(torch.__version__), "torch_minor": f"{major}.{minor}",
              "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    return f"+pt{major}{minor}cpu", f"torch>={major}.{minor},<{major}.{minor + 1}", record


ext_modules, cmdclass = cpp_extensions()
version, torch_requirement, package_data = read_version(), TORCH_LOWER_BOUND, {}
if ext_modules:
    local, torch_requirement, record = torch_pin()
    version += local
    # read by fastcnn.backends before it imports _C; shipped in the wheel, not in the sdist
    text = json.dumps(record, indent=2) + "\n"
    if not BUILD_INFO.exists() or BUILD_INFO.read_text() != text:
        BUILD_INFO.write_text(text)
    package_data = {"fastcnn": [BUILD_INFO.name]}

setup(
    name="fastcnn",
    version=version,
    description="Hand-written Triton and C++ kernels for classic convolutional networks",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["fastcnn", "fastcnn.*"]),
    package_data=package_data,
    install_requires=[torch_requirement],
    extras_require={"test": ["pytest", "numpy"], "bench": ["pytest", "pytest-benchmark"],
                    "train": ["scikit-learn", "tqdm"], "timm": ["timm"]},
    entry_points={"console_scripts": ["fastcnn = fastcnn.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
