"""Plugin sources for the environment bench and tests (issue 15): a RegisterJsonRpc plugin
whose `version` method says which version of a library its worker imports, and from where,
and whose `echo` is the cheapest call into the plugin's own code."""

from __future__ import annotations

from pathlib import Path

MODULE = '''import importlib
import importlib.metadata


class Versions:
    def echo(self, x):
        return x

    def version(self):
        mod = importlib.import_module({module!r})
        return {{"version": getattr(mod, "__version__", ""), "metadata": importlib.metadata.version({dist!r}), "file": mod.__file__}}


def handler():
    return {namespace!r}, Versions()
'''


def version_plugin(parent: Path, name: str, requirements: list[str], module: str = "packaging", dist: str = "packaging") -> Path:
    """Write the source folder `parent/name`: namespace NAME (upper case), method `version`."""
    folder = Path(parent) / name
    folder.mkdir(parents=True)
    reqs = ", ".join(f'"{r}"' for r in requirements)
    (folder / "manifest.toml").write_text(
        f'name = "{name}"\nkind = "RegisterJsonRpc"\nmodule = "{name}"\nversion = "1.0.0"\n'
        f'export = [{{extPoint = "Handler", impl = "handler"}}]\nrequirements = [{reqs}]\n'
    )
    (folder / f"{name}.py").write_text(MODULE.format(module=module, dist=dist, namespace=name.upper()))
    return folder
