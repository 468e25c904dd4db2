"""The notebooks run top to bottom against ``derim demo`` (the simulated fleet on a free port),
in a kernel of this interpreter, and are committed without outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from influxd import free_ports
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from test_demo import wait_for

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01_data_exploration", "02_protocol_demo", "03_digital_twin_training",
         "04_api_client_demo"]  # fmt: skip
KERNEL = "derim-notebooks"
CELL_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``derim demo`` on a free port, its URL in ``DERIM_URL``, with a private IPython and
    Jupyter runtime folder so no user state is read or written."""
    home = tmp_path_factory.mktemp("notebooks")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DERIM_DATA_DIR": str(home / "data"), "DERIM_OCPP_PORT": "0",
           "DERIM_LOG_LEVEL": "WARNING"}  # fmt: skip
    log = (home / "demo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "derim.cli", "demo", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DERIM_URL", url)
            patch.delenv("DERIM_API_KEY", raising=False)
            patch.setenv("IPYTHONDIR", str(home / "ipython"))
            patch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
            wait_for(lambda: httpx.get(f"{url}/health", timeout=2).is_success, "the API", 60,
                     process)  # fmt: skip
            live = f"{url}/api/v1/telemetry/pv-roof-1/latest"
            wait_for(lambda: httpx.get(live, timeout=5).is_success, "live data", 30, process)
            yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec running ipykernel in this very interpreter (the project's venv),
    whatever kernels the user has installed."""
    folder = tmp_path_factory.mktemp("kernels")
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "DERIM notebooks", "language": "python"}  # fmt: skip
    (folder / KERNEL).mkdir()
    (folder / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)])


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name: str, demo: str, kernels: KernelSpecManager) -> None:
    """Every cell of the notebook runs without error against the running demo."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    manager = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernels)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    """Stored notebooks carry no outputs or execution counts (what nbstripout leaves)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
