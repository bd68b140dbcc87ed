"""What a stream source provides to the sink's run loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from ..landing import Lander, Limits


class Source(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type]

    @classmethod
    @abstractmethod
    def from_env(cls, environ: Mapping[str, str], lander_factory, limits: Limits) -> Source:
        """`lander_factory(checkpoint_store) -> Lander` builds the writer around this source's store."""

    @abstractmethod
    async def run(self) -> None:
        """Read, batch and land until `stop()`; then land what is batched and return."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def health(self) -> tuple[bool, str]: ...

    lander: Lander
