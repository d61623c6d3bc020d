"""One call of a ComfyUI function, seen by the pack: arguments read and replaced by name, forwarded as given.

ComfyUI adds parameters between releases (0.8 passes ``prepare_sampling`` a ``force_full_load``, 0.33 also a
``force_offload``; ``patch_weight_to_device`` gained ``return_weight`` and ``force_cast``). A replacement that
names a fixed list breaks on the next release. Everything the pack installs in ComfyUI's place takes
``*args, **kwargs``, binds them against the real function's own signature to read or change the few it needs,
and passes every argument on as it came: an argument the pack does not know reaches ComfyUI untouched.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Sequence


@functools.lru_cache(maxsize=256)
def _positional_names(function: Callable, drop_first: bool) -> tuple[str, ...]:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return ()
    names = tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names[1:] if drop_first and names else names


def positional_names(function: Callable) -> tuple[str, ...]:
    """The names a call's positional arguments fill, for ``function`` as called (a bound method, as
    ``WrapperExecutor.original`` holds for ComfyUI's class executors, is called without ``self``)."""
    function = inspect.unwrap(function)
    if inspect.ismethod(function):
        return _positional_names(function.__func__, True)
    return _positional_names(function, False)


class Call:
    """A call's arguments as given (``args``, ``kwargs``), addressable by parameter name.

    ``names``: the positional parameter names of the function being called; ``fallback`` is the form the
    pack was written against, used where the function cannot be inspected (a builtin, a fake)."""

    def __init__(self, args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str],
                 fallback: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.kwargs = dict(kwargs)
        self.names = tuple(names) or tuple(fallback)

    @classmethod
    def through(cls, executor: Any, args: Sequence[Any], kwargs: dict[str, Any],
                fallback: Sequence[str] = ()) -> "Call":
        """The call a ComfyUI ``WrapperExecutor`` is given (its ``original`` is the wrapped function)."""
        original = getattr(executor, "original", None)
        names = positional_names(original) if original is not None else ()
        return cls(args, kwargs, names, fallback)

    @classmethod
    def of(cls, function: Callable, args: Sequence[Any], kwargs: dict[str, Any],
           fallback: Sequence[str] = ()) -> "Call":
        """A call of ``function`` as given (for a method taken from its class, ``args[0]`` is ``self``)."""
        return cls(args, kwargs, positional_names(function), fallback)

    def _index(self, name: str) -> Optional[int]:
        return self.names.index(name) if name in self.names else None

    def given(self, name: str) -> bool:
        index = self._index(name)
        return name in self.kwargs or (index is not None and index < len(self.args))

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        index = self._index(name)
        if index is not None and index < len(self.args):
            return self.args[index]
        return default

    def set(self, name: str, value: Any) -> None:
        """Replace (or add) one argument where it was given: positionally stays positional."""
        index = self._index(name)
        if name not in self.kwargs and index is not None and index < len(self.args):
            self.args[index] = value
        else:
            self.kwargs[name] = value

    def forward(self, to: Callable) -> Any:
        """Call ``to`` (the executor, or ComfyUI's original) with every argument as given or replaced."""
        return to(*self.args, **self.kwargs)
