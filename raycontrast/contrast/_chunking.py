"""Memory budgets of the streamed contrast kernels, in tensor elements (one place, so tests can
shrink them to exercise chunk boundaries)."""

from __future__ import annotations

CHUNK_ELEMENTS = 1 << 22
"""Similarity chunk (rows x entries) computed at once."""
BUFFER_ELEMENTS = 1 << 24
"""Running top-k buffers (rows x candidates) per pass."""
GATHER_ELEMENTS = 1 << 23
"""Gathered entries (rows x K x D) per step of ``gather_similarity``."""


def chunk_step(rows: int) -> int:
    """Entries per similarity chunk for ``rows`` anchor rows."""
    return max(1, CHUNK_ELEMENTS // max(rows, 1))
