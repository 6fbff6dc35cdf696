"""`vsm-pool plugin test` as an author runs it: every rule printed with its status, no Meta the
plugin did not ask for, errors as one line at the plugin's own file:line, exit 1 on a failure,
nothing left behind."""

from __future__ import annotations

import json
import os
import re

import pytest

from vsm.plugin.artifact import build
from vsm.plugin.conformance import KVSTORE_CHECKS, OBJSTORE_CHECKS, rule_text

from .conftest import BUNDLED, run_cli

pytestmark = pytest.mark.timeout(120)

KV = 'name = "{name}"\nkind = "KVStore"\nexport = [{{extPoint="Constructor", impl="make_db"}}]\n'
# A correct in-memory KVStore whose Constructor refuses Meta it does not know (like sqlsink).
STRICT_KV = '''\
import copy
from vsm.sdk import EmptyKeyError, KeyNotFoundError, ReadOnlyTransactionError

EXPECTED = {expected!r}


def _k(k):
    if not k:
        raise EmptyKeyError()
    return bytes(k)


class ReadOnly:
    def __init__(self, c):
        self.c = c

    def get(self, k):
        return self.c.get(k)

    def peek(self, k, fn):
        return self.c.peek(k, fn)

    def scan(self, p):
        return self.c.scan(p)

    def put(self, k, v):
        raise ReadOnlyTransactionError()

    def delete(self, k):
        raise ReadOnlyTransactionError()


class Iter:
    def __init__(self, items):
        self.items = iter(items)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.items)

    def close(self):
        pass


class Coll:
    def __init__(self):
        self.d = {{}}

    def get(self, k):
        try:
            return self.d[_k(k)]
        except KeyError:
            raise KeyNotFoundError(repr(k)) from None

    def peek(self, k, fn):
        return fn(self.get(k))

    def put(self, k, v):
        self.d[_k(k)] = bytes(v)

    def delete(self, k):
        self.d.pop(_k(k), None)

    def scan(self, p):
        return Iter(sorted((k, v) for k, v in self.d.items() if k.startswith(p)))

    def view(self, fn):
        return fn(ReadOnly(self))

    def update(self, fn):
        work = Coll()
        work.d = copy.copy(self.d)
        out = fn(work)
        self.d = work.d
        return out

    def need_retry_transactions(self):
        return False


class DB:
    def __init__(self):
        self.c = {{}}

    def run(self):
        pass

    def close(self):
        pass

    def open_collection(self, n):
        return self.c.setdefault(n, Coll())


def make_db(meta):
    if set(meta) != set(EXPECTED):
        raise ValueError(f"unknown Meta keys {{sorted(set(meta) - set(EXPECTED))}}")
    for key, check in EXPECTED.items():
        assert check(meta[key]) if callable(check) else meta[key] == check, (key, meta[key])
    return DB()
'''


def _lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("name, checks", [("sqlitekv", KVSTORE_CHECKS), ("fsstore", OBJSTORE_CHECKS)])
def test_every_rule_is_printed_with_its_status(tmp_path, name, checks):
    artifact, _, _ = build(BUNDLED / name, tmp_path)
    proc = run_cli("plugin", "test", str(artifact))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    assert lines[: len(checks)] == [f"PASS  {c.__name__}: {rule_text(c)}" for c in checks]
    assert lines[-1].startswith(f"{'KVStore' if name == 'sqlitekv' else 'ObjStore'}/{name}: {len(checks)} passed, 0 failed (cleanup: removed ")
    assert not list(tmp_path.glob("vsm-kit-*")) and not [p for p in os.listdir("/tmp") if p.startswith(f"vsm-kit-{name}-")]


def test_no_meta_but_what_the_manifest_or_the_caller_asks_for(tmp_path, write_plugin):
    folder = write_plugin(KV.format(name="strict"), STRICT_KV.format(expected={}), name="strict")
    artifact, _, _ = build(folder, tmp_path / "out")
    proc = run_cli("plugin", "test", str(artifact), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["meta"] == {}

    # testMeta from the manifest, {scratch} and {prefix} filled in; --meta adds and overrides
    manifest = KV.format(name="asks") + 'testMeta = { Path = "{scratch}/kit.db", Prefix = "{prefix}", Mode = "a" }\n'
    expected = "{'Path': lambda v: v.endswith('/kit.db') and os.path.isdir(os.path.dirname(v)), 'Prefix': lambda v: v.startswith('kit_'), 'Mode': 'b', 'Extra': '1'}"
    module = "import os\n" + STRICT_KV.format(expected={}).replace("EXPECTED = {}", f"EXPECTED = {expected}")
    folder = write_plugin(manifest, module, name="asks")
    artifact, _, _ = build(folder, tmp_path / "out2")
    proc = run_cli("plugin", "test", str(artifact), "--meta", "Mode=b", "--meta", "Extra=1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads(proc.stdout)["meta"]
    assert meta["Mode"] == "b" and meta["Path"].endswith("/kit.db") and not os.path.exists(meta["Path"].rsplit("/", 1)[0])


def test_constructor_exception_is_one_line_at_the_plugins_own_line(tmp_path, write_plugin):
    folder = write_plugin(KV.format(name="strict"), STRICT_KV.format(expected={}), name="strict")
    artifact, _, _ = build(folder, tmp_path / "out")
    proc = run_cli("plugin", "test", str(artifact), "--meta", "Path=/nowhere")
    assert proc.returncode != 0
    line = next(n for n, text in enumerate(STRICT_KV.splitlines(), 1) if "raise ValueError" in text)
    assert proc.stderr.strip().splitlines() == [
        "vsm-pool: error: KVStore/strict: Constructor failed (Meta: Path=/nowhere): "
        f"ValueError: unknown Meta keys ['Path'] (at strict.py:{line} in make_db)"
    ], proc.stderr


def test_a_failure_points_at_the_plugins_own_line_and_exits_1(tmp_path, write_plugin):
    broken = STRICT_KV.format(expected={}).replace(
        "    def put(self, k, v):\n        self.d[", "    def put(self, k, v):\n        if k == b'\\x00': raise TypeError('no NUL keys here')\n        self.d["
    )
    folder = write_plugin(KV.format(name="nonul"), broken, name="nonul")
    artifact, _, _ = build(folder, tmp_path / "out")
    proc = run_cli("plugin", "test", str(artifact))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    i = lines.index(f"FAIL  put_get_round_trip: {rule_text(KVSTORE_CHECKS[1])}")
    line = next(n for n, text in enumerate(broken.splitlines(), 1) if "no NUL keys" in text)
    assert lines[i + 1] == f"      -> unexpected TypeError: no NUL keys here (at nonul.py:{line} in put)"
    assert "executors/" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert re.match(r"KVStore/nonul: \d+ passed, (\d+ skipped, )?[1-9]\d* failed \(cleanup: removed \d+ keys", lines[-1]), lines[-1]
