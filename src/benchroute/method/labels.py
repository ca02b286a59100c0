"""Compact 0/1 correctness matrices: many models' labels bit-packed, unpacked only where read.

A leaderboard with a million questions and hundreds of models has 10^8-10^9 correctness entries:
4 bytes each as float32, 1 as uint8, 1/8 bit-packed (``np.packbits``). The kNN predictor only ever
reads the rows of a query's k neighbours, so unpacking k rows per query costs microseconds while the
store shrinks 32x against float32. Labels that are not 0/1 (a model's mean filled in for questions it
was not run on) stay float32: nothing is rounded.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from benchroute.errors import ConfigError

Encoding = Literal["auto", "bits", "uint8", "float32"]
ENCODINGS: tuple[str, ...] = ("auto", "bits", "uint8", "float32")


def is_binary(Y: np.ndarray) -> bool:
    """True when every entry is exactly 0 or 1 (bool and integer 0/1 arrays included)."""
    Y = np.asarray(Y)
    if Y.dtype == np.bool_:
        return True
    return bool(((Y == 0) | (Y == 1)).all())


def compact_labels(Y: np.ndarray) -> np.ndarray:
    """0/1 labels as uint8 (a quarter of float32; every use gives the same values), others float32."""
    Y = np.asarray(Y)
    return Y.astype(np.uint8) if is_binary(Y) else Y.astype(np.float32)


def pack_bits(Y: np.ndarray) -> np.ndarray:
    """n x M 0/1 -> n x ceil(M / 8) uint8 (models along the bits, big-endian, zero padding)."""
    return np.packbits(np.asarray(Y) != 0, axis=1)


def unpack_bits(bits: np.ndarray, n_outputs: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for any leading shape: (..., ceil(M / 8)) -> (..., M) uint8."""
    return np.unpackbits(bits, axis=-1, count=n_outputs)


class LabelMatrix:
    """An n x M label matrix held as bits, uint8 or float32; reads return float32 values.

    ``encoding="auto"`` packs 0/1 labels into bits and keeps anything else float32; "bits" and
    "uint8" refuse labels that are not 0/1. Every read gives exactly the float32 values of the
    dense matrix, so predictions do not depend on the encoding.
    """

    def __init__(self, Y: np.ndarray, encoding: Encoding = "auto") -> None:
        if encoding not in ENCODINGS:
            raise ConfigError(f"unknown label encoding {encoding!r}", f"use one of {', '.join(ENCODINGS)}")
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ConfigError(f"labels must be an n x M matrix, got shape {Y.shape}")
        self.requested = encoding
        self.n_outputs = Y.shape[1]
        self.encoding, self.data = self._encode(Y)

    def _encode(self, Y: np.ndarray) -> tuple[str, np.ndarray]:
        binary = is_binary(Y)
        if self.requested in ("bits", "uint8") and not binary:
            raise ConfigError(
                f"label encoding {self.requested!r} holds 0/1 labels only",
                "use encoding 'auto' or 'float32' for fractional labels",
            )
        if self.requested == "float32" or not binary:
            return "float32", np.ascontiguousarray(Y, dtype=np.float32)
        if self.requested == "uint8":
            return "uint8", np.ascontiguousarray(Y, dtype=np.uint8)
        return "bits", pack_bits(Y)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.data), self.n_outputs)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any shape) -> float32 array of shape idx.shape + (M,)."""
        rows = self.data[idx]
        if self.encoding == "bits":
            rows = unpack_bits(rows, self.n_outputs)
        return rows.astype(np.float32, copy=False)

    def dense(self) -> np.ndarray:
        """The whole matrix as float32 (n x M): what the compact forms avoid holding; for small uses."""
        return self.take(np.arange(len(self.data)))

    def with_column(self, y: np.ndarray) -> LabelMatrix:
        """A new matrix with column ``y`` appended (re-encoded: a fractional column makes it float32)."""
        y = np.asarray(y).reshape(-1, 1)
        if len(y) != len(self):
            raise ConfigError(f"need one label per stored input ({len(self)}), got {len(y)}")
        return LabelMatrix(np.hstack([self._raw(), y]), self.requested)

    def without_column(self, j: int) -> LabelMatrix:
        return LabelMatrix(np.delete(self._raw(), j, axis=1), self.requested)

    def _raw(self) -> np.ndarray:
        return unpack_bits(self.data, self.n_outputs) if self.encoding == "bits" else self.data


__all__ = ["ENCODINGS", "LabelMatrix", "is_binary", "pack_bits", "unpack_bits"]
