"""Distillation methods, one module each, registered by name.

A method spec names one method (`kd`) or a sum of several (`kd+geometry`).
`build_methods` turns a spec and the profile's `method_args` (keyword arguments per
method name) into method modules. Every module in this package is imported here,
so adding a method means adding one file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from gkd_lib.methods.base import METHODS, Method, MethodContext, Outputs

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "canonical_spec",
    "METHODS",
    "Method",
    "MethodContext",
    "Outputs",
    "build_methods",
    "split_spec",
    "method_defaults",
]


def split_spec(spec: str) -> list[str]:
    """'kd+geometry' -> ['kd', 'geometry'], each checked against the registry."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"a method spec is a name or names joined by '+', got {spec!r}; "
            f"valid methods: {', '.join(METHODS.names())}"
        )
    names = [part.strip() for part in spec.split("+")]
    if "" in names:
        raise ValueError(
            f"method spec {spec!r} has an empty name; join method names with '+', e.g. kd+geometry"
        )
    for name in names:
        METHODS.get(name)
    if len(set(names)) != len(names):
        raise ValueError(f"method spec {spec!r} names a method twice")
    if len(names) > 1 and "baseline" in names:
        raise ValueError(f"method spec {spec!r}: baseline adds no term; write the other methods alone")
    return names


def canonical_spec(spec: str) -> str:
    """The spec with its whitespace removed: ' kd + geometry' -> 'kd+geometry' (one run folder per arm)."""
    return "+".join(split_spec(spec))


def method_defaults(name: str) -> dict:
    """The keyword arguments of a method and their defaults (the one source of them)."""
    parameters = list(inspect.signature(METHODS.get(name).__init__).parameters.values())[2:]
    return {p.name: p.default for p in parameters}


def check_method_args(method_args: dict) -> None:
    """Refuse arguments for unknown methods and arguments a method does not take."""
    if not isinstance(method_args, dict):
        raise ValueError(f"method_args must be a mapping of method name to arguments, got {method_args!r}")
    for name, kwargs in method_args.items():
        accepted = method_defaults(name)  # raises for an unknown method, listing the valid ones
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(
                f"method_args: the arguments of {name!r} must be a mapping of name to value, "
                f"for example {{geometry: {{weight: 30}}}}; got {kwargs!r}"
            )
        unknown = set(kwargs or {}) - set(accepted)
        if unknown:
            raise ValueError(
                f"method {name!r} has no argument {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )


def build_methods(spec: str, method_args: dict | None, context: MethodContext) -> list[Method]:
    """The method modules of a spec, each built with its arguments from `method_args`."""
    method_args = method_args or {}
    check_method_args(method_args)
    return [METHODS.get(name)(context, **(method_args.get(name) or {})) for name in split_spec(spec)]
