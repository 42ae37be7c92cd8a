"""The command line's process-wide settings are made before numpy loads (procenv.py), and
importing the package loads neither numpy nor onnx (its names load on first use)."""

import os
import subprocess
import sys

SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
sys.meta_path.insert(0, Spy())
{body}
print(seen)
"""


def _run(body: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", SPY.format(body=body)], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_cli_sets_the_blas_spin_before_numpy_loads():
    from onnx_obc.procenv import BLAS_SPIN
    assert _run("from onnx_obc.cli import main\nimport onnx_obc.pipeline") == f"['{BLAS_SPIN}']"


def test_cli_keeps_the_users_setting():
    assert _run("from onnx_obc.cli import main\nimport onnx_obc.pipeline",
                OPENBLAS_THREAD_TIMEOUT="7") == "['7']"


def test_library_use_leaves_the_process_alone():
    assert _run("from onnx_obc import convert") == "[None]"


def test_package_import_loads_no_numpy_and_names_load_on_use():
    body = ("import onnx_obc\nloaded = {'numpy', 'onnx'} & set(sys.modules)\n"
            "from onnx_obc import convert, Report, ObcError\n"
            "seen[:] = [sorted(loaded), sorted(set(onnx_obc.__all__) - set(dir(onnx_obc)))]")
    assert _run(body) == "[[], []]"
    body = ("import onnx_obc\ntry:\n    onnx_obc.nothing\n"
            "except AttributeError as e:\n    seen[:] = [e]")
    assert _run(body) == "[AttributeError(\"module 'onnx_obc' has no attribute 'nothing'\")]"
