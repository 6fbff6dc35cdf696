"""The commands that talk to a running daemon start fast (issue 14): their path imports none
of the heavy modules. A stub daemon (http.server) answers the JSON-RPC calls, so what is
checked is the real command, end to end, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO

pytestmark = pytest.mark.timeout(60)

HEAVY = ["pyarrow", "duckdb", "multiprocess", "aiohttp", "loguru", "tqdm", "numpy", "psutil", "executors"]

_PROBE = textwrap.dedent(
    """
    import http.server, json, os, sys, threading
    home = os.environ["VSM_HOME"] = sys.argv[1]
    answers = {
        "status": {"daemon": {"pid": 1, "listen": "x", "home": home}, "plugins": [], "sectors": None},
        "query": {"columns": ["n"], "rows": [[3]]},
        "sectors.get": {"ID": {"Miner": 1, "Number": 2}, "SectorType": 8},
        "pieces.stat": {"store": "s", "path": "p", "size": 5},
    }

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": answers[req["method"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with open(os.path.join(home, "daemon.json"), "w") as f:
        json.dump({"pid": os.getpid(), "listen": "127.0.0.1:%d" % srv.server_address[1]}, f)
    with open(os.path.join(home, "token"), "w") as f:
        f.write("t" * 32)
    before = set(sys.modules)
    from vsm.cli import main
    for args in (["status"], ["query", "select 3 as n"], ["sectors", "get", "1", "2"], ["pieces", "stat", "s/p"]):
        try:
            main(args, standalone_mode=False)
        except SystemExit as e:
            assert not e.code, (args, e.code)
    srv.shutdown()
    heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(json.loads(sys.argv[2])))
    print("HEAVY=" + json.dumps(heavy))
    """
)


def test_client_commands_import_no_heavy_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), json.dumps(HEAVY)],
        cwd=REPO, capture_output=True, text=True, timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert "m-1-n-2" in proc.stdout and "s/p: 5 bytes" in proc.stdout and "(1 rows)" in proc.stdout, proc.stdout
    heavy = json.loads(proc.stdout.rsplit("HEAVY=", 1)[1])
    assert heavy == [], f"the client commands imported {heavy}"
