"""The layout: btc_assets imports neither the local stack nor the test kit, and a non-editable install runs."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from btc_testkit import history_emulator

REPO = Path(__file__).resolve().parents[2]
DEV_PACKAGES = ("btc_localstack", "btc_testkit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, at any depth of the file (lazy imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_btc_assets_imports_no_dev_package_directly_or_through_another_module():
    graph = {_module_name(path): _imports(path, _module_name(path)) for path in (REPO / "btc_assets").rglob("*.py")}
    for path in [*(REPO / "btc_localstack").rglob("*.py"), *(REPO / "btc_testkit").rglob("*.py")]:
        graph[_module_name(path)] = set()  # dev modules: reaching one at all is the violation
    offending = {}
    for start in [name for name in graph if name.startswith("btc_assets")]:
        seen, stack, parents = {start}, [start], {start: None}
        while stack:
            current = stack.pop()
            for target in graph.get(current, ()):
                if target in graph and target not in seen:
                    seen.add(target)
                    parents[target] = current
                    stack.append(target)
        for reached in seen:
            if reached.startswith(DEV_PACKAGES):
                chain = [reached]
                while parents[chain[-1]]:
                    chain.append(parents[chain[-1]])
                offending[start] = " <- ".join(chain)
                break
    assert not offending, "btc_assets reaches a dev package:\n" + "\n".join(offending.values())


def test_every_btc_assets_module_imported_loads_no_dev_package():
    """The same at run time: import the whole product package and look at sys.modules."""
    script = (
        "import importlib, pkgutil, sys, btc_assets\n"
        "for info in pkgutil.walk_packages(btc_assets.__path__, 'btc_assets.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('btc_localstack', 'btc_testkit')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    """What the graph walk above is built from: an import inside a function and a relative one are seen."""
    lazy = tmp_path / "b.py"
    lazy.write_text("def f():\n    import btc_testkit.generator\n")
    relative = tmp_path / "a.py"
    relative.write_text("from . import b\nfrom ..clients import storage\n")
    assert "btc_testkit.generator" in _imports(lazy, "btc_assets.history.b")
    assert {"btc_assets.history.b", "btc_assets.clients.storage"} <= _imports(relative, "btc_assets.history.a")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed, not editable, into a fresh venv outside the checkout."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    # Built from a copy: setuptools builds in the source tree, and would leave a build/ (a stale second copy of the
    # package) in the user's checkout. The copy leaves out what git ignores (venv, stacks, build output).
    ignored = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", *ignored))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=900, cwd=root)
    assert built.returncode == 0, built.stderr[-3000:]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    wheel = next(wheels.glob("btc_trades_pipeline-*.whl"))
    # --no-compile: pip byte-compiles every module of every dependency (pyspark, dagster, pandas) up front, ~30 s
    # of the install; Python compiles the few the test imports when it imports them.
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile", str(wheel)],
                             capture_output=True, text=True, timeout=1800, cwd=root)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _installed_env(stack_env: dict[str, str], home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("BTC_")}
    env.update(stack_env)
    env.pop("BTC_DATA_DIR", None)
    env["DAGSTER_HOME"] = str(home)
    return env


def test_a_non_editable_install_validates_and_materializes_minute_bars(stack, installed, tmp_path):
    python = installed / "bin" / "python"
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = _installed_env(stack.env(), home)
    where = subprocess.run([str(python), "-c", "import btc_assets, btc_assets.config as c; "
                            "print(btc_assets.__file__); print(c.mapreduce_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert where.returncode == 0, where.stderr
    package_file, mapreduce_dir = where.stdout.split()
    assert str(installed) in package_file and str(REPO) not in package_file
    assert mapreduce_dir == str(installed / "share" / "btc-trades-pipeline" / "mapreduce")

    validate = subprocess.run([str(installed / "bin" / "dagster"), "definitions", "validate", "-m", "btc_assets.definitions"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert validate.returncode == 0, validate.stdout[-2000:] + validate.stderr[-3000:]

    day = "2025-03-05"
    with history_emulator.serve(cache_dir=tmp_path / "archive", symbols=("BTCUSDT",), trades_per_day=30_000) as archive:
        env["BTC_BINANCE_HISTORY_URL"] = archive.base_url
        run = subprocess.run([str(installed / "bin" / "dagster"), "asset", "materialize", "-m", "btc_assets.definitions",
                              "--select", "raw_trades,exchange_klines,minute_bars", "--partition", day],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "RUN_SUCCESS" in output, output[-4000:]
    assert str(installed / "share" / "btc-trades-pipeline" / "mapreduce" / "mapper.py") in output  # the installed scripts ran

    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    event = instance.get_latest_materialization_event(dg.AssetKey("minute_bars"))
    assert event is not None and event.asset_materialization.partition == day
    assert event.asset_materialization.metadata["trades"].value == 30_000
    from btc_assets.clients.storage import Storage

    fs = Storage.for_url(stack.env()["BTC_HDFS_URL"], "/btc", webhdfs_url=stack.env()["BTC_WEBHDFS_URL"])
    parts = fs.fs.list(f"/btc/agg/minute/symbol=BTCUSDT/date={day}")
    assert any(part.path.rsplit("/", 1)[1].startswith("part-") and part.length > 0 for part in parts)
