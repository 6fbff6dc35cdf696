"""Check results, the runner shared by every kit, and their human summary.

A check is a function whose docstring is its rule; `rule_text(check)` is that rule on one
line, the words `vsm-pool plugin test` prints and docs/plugin-format.md lists (generated from
the kits' tables: vsm/plugin/conformance/docgen.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..blame import describe, plugin_frame

__all__ = [
    "CheckFailed",
    "CheckResult",
    "SkipCheck",
    "expect",
    "expect_raises",
    "format_result",
    "format_results",
    "rule_text",
    "run_checks",
    "summary_line",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: `rule` is the check's rule on one line, `error` is empty on a
    pass; `skipped` says why a check did not apply (it counts as passed)."""

    name: str
    passed: bool
    error: str = ""
    rule: str = ""
    skipped: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.skipped else "pass" if self.passed else "fail"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "rule": self.rule, "error": self.error or self.skipped}


class CheckFailed(AssertionError):
    """A rule was broken; the message says how."""


class SkipCheck(Exception):
    """The rule does not apply to this plugin (e.g. a Go-hook rule for an OnBatch-only sink);
    the message says why."""


def rule_text(check: Callable[..., Any]) -> str:
    """The check's rule: its docstring on one line."""
    return " ".join((check.__doc__ or "").split())


def expect(cond: bool, message: str) -> None:
    """Fail the check with message unless cond (unlike assert, it survives python -O)."""
    if not cond:
        raise CheckFailed(message)


def expect_raises(exc_type: type[BaseException], fn: Callable[..., Any], *args: Any) -> BaseException:
    """Fail the check unless fn(*args) raises exc_type; returns the exception."""
    try:
        value = fn(*args)
    except exc_type as e:
        return e
    except Exception as e:
        raise CheckFailed(
            f"{_call_name(fn)} raised {type(e).__name__}({e}), expected {exc_type.__name__}"
        ) from e
    raise CheckFailed(f"{_call_name(fn)} returned {value!r:.80}, expected it to raise {exc_type.__name__}")


def run_checks(
    checks: Iterable[Callable[[T], None]],
    subject: T,
    *,
    code_path: str = "",
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every check on subject; one check's failure or crash never stops the others.

    code_path: where the plugin's code lives (its artifact's src/ or its folder): an error
    raised by the plugin is reported with the plugin's own file:line found under it.
    on_result: called with each result as soon as it is known (progress output)."""
    results = []
    for check in checks:
        rule = rule_text(check)
        try:
            check(subject)
        except SkipCheck as e:
            result = CheckResult(check.__name__, True, "", rule, str(e) or "does not apply")
        except CheckFailed as e:
            error = str(e)
            cause = e.__cause__
            where = plugin_frame(cause, code_path) if (cause is not None and code_path) else ""
            result = CheckResult(check.__name__, False, f"{error} (at {where})" if where else error, rule)
        except Exception as e:  # a crash is a failure of that check, with where it happened
            result = CheckResult(check.__name__, False, f"unexpected {_where(e, code_path)}", rule)
        else:
            result = CheckResult(check.__name__, True, "", rule)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _where(e: BaseException, code_path: str) -> str:
    """The exception on one line: the plugin's own frame if it is in it, else the innermost."""
    if code_path and plugin_frame(e, code_path):
        return describe(e, code_path)
    import traceback

    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}{where}"


def format_result(r: CheckResult) -> str:
    """PASS/FAIL/SKIP, the check's name and its rule; a failure's cause (or why it was
    skipped) on the next line."""
    head = f"{r.status.upper():<5} {r.name}: {r.rule}" if r.rule else f"{r.status.upper():<5} {r.name}"
    if r.error:
        return f"{head}\n      -> {r.error}"
    if r.skipped:
        return f"{head}\n      -> skipped: {r.skipped}"
    return head


def summary_line(results: Sequence[CheckResult]) -> str:
    failed = sum(not r.passed for r in results)
    skipped = sum(bool(r.skipped) for r in results)
    return f"{len(results) - failed - skipped} passed, " + (f"{skipped} skipped, " if skipped else "") + f"{failed} failed"


def format_results(results: Sequence[CheckResult]) -> str:
    """Every check with its status and rule, then the count."""
    return "\n".join([*(format_result(r) for r in results), summary_line(results)])


def _call_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
