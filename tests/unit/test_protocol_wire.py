"""The direct link's wire form: every envelope and result comes back equal from its plain
tuples, and what is not an envelope stays itself, for the partition's check to refuse by name."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from es_actors import InvalidPayload
from es_actors.write.protocol import (
    CommandEnvelope,
    ImportedEvent,
    ImportEnvelope,
    ItemResult,
    batch_from_wire,
    batch_to_wire,
    results_from_wire,
    results_to_wire,
)
from tests.unit.helpers import command, open_partition

text = st.text(max_size=12)
maybe = st.none() | text
meta = st.none() | st.dictionaries(text, st.integers() | text, max_size=3)

commands = st.builds(CommandEnvelope, text, text, text, text, text, st.none() | st.integers(0, 2**63 - 1),
                     maybe, maybe, maybe, maybe, meta)
imports = st.builds(ImportEnvelope, text, text, text, st.lists(st.builds(ImportedEvent, text, text, maybe), max_size=3),
                    st.none() | st.integers(0, 9), maybe, maybe, maybe, maybe, meta)
results = st.builds(ItemResult, st.integers(0, 10**6), st.lists(st.tuples(st.integers(), text), max_size=3),
                    st.booleans(), st.none() | st.builds(InvalidPayload, text))


@given(st.lists(commands | imports, max_size=5))
def test_envelopes_come_back_equal_from_the_wire(batch):
    back = batch_from_wire(pickle.loads(pickle.dumps(batch_to_wire(batch), protocol=5)))
    assert back == batch


@given(st.lists(results, max_size=5))
def test_results_come_back_equal_from_the_wire(answer):
    back = results_from_wire(pickle.loads(pickle.dumps(results_to_wire(answer), protocol=5)))
    assert [(r.version, list(r.rows), r.duplicate, type(r.error), str(r.error)) for r in back] == \
        [(r.version, list(r.rows), r.duplicate, type(r.error), str(r.error)) for r in answer]


def test_what_is_not_an_envelope_stays_itself_and_is_refused_alone(tmp_path):
    junk = [("C", "too", "short"), {"aggregate_type": "BankAccount"}, "text"]
    p = open_partition(tmp_path / "s")
    try:
        batch = batch_from_wire(batch_to_wire([command("a", "OpenAccount"), *junk, command("a")]))
        assert batch[1:4] == junk
        out = p.handle_batch(batch)
        assert out[0].ok and out[4].ok and out[4].version == 2
        assert all(isinstance(r.error, InvalidPayload) for r in out[1:4])
    finally:
        p.close()
