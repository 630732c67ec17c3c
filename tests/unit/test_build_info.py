"""What ``offload version`` and the start say about the compiled data path
(offload.build_info)."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

import offload.tls.stream
from offload.build_info import DataPath, data_path

MODULES = ("offload.tls.stream", "offload.l4.relay")


def test_a_compiled_build_says_so_and_warns_of_nothing() -> None:
    path = DataPath("compiled", "", MODULES, ())
    assert path.describe() == "data path compiled (mypyc, 2 modules)"
    assert path.warning() is None


def test_a_build_that_failed_to_compile_warns_at_every_start() -> None:
    path = DataPath("failed", "gcc: command not found", (), MODULES)
    assert path.describe() == "data path pure Python (compiling failed at install: gcc: command not found)"
    warning = path.warning()
    assert warning is not None
    assert "pure Python" in warning and "gcc: command not found" in warning
    assert "reinstall offload" in warning


def test_skipping_the_compiler_on_purpose_is_not_warned_about() -> None:
    path = DataPath("skipped", "OFFLOAD_COMPILE=0", (), MODULES)
    assert path.describe() == "data path pure Python (not compiled: OFFLOAD_COMPILE=0)"
    assert path.warning() is None


def test_a_compiled_build_with_a_module_running_as_python_warns() -> None:
    path = DataPath("compiled", "", MODULES[:1], MODULES[1:])
    assert path.describe() == "data path partly compiled (1 of 2 modules)"
    assert path.warning() is not None and "offload.l4.relay" in path.warning()  # type: ignore[operator]


def test_this_install_is_described_as_it_is() -> None:
    compiled = str(offload.tls.stream.__file__).endswith(tuple(EXTENSION_SUFFIXES))
    found = data_path()
    assert ("offload.tls.stream" in found.compiled) is compiled
    assert found.warning() is None, "the test installs are built as they mean to be"
