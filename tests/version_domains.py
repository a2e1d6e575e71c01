"""Versions of the bank's balances for the cutover tests (ADR-018): one that means something else
and declares what must hold (cents), one that differs unexpectedly (double deposits)."""

from __future__ import annotations

from es_actors.examples.bank_projections import Balances

_AMOUNT = "(payload->>'amount')::BIGINT"


class BalancesCents(Balances):
    """v2: balances in cents. The rows differ from v1 by design; the declared checks say how."""

    version = 2
    apply = Balances.apply.replace(_AMOUNT, _AMOUNT + " * 100")
    cutover_checks = (
        "SELECT * FROM balances b JOIN {current}.balances c USING (account) "
        "WHERE b.balance <> c.balance * 100 OR b.events <> c.events",
        "SELECT account FROM {current}.balances EXCEPT SELECT account FROM balances",
    )


class BalancesDoubled(Balances):
    """v3: a bug (deposits counted twice) that a check must catch."""

    version = 3
    apply = Balances.apply.replace(f"THEN {_AMOUNT}", f"THEN 2 * {_AMOUNT}", 1)
