"""ComfyUI's ``optimized_attention`` routed to the pack's attention router, for a ComfyUI that has no
``transformer_options["optimized_attention_override"]`` hook.

Where the hook exists (0.3.75 and later, checked at start) the pack uses it (``sampling.attach``) and
nothing here is installed. Without it, ComfyUI's models call ``optimized_attention`` (and
``optimized_attention_masked``), which each model module imported by name
(``from comfy.ldm.modules.attention import optimized_attention``): every module holding the function
gets the routed one, through ``Patches`` (reversible). The routed function sends a call whose query is
on the pack's device to the router in force (the run's ``attention`` setting); every other call (a text
encoder or VAE on the host, a model run eagerly) goes to ComfyUI's own function, untouched.
"""
from __future__ import annotations

import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    from tpu_runtime.comfyui.patches import Patches

log = logging.getLogger("comfy_tpu")

ATTENTION_MODULE = "comfy.ldm.modules.attention"
NAMES = ("optimized_attention", "optimized_attention_masked")
HOOK_KEY = "optimized_attention_override"


def has_override_hook(module: Any) -> bool:
    """The running ComfyUI's attention module reads ``transformer_options["optimized_attention_override"]``."""
    try:
        return HOOK_KEY in inspect.getsource(module)
    except (OSError, TypeError):
        return False


class RoutedAttention:
    """In place of one of ComfyUI's attention functions: device calls to the router, the rest to ComfyUI's."""

    def __init__(self, original: Callable, router_of: Callable[[], Optional[Callable]],
                 on_device: Callable[[Any], bool]) -> None:
        self.original = original
        self.__wrapped__ = original
        self.router_of = router_of
        self.on_device = on_device
        self.routed_calls = 0  # tests and the debug log read it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        query = args[0] if args else kwargs.get("q")
        router = self.router_of() if query is not None and self.on_device(query) else None
        if router is None:
            return self.original(*args, **kwargs)
        self.routed_calls += 1
        return router(self.original, *args, **kwargs)


def holders(original: Callable, name: str, modules: Optional[Iterable[tuple[str, Any]]] = None) -> list[str]:
    """The loaded ComfyUI modules whose ``name`` is ``original`` (imported by name, or the attention module)."""
    found = []
    for module_name, module in list(modules if modules is not None else sys.modules.items()):
        if module is None or not (module_name == "comfy" or module_name.startswith("comfy.")):
            continue
        if vars(module).get(name) is original:
            found.append(module_name)
    return sorted(found)


def install(patches: "Patches", router_of: Callable[[], Optional[Callable]], on_device: Callable[[Any], bool],
            modules: Optional[Iterable[tuple[str, Any]]] = None) -> dict[str, RoutedAttention]:
    """Route ``optimized_attention`` and ``optimized_attention_masked`` in every module holding them; the
    routed functions by name (idempotent: a routed function is never wrapped again)."""
    attention = sys.modules.get(ATTENTION_MODULE)
    if attention is None:
        return {}
    modules = list(modules if modules is not None else sys.modules.items())
    routed: dict[str, RoutedAttention] = {}
    for name in NAMES:
        current = getattr(attention, name, None)
        if current is None:
            continue
        if isinstance(current, RoutedAttention):
            routed[name] = current
            continue
        replacement = routed[name] = RoutedAttention(current, router_of, on_device)
        where = holders(current, name, modules)
        for module_name in where:
            patches.set(module_name, name, replacement)
        log.info("comfy-tpu: this ComfyUI has no attention override hook: %s routed in %d modules", name, len(where))
    return routed
