"""Ctrl-C while the ``lambdaskip`` command starts (importing torch takes seconds) gives the documented one
line and exit status 130, for ``python -m lambdaskip`` and for the console script.

The window is made deterministic: a ``sitecustomize`` in a temporary directory on PYTHONPATH puts a finder
first on ``sys.meta_path`` that, when ``torch`` is first imported, prints ``importing torch`` on stdout and
sleeps; the test sends SIGINT once it has read that line, so the signal lands inside ``import torch``.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from signal_helpers import sigint_as_in_a_terminal

SLOW_TORCH = '''
import sys, time

class SlowTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("importing torch", flush=True)
            time.sleep(60)
        return None

sys.meta_path.insert(0, SlowTorch())
'''


def _interrupt_while_importing_torch(command, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SLOW_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    process = subprocess.Popen([*command, "collapse", "--out", str(out)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    assert process.stdout.readline() == "importing torch\n", process.communicate(timeout=60)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, "lambdaskip: interrupted\n")
    assert not out.exists()


def test_ctrl_c_while_python_m_lambdaskip_imports_torch(tmp_path):
    _interrupt_while_importing_torch([sys.executable, "-m", "lambdaskip"], tmp_path)


def test_ctrl_c_while_the_console_script_imports_torch(tmp_path):
    script = Path(sys.executable).with_name("lambdaskip")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (the package is not pip-installed)")
    _interrupt_while_importing_torch([str(script)], tmp_path)


def test_importing_the_package_and_the_cli_loads_no_torch():
    """What makes the above hold: torch loads inside the command's Ctrl-C handling, not before it; the
    package's names still load on first use."""
    code = ("import sys, lambdaskip, lambdaskip.cli; assert 'torch' not in sys.modules; "
            "from lambdaskip import LambdaSkip, mu, ops; print(LambdaSkip.__module__, mu.__module__, ops.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lambdaskip.modules.lambda_skip", "lambdaskip.metrics", "lambdaskip.ops"]
