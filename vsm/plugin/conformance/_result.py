"""Check results, the runner shared by every kit, and their human summary."""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any, Callable, Iterable, Sequence, TypeVar

__all__ = ["CheckFailed", "CheckResult", "expect", "expect_raises", "format_results", "run_checks"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: `rule` is the check's docstring, `error` is empty on a pass."""

    name: str
    passed: bool
    error: str = ""
    rule: str = ""


class CheckFailed(AssertionError):
    """A rule was broken; the message says how."""


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


def run_checks(checks: Iterable[Callable[[T], None]], subject: T) -> list[CheckResult]:
    """Run every check on subject; one check's failure or crash never stops the others."""
    results = []
    for check in checks:
        rule = (check.__doc__ or "").strip()
        try:
            check(subject)
        except CheckFailed as e:
            results.append(CheckResult(check.__name__, False, str(e), rule))
        except Exception as e:  # a crash is a failure of that check, with where it happened
            where = traceback.extract_tb(e.__traceback__)[-1]
            error = f"unexpected {type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
            results.append(CheckResult(check.__name__, False, error, rule))
        else:
            results.append(CheckResult(check.__name__, True, "", rule))
    return results


def format_results(results: Sequence[CheckResult]) -> str:
    """One line per check (PASS/FAIL, name, and the error or the rule) and a count."""
    lines = []
    for r in results:
        if r.passed:
            lines.append(f"PASS  {r.name}")
        else:
            lines.append(f"FAIL  {r.name}: {r.error}")
            if r.rule:
                lines.append(f"      rule: {r.rule}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} checks passed")
    return "\n".join(lines)


def _call_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
