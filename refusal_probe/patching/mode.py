"""Which way a patch goes: :class:`PatchMode`, with the sign and the runs it implies."""

from __future__ import annotations

from enum import Enum

from torch import Tensor

from refusal_probe.errors import PatchingError
from refusal_probe.model.chat import Encoded
from refusal_probe.patching.pairs import PairBatch


class PatchMode(str, Enum):
    """Denoising or noising (Heimersheim & Nanda's terms).

    ``DENOISE`` patches clean (harmful) values into the corrupted (harmless) run: an effect is
    the share of the refusal gap a component restores. ``NOISE`` patches corrupted values into
    the clean run: an effect is the share of the gap a component removes. Both normalize so that
    patching everything gives 1, which is what :attr:`sign` carries.
    """

    DENOISE = "denoise"
    NOISE = "noise"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, mode: PatchMode | str) -> PatchMode:
        """The mode named ``mode``.

        Raises:
            PatchingError: ``mode`` is neither ``denoise`` nor ``noise``.
        """
        try:
            return cls(mode)
        except ValueError:
            raise PatchingError(
                f"unknown patch mode {mode!r}; use one of {[m.value for m in cls]}"
            ) from None

    @property
    def sign(self) -> float:
        """+1 for denoising, -1 for noising: ``sign * delta / gap`` is a component's effect."""
        return 1.0 if self is PatchMode.DENOISE else -1.0

    def base_and_source(self, batch: PairBatch) -> tuple[Encoded, Encoded]:
        """The run that receives the patch and the run that supplies the values."""
        if self is PatchMode.DENOISE:
            return batch.corrupted, batch.clean
        return batch.clean, batch.corrupted

    def clean_and_corrupted(self, source: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        """The metrics of the source and base runs, as (clean, corrupted)."""
        return (source, base) if self is PatchMode.DENOISE else (base, source)
