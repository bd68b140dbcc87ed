"""State every proxy process shares, so /ready describes the whole proxy (contract §7)."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass


@dataclass
class SharedState:
    draining: multiprocessing.Value  # 1 once SIGTERM arrived
    handoff_ok: multiprocessing.Array  # per process: 1 while its worker connection takes work

    @classmethod
    def create(cls, processes: int, ctx=None) -> SharedState:
        ctx = ctx or multiprocessing.get_context("spawn")
        return cls(ctx.Value("b", 0, lock=False), ctx.Array("b", processes, lock=False))

    def ready(self) -> tuple[bool, str]:
        if self.draining.value:
            return False, "draining"
        down = [index for index, ok in enumerate(self.handoff_ok) if not ok]
        if down:
            return False, f"worker unavailable to proxy process(es) {down}"
        return True, "ok"
