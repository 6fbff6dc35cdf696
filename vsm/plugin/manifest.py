"""Reading and validating plugin manifests, as data: no plugin code is imported here.

A source folder's manifest.toml and an artifact's manifest.json share one validator, so a
problem is reported the same way at build time and at load time: one line naming the file,
the key and the cause (like pluggy's `_verify_hook`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Mapping

import tomli

from ..config import address_port
from ..errors import ManifestError
from ..sdk import Kind, Manifest
from ..sdk._kinds import EXT_POINTS

__all__ = ["LIFECYCLE_HOOKS", "check_impls", "manifest_from_dict", "read_source_manifest"]

# damocles checks no name (its examples: memdb, concurrent-limiter); here a name is also a file
# name (plugin-<name>.vsmp), a TOML key ([Common.Plugins.<name>]) and a metric label: letters,
# digits, - and _, starting with a letter or digit.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "use letters, digits, - and _ (at most 64), starting with a letter or digit"
META_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# manifest.toml key -> Manifest field. Keys stamped by the build are accepted only from artifacts.
_SOURCE_KEYS = {
    "name": "name",
    "description": "description",
    "kind": "kind",
    "module": "module",
    "version": "version",
    "onInit": "on_init",
    "onShutdown": "on_shutdown",
    "validate": "validate",
    "onFlush": "on_flush",
    "export": "exports",
    "requirements": "requirements",
    "requiresPython": "requires_python",
    "maxWorkers": "max_workers",
    "testMeta": "test_meta",
    "sandbox": "sandbox",
    "pathMeta": "path_meta",
    "readPathMeta": "read_path_meta",
    "addressMeta": "address_meta",
    "pathIsName": "path_is_name",
    "pluginsDirFiles": "plugins_dir_files",
}
_BUILD_KEYS = {"buildTime": "build_time", "spiVersion": "spi_version", "pythonVersion": "python_version"}
# Lifecycle hook -> the parameters its impl must accept (Go: OnInit(ctx, pluginsDir, manifest)).
# TiDB's validate and onFlush too: validate(manifest, loaded) runs before onInit, with the
# manifests of every loaded plugin by name; onFlush(manifest) when an operator asks.
LIFECYCLE_HOOKS = {
    "onInit": ("plugins_dir", "manifest"),
    "onShutdown": ("manifest",),
    "validate": ("manifest", "loaded"),
    "onFlush": ("manifest",),
}
_HOOK_FIELDS = {"onInit": "on_init", "onShutdown": "on_shutdown", "validate": "validate", "onFlush": "on_flush"}


def read_source_manifest(src_dir: Path) -> tuple[Manifest, list[str]]:
    """Manifest of a plugin source folder, validated down to its impl signatures.

    Returns the manifest and warnings (unknown keys); raises ManifestError.
    """
    src_dir = Path(src_dir)
    file = src_dir / "manifest.toml"
    if not src_dir.is_dir():
        raise ManifestError(src_dir, "", "plugin source folder does not exist")
    try:
        data = tomli.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(file, "", "no manifest.toml in the plugin source folder") from None
    except tomli.TOMLDecodeError as e:
        raise ManifestError(file, "", f"TOML syntax error: {e}") from None
    manifest, warnings = manifest_from_dict(data, file, from_artifact=False)
    module_file, source = module_sources(src_dir, manifest.module, file)
    check_impls(manifest, source, file, module_file)
    return manifest, warnings


def manifest_from_dict(data: Mapping[str, Any], file: object, *, from_artifact: bool) -> tuple[Manifest, list[str]]:
    """Validate manifest keys and values; raises ManifestError on the first problem."""
    known = dict(_SOURCE_KEYS, **(_BUILD_KEYS if from_artifact else {}))
    warnings = [f"{file}: {k}: unknown key, ignored" for k in data if k not in known]

    def text(key: str, default: str = "") -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise ManifestError(file, key, f"must be a string, got {type(value).__name__}")
        return value

    name = text("name")
    if not name:
        raise ManifestError(file, "name", "missing: every plugin needs a name")
    if not NAME_RE.match(name):
        raise ManifestError(
            file, "name", f"{name!r} is not a valid plugin name: {NAME_RULE}"
        )
    kind_text = text("kind")
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise ManifestError(
            file, "kind", f"unknown kind {kind_text!r}: expected one of {', '.join(k.value for k in Kind)}"
        ) from None
    module = text("module", name.replace("-", "_"))  # concurrent-limiter -> concurrent_limiter.py
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", module):
        hint = "" if "module" in data else " (the default is the plugin's name): set module = \"<your module>\""
        raise ManifestError(file, "module", f"{module!r} is not a Python module name{hint}")

    exports = _read_exports(data.get("export", []), kind, file)
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise ManifestError(file, "requirements", "must be a list of pip requirement strings")
    max_workers = data.get("maxWorkers", 0)
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 0:
        raise ManifestError(file, "maxWorkers", "must be a whole number >= 0 (0: no limit)")
    test_meta = data.get("testMeta", {})
    if not isinstance(test_meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in test_meta.items()):
        raise ManifestError(file, "testMeta", 'must be a table of strings, e.g. testMeta = { Path = "{scratch}/kit.db" }')
    sandbox = data.get("sandbox", False)
    if not isinstance(sandbox, bool):
        raise ManifestError(file, "sandbox", f"must be true or false, got {sandbox!r}")
    plugins_dir_files = data.get("pluginsDirFiles", False)
    if not isinstance(plugins_dir_files, bool):
        raise ManifestError(file, "pluginsDirFiles", f"must be true or false, got {plugins_dir_files!r}")
    path_is_name = data.get("pathIsName", False)
    if not isinstance(path_is_name, bool) or (path_is_name and kind is not Kind.ObjStore):
        raise ManifestError(file, "pathIsName", f"must be true or false, and only an ObjStore has a store Path, got {path_is_name!r} for a {kind.value}")
    fields: dict[str, Any] = dict(
        sandbox=sandbox,
        path_meta=_meta_keys(data, "pathMeta", file),
        read_path_meta=_meta_keys(data, "readPathMeta", file),
        address_meta=_address_meta(data.get("addressMeta", []), file),
        path_is_name=path_is_name,
        plugins_dir_files=plugins_dir_files,
        name=name,
        kind=kind,
        description=text("description"),
        module=module,
        version=text("version", "0.0.0"),
        on_init=text("onInit"),
        on_shutdown=text("onShutdown"),
        validate=text("validate"),
        on_flush=text("onFlush"),
        exports=exports,
        requirements=tuple(requirements),
        requires_python=text("requiresPython"),
        max_workers=max_workers,
        test_meta=dict(test_meta),
    )
    if from_artifact:
        spi = data.get("spiVersion")
        if not isinstance(spi, int):
            raise ManifestError(file, "spiVersion", "missing: the artifact was not made by `vsm-pool plugin build`")
        fields.update(build_time=text("buildTime"), spi_version=spi, python_version=text("pythonVersion"))
    return Manifest(**fields), warnings


def _meta_keys(data: Mapping[str, Any], key: str, file: object) -> tuple[str, ...]:
    keys = data.get(key, [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and META_KEY_RE.match(k) for k in keys):
        raise ManifestError(file, key, f'must be a list of Meta key names such as ["Path"], got {keys!r}')
    return tuple(keys)


def _address_meta(raw: Any, file: object) -> dict[str, str]:
    """addressMeta = ["Addr", "DSN"], or a table giving the address used when the Meta key is
    empty: {Endpoint = "https://s3.amazonaws.com"}. Each address must name a TCP port (or a
    scheme whose port is known)."""
    if isinstance(raw, list):
        raw = {k: "" for k in raw} if all(isinstance(k, str) for k in raw) else raw
    if not isinstance(raw, dict) or not all(isinstance(k, str) and META_KEY_RE.match(k) and isinstance(v, str) for k, v in raw.items()):
        raise ManifestError(file, "addressMeta", f'must be a list of Meta key names such as ["Addr"], or a table {{Endpoint = "https://host"}}, got {raw!r}')
    for k, default in raw.items():
        if default:
            try:
                address_port(default)
            except ValueError as e:
                raise ManifestError(file, f"addressMeta.{k}", str(e)) from None
    return dict(raw)


def _read_exports(raw: Any, kind: Kind, file: object) -> dict[str, str]:
    points = EXT_POINTS[kind]
    if not isinstance(raw, list):
        raise ManifestError(file, "export", 'must be a list like [{extPoint="Constructor", impl="open"}]')
    exports: dict[str, str] = {}
    for i, item in enumerate(raw):
        key = f"export[{i}]"
        if not isinstance(item, dict) or set(item) != {"extPoint", "impl"}:
            raise ManifestError(file, key, "must be a table with exactly extPoint and impl")
        point, impl = item["extPoint"], item["impl"]
        if point not in points:
            raise ManifestError(
                file, f"{key}.extPoint", f"{point!r} is not an extension point of {kind.value}: expected one of {', '.join(points)}"
            )
        if point in exports:
            raise ManifestError(file, f"{key}.extPoint", f"{point!r} is exported twice")
        if not isinstance(impl, str) or not impl.isidentifier():
            raise ManifestError(file, f"{key}.impl", f"{impl!r} is not a function name")
        exports[point] = impl
    for point, (required, _) in points.items():
        if required and point not in exports:
            raise ManifestError(file, "export", f"{kind.value} plugins must export {point!r}")
    if kind is Kind.SyncSectorState and not exports:
        raise ManifestError(file, "export", f"a SyncSectorState plugin must export at least one of {', '.join(points)}")
    return exports


def module_sources(src_dir: Path, module: str, file: object) -> tuple[Path, str]:
    """Path and source text of the module's top level: a .py file or a package beside the
    manifest, or the folder itself when the manifest sits inside the package (pip-installed
    plugins)."""
    inside = [src_dir / "__init__.py"] if src_dir.name == module else []
    for candidate in (src_dir / f"{module}.py", src_dir / module / "__init__.py", *inside):
        if candidate.is_file():
            return candidate, candidate.read_text(encoding="utf-8")
    raise ManifestError(file, "module", f"no {module}.py or {module}/__init__.py next to the manifest")


def check_impls(manifest: Manifest, source: str, file: object, module_file: object = None) -> None:
    """Every impl and hook names a top-level function that accepts its parameters.

    Checked on the syntax tree, so nothing is imported. Names bound otherwise (imports,
    assignments) are accepted as they are: their signature is checked when called. A wrong
    signature is reported at `module.py:line`, with the signature found and the one expected.
    """
    where = module_file or f"{file}: module {manifest.module}"
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ManifestError(f"{where}:{e.lineno}", "", f"syntax error: {e.msg}") from None
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    other_names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            other_names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            other_names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            other_names.update(t.id for t in targets if isinstance(t, ast.Name))

    wanted: list[tuple[str, str, tuple[str, ...]]] = [
        (f"export.{point}", impl, EXT_POINTS[manifest.kind][point][1]) for point, impl in manifest.exports.items()
    ]
    for key, params in LIFECYCLE_HOOKS.items():
        impl = getattr(manifest, _HOOK_FIELDS[key])
        if impl:
            wanted.append((key, impl, params))
    for key, impl, params in wanted:
        if impl in functions:
            fn = functions[impl]
            if not _accepts(fn, len(params)):
                found = f"def {impl}({ast.unparse(fn.args)})"
                raise ManifestError(
                    f"{where}:{fn.lineno}", key, f"found {found}, expected def {impl}({', '.join(params)}) ({file}: {key} = {impl!r})"
                )
        elif impl not in other_names:
            defined = ", ".join(sorted(functions)) or "none"
            raise ManifestError(file, key, f"{where} has no top-level function {impl!r} (functions defined: {defined})")


def _accepts(fn: ast.FunctionDef | ast.AsyncFunctionDef, n: int) -> bool:
    args = fn.args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_kwonly = sum(1 for d in args.kw_defaults if d is None)
    return required <= n and (positional >= n or args.vararg is not None) and required_kwonly == 0
