"""The child process of a ``call`` task: ``python -m runtime.taskrunner``.

It reads one spec from stdin, a msgpack map ``{"call": "package.module:function", "args": [...],
"kwargs": {...}, "inputs": {...}, "result_path": PATH}``, imports and calls the function, and
writes the outcome to ``result_path`` (never to stdout, which belongs to the task):
``{"ok": true, "result": VALUE}`` or ``{"ok": false, "error": "ValueError: boom", "traceback": ...}``,
msgpack-encoded with the wire codec (so records may be results). Exit code 0 when the call
returned, 1 when it raised or its result cannot be encoded, 2 for a bad spec.

Rules: the function gets the dependencies' results as the keyword ``inputs`` only when it has a
parameter named ``inputs`` (and the task's kwargs do not already set it). A coroutine function
is run to completion with ``asyncio.run``. The module stays light to import: a call task pays
for this process's start-up.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from typing import Any, Callable

from protocols.wire import EncodeError, decode, encode

EXIT_OK = 0
EXIT_RAISED = 1
EXIT_BAD_SPEC = 2


def resolve(call: str) -> Callable[..., Any]:
    """The callable named ``package.module:attribute[.attribute...]``."""
    module_name, sep, attribute_path = call.partition(":")
    if not sep or not module_name or not attribute_path:
        raise ValueError(f"bad call {call!r}: expected 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError(f"{call} is not callable")
    return target


def accepts_inputs(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("inputs")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def run_call(spec: dict) -> tuple[int, dict]:
    """Call what ``spec`` names; returns (exit code, outcome map)."""
    try:
        function = resolve(spec["call"])
        args = list(spec.get("args") or [])
        kwargs = dict(spec.get("kwargs") or {})
        if "inputs" not in kwargs and accepts_inputs(function):
            kwargs["inputs"] = dict(spec.get("inputs") or {})
        result = function(*args, **kwargs)
        if inspect.iscoroutine(result):
            import asyncio  # only call tasks that are coroutines pay for importing asyncio

            result = asyncio.run(result)
    except BaseException as exc:  # the task's failure, whatever it is, is the report's error
        return EXIT_RAISED, {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    return EXIT_OK, {"ok": True, "result": result}


def main() -> int:
    try:
        spec = decode(sys.stdin.buffer.read())
        if not isinstance(spec, dict) or not isinstance(spec.get("call"), str) or not isinstance(
            spec.get("result_path"), str
        ):
            raise ValueError("spec must be a map with 'call' and 'result_path' strings")
    except Exception as exc:
        print(f"taskrunner: bad spec: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    exit_code, outcome = run_call(spec)
    try:
        data = encode(outcome)
    except EncodeError as exc:
        exit_code = EXIT_RAISED
        data = encode({
            "ok": False,
            "error": f"the result of {spec['call']} cannot be sent: {exc}",
            "traceback": "",
        })
    with open(spec["result_path"], "wb") as result_file:
        result_file.write(data)
    if not outcome["ok"]:
        sys.stderr.write(outcome["traceback"])
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
