"""The bank workload shared by the write-path benches: accounts, writer slices, Zipf picks."""

from __future__ import annotations

import numpy as np

N_ACCOUNTS = 10_000
ZIPF_S = 1.1
AMOUNT_MAX = 10_000  # cents


def account_id(i: int) -> str:
    return f"acct-{i:05d}"


def all_accounts(n: int = N_ACCOUNTS) -> list[str]:
    return [account_id(i) for i in range(n)]


def writer_slices(accounts: list[str], writers: int) -> list[list[str]]:
    """Disjoint, near-equal slices: writer i owns slices[i] and no one else writes there."""
    return [list(s) for s in np.array_split(np.array(accounts, dtype=object), writers)]


class ZipfPicker:
    """Picks (account, amount) within one writer's slice, Zipf(s)-skewed over a seeded ranking.

    Rank k (1-based) has weight 1/k**s over the slice (a bounded Zipf). Which account holds
    which rank is a seeded shuffle of the slice, so hot accounts spread over partitions.
    Given the same seed, every system sees the same sequence.
    """

    def __init__(self, accounts: list[str], seed: int, s: float = ZIPF_S, chunk: int = 4096) -> None:
        self.rng = np.random.default_rng(seed)
        n = len(accounts)
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        order = self.rng.permutation(n)
        self.ranked = [accounts[j] for j in order]
        self.chunk = chunk
        self._ids: list[str] = []
        self._amounts: list[int] = []
        self._i = 0

    def _refill(self) -> None:
        idx = np.searchsorted(self.cdf, self.rng.random(self.chunk), side="right")
        self._ids = [self.ranked[j] for j in idx.tolist()]
        self._amounts = self.rng.integers(1, AMOUNT_MAX, size=self.chunk).tolist()
        self._i = 0

    def next(self) -> tuple[str, int]:
        if self._i >= len(self._ids):
            self._refill()
        i = self._i
        self._i = i + 1
        return self._ids[i], self._amounts[i]
