"""What the pack is compiling, shown in the ComfyUI frontend.

A first-time compile of a large model takes minutes on a TPU, while ComfyUI's progress bar sits at
step 0. The manager tells this object when graphs start and finish compiling; it shows the text on
the executing node through ComfyUI's own progress-text message (``PromptServer.send_progress_text``,
the text preview the frontend draws under a node), and nothing when no prompt is executing (a
script, a test) or no server runs.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from tpu_runtime.comfyui import server

log = logging.getLogger("comfy_tpu")

#: (text, node id) -> None
Sender = Callable[[str, str], None]


def _executing_node() -> Optional[str]:
    return server.executing_node_id()


def _server_sender() -> Optional[Sender]:
    return server.progress_text_sender()


class CompileStatus:
    """Shows compile progress on the node that runs the sampler (``send`` is for tests)."""

    def __init__(self, send: Optional[Sender] = None) -> None:
        self._send = send

    def show(self, text: str) -> bool:
        """Show ``text`` on the executing node; False when there is no node or no frontend to show it."""
        node_id = _executing_node()
        send = self._send or _server_sender()
        if node_id is None or send is None:
            return False
        try:
            send(text, node_id)
        except Exception as exc:  # a closed socket must never fail the sampling run
            log.debug("comfy-tpu: compile status not shown: %s", exc)
            return False
        return True

    def compiling(self, what: str, estimate_s: Optional[float]) -> bool:
        eta = f"~{estimate_s:.{0 if estimate_s >= 10 else 1}f} s (recorded)" if estimate_s is not None \
            else "no earlier compile to estimate from"
        return self.show(f"comfy-tpu: compiling (first time)\n{what}\n{eta}")

    def compiled(self, what: str, graphs: int, seconds: float) -> bool:
        return self.show(f"comfy-tpu: compiled {graphs} graph(s) in {seconds:.1f} s\n{what}\nlater runs reuse them")

    def rewarming(self, count: int, estimate_s: Optional[float]) -> bool:
        eta = f", ~{estimate_s:.0f} s (recorded)" if estimate_s else ""
        return self.show(f"comfy-tpu: re-compiling {count} signature(s) recorded in an earlier session{eta}")

    def rewarm_failed(self, what: str, reason: str) -> bool:
        return self.show(f"comfy-tpu: re-warm failed, set aside (not retried)\n{what}\n{reason}\n"
                         "the prompt runs; its first step compiles")
