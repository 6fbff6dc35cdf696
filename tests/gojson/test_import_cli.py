"""`vsm-pool sectors import` of damocles JSON lines against a daemon: refused lines are named
(file:line: field: cause), counted, and nothing of them is stored; the rest is imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..daemon.conftest import daemon  # noqa: F401 - the module's daemon
from ..daemon.harness import Daemon

pytestmark = pytest.mark.timeout(180)

CID = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"


def _line(number: int, extra: str = "") -> str:
    return '{"ID":{"Miner":4321,"Number":%d},"SectorType":8%s}' % (number, extra)


def test_import_refuses_lines_go_refuses(daemon: Daemon, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "states.jsonl"
    lines = [
        _line(1),
        _line(2, ',"Pre":{"CommR":{"/":""},"CommD":null}'),  # line 2: empty CID
        _line(3, ',"Pre":{"CommR":{"/":"%s"},"Deals":[7]}' % CID),  # pre-2024: Pre.Deals ignored
        _line(4, ',"Ticket":{"Ticket":"AQID","Epoch":1.5}'),  # line 4: an epoch of 1.5
        '{"SectorType":8}',  # line 5: no ID
        "",
        _line(7, ',"Finalized":"yes"'),  # line 7
        _line(8, ',"Deals":[{"ID":1,"Proposal":{"Client":"t01234","Label":"\\u003cx\\u003e"}}]'),
    ]
    path.write_text("\n".join(lines) + "\n")
    proc = daemon.cli("sectors", "import", str(path), check=False)
    assert proc.returncode == 1, proc
    refused = [line for line in proc.stderr.splitlines() if line.startswith("refused ")]
    assert refused == [
        f"refused {path}:2: Pre.CommR: not a CID: invalid cid: cid was incorrectly formatted (empty)",
        f"refused {path}:4: Ticket.Epoch: not an int64: number 1.5",
        f"refused {path}:5: ID: missing: a state without its sector ID would be stored as m-0-n-0",
        f"refused {path}:7: Finalized: not a bool: string",
    ], proc.stderr
    assert f"imported 3 of 7 sectors from {path}; 4 refused; unknown fields ignored as Go ignores them: PreCommitInfo.Deals x1" in proc.stdout
    for number in (1, 3, 8):
        daemon.rpc("sectors.get", {"miner": 4321, "number": number})
    for number in (2, 4, 7):  # nothing of a refused line is stored
        assert "no sector m-4321-n-%d" % number in daemon.rpc_error("sectors.get", {"miner": 4321, "number": number})["message"]
    assert daemon.rpc("sectors.get", {"miner": 4321, "number": 8})["Deals"][0]["Proposal"]["Client"] == "f01234"


def test_parquet_import_refuses_rows_go_could_not_hold(daemon: Daemon, tmp_path: Path) -> None:  # noqa: F811
    from bench.states import make_state
    from vsm.sectors import write_import_file

    states = [make_state(4322, n, with_piece=True) for n in range(5)]
    states[1].pre.comm_r = "bafyinvalid"  # type: ignore[union-attr]
    states[3].pieces[0].deal_info.client = "t01234"  # type: ignore[index,union-attr]
    path = tmp_path / "states.parquet"
    write_import_file(str(path), states)
    proc = daemon.cli("sectors", "import", str(path), check=False)
    assert proc.returncode == 1, proc
    refused = [line for line in proc.stderr.splitlines() if line.startswith("refused ")]
    assert [line.split(": ")[0:2] for line in refused] == [
        [f"refused {path}:row 2", "Pre.CommR"], [f"refused {path}:row 4", "Pieces[0].DealInfo.Client"],
    ], proc.stderr
    assert f"imported 3 of 5 sectors from {path}; 2 refused" in proc.stdout
    for number, there in ((0, True), (1, False), (2, True), (3, False), (4, True)):
        reply = daemon.post_rpc({"jsonrpc": "2.0", "id": 1, "method": "sectors.get", "params": {"miner": 4322, "number": number}})[1]
        assert ("error" not in reply) == there, (number, reply)
