"""The inference tier stays thin: its import set in a fresh interpreter, and its generated protocol
code is what the committed .proto gives (regenerated in a child process, compared byte for byte)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

HEAVY = ("torch", "apache_beam", "mlflow", "feast", "great_expectations", "tritonclient", "kserve",
         "millrace.pipelines", "millrace.training.run", "millrace.training.registry", "millrace.training.export")


def test_the_server_modules_load_nothing_heavy():
    code = textwrap.dedent("""
        import json, sys
        import millrace.serving.__main__, millrace.serving.server, millrace.serving.repository
        import millrace.serving.recommender, millrace.serving.reload, millrace.serving.batching
        import millrace.serving.metrics, millrace.serving.security, millrace.serving.logs
        import millrace.features.online, millrace.features.spec, millrace.features.offline  # the recommender's
        print(json.dumps(sorted(sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "grpc" in loaded and "millrace.serving.proto.inference_pb2" in loaded  # the check sees real imports
    assert not [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_the_generated_protocol_code_is_current():
    proc = subprocess.run([sys.executable, "-m", "millrace.serving.proto.generate", "--check"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
