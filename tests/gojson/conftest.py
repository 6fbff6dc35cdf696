"""Go itself as the referee: tests/go/gojson built once per session with the local `go`.

Without a Go toolchain these tests are skipped with the reason, unless VSM_REQUIRE_SERVERS=1
(CI, whose .ci/run installs Debian's golang-go) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

GO_SRC = Path(__file__).resolve().parents[1] / "go" / "gojson"


class GoJSON:
    """The built tests/go/gojson program: Go's encoding/json on damocles' SectorState."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def fixtures(self) -> dict[str, bytes]:
        """name -> the bytes json.Marshal writes for a state built in Go."""
        out = subprocess.run([str(self.binary), "fixtures"], capture_output=True, check=True, timeout=60).stdout
        return {name.decode(): js for name, js in (line.split(b"\t", 1) for line in out.splitlines())}

    def roundtrip(self, lines: list[bytes]) -> list[tuple[str, bytes]]:
        """For each line: ("ok", Go's re-encoding) | ("null", b"") | ("err", Go's error text)."""
        assert all(b"\n" not in line for line in lines)
        out = subprocess.run(
            [str(self.binary), "roundtrip"], input=b"".join(line + b"\n" for line in lines),
            capture_output=True, check=True, timeout=60,
        ).stdout.splitlines()
        assert len(out) == len(lines), out[-3:]
        return [(kind.decode(), rest) for kind, rest in (line.split(b"\t", 1) for line in out)]


@pytest.fixture(scope="session")
def go_json(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoJSON]:
    go = shutil.which("go")
    if go is None:
        msg = "no Go toolchain (`go`): apt-get install golang-go to check the Go JSON codec against Go"
        if os.environ.get("VSM_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{msg} (VSM_REQUIRE_SERVERS=1)", pytrace=False)
        pytest.skip(msg)
    tmp = tmp_path_factory.mktemp("gojson")
    env = dict(os.environ, GOPROXY="off", GOFLAGS="", GOTOOLCHAIN="local", CGO_ENABLED="0")
    if not (env.get("GOCACHE") or env.get("HOME") or env.get("XDG_CACHE_HOME")):
        env["GOCACHE"] = str(tmp / "cache")
    binary = tmp / "gojson"
    r = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SRC, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode:
        pytest.fail(f"go build in {GO_SRC} failed:\n{r.stderr}", pytrace=False)
    yield GoJSON(binary)
