"""The command pipeline inside the partition: the built-in envelope check first, then the
store's interceptors in order, for every command, duplicates included; a refusal or a failing
policy fails its command alone, named."""

from __future__ import annotations

import pytest

from es_actors import CommandRefused, InterceptorFailed, InvalidPayload
from es_actors.write.interceptors import CommandPipeline, InterceptContext
from es_actors.write.protocol import Envelope
from es_actors.config import StoreConfig
from tests.unit.helpers import command, open_partition


class RefusePrincipal:
    name = "no-mallory"

    def __init__(self, principal: str) -> None:
        self.principal = principal

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        if envelope.principal == self.principal:
            raise CommandRefused(f"{self.principal} may not write")


class OwnResultsOnly:
    """A retry must come from whoever sent the command first."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        self.seen.append((envelope.command_id, context.duplicate_of is not None))
        prior = context.duplicate_of
        if prior is not None and prior.principal != envelope.principal:
            raise CommandRefused(f"command id {envelope.command_id!r} belongs to another principal")


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        self.log.append(f"{self.name}:{envelope.command_id}")


class Broken:
    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        if envelope.aggregate_id == "boom":
            raise KeyError("no such rule")


def test_an_interceptor_refuses_one_principals_commands_naming_itself_and_the_command(tmp_path):
    p = open_partition(tmp_path / "s", [RefusePrincipal("mallory")])
    try:
        results = p.handle_batch([command("a", "OpenAccount", principal="alice"),
                                  command("a", command_id="m-1", principal="mallory"),
                                  command("a", principal="alice")])
        assert [r.ok for r in results] == [True, False, True]
        err = results[1].error
        assert isinstance(err, CommandRefused)
        assert "no-mallory" in str(err) and "'m-1'" in str(err) and "BankAccount/a" in str(err) and "may not write" in str(err)
        assert p.get_state("BankAccount", "a")[0] == 2  # nothing of the refused command
    finally:
        p.close()


def test_interceptors_see_duplicates_so_a_retry_by_another_principal_is_refused(tmp_path):
    policy = OwnResultsOnly()
    p = open_partition(tmp_path / "s", [policy])
    try:
        p.handle_batch([command("a", "OpenAccount", principal="alice")])
        [first] = p.handle_batch([command("a", command_id="pay-1", principal="alice")])
        [stolen] = p.handle_batch([command("a", command_id="pay-1", principal="bob")])
        [retry] = p.handle_batch([command("a", command_id="pay-1", principal="alice")])
        assert first.ok and not first.duplicate
        assert isinstance(stolen.error, CommandRefused) and "another principal" in str(stolen.error)
        assert retry.duplicate and retry.version == first.version and retry.rows == first.rows
        assert [d for cid, d in policy.seen if cid == "pay-1"] == [False, True, True]
    finally:
        p.close()
    # after a restart the dedup record (and who sent each command) is read back from the log
    policy = OwnResultsOnly()
    p = open_partition(tmp_path / "s", [policy])
    try:
        [stolen] = p.handle_batch([command("a", command_id="pay-1", principal="bob")])
        assert isinstance(stolen.error, CommandRefused)
        [retry] = p.handle_batch([command("a", command_id="pay-1", principal="alice")])
        assert retry.duplicate
    finally:
        p.close()


def test_interceptors_run_in_order_after_the_envelope_check(tmp_path):
    log: list[str] = []
    p = open_partition(tmp_path / "s", [Recorder("first", log), Recorder("second", log)])
    try:
        assert p.pipeline.steps == ["validate_envelope", "first", "second"]
        results = p.handle_batch([command("a", "OpenAccount", command_id="c1"),
                                  command("a", command_id="\ud800"),  # refused by step 1: no interceptor sees it
                                  command("a", command_id="c3")])
        assert [r.ok for r in results] == [True, False, True]
        assert isinstance(results[1].error, InvalidPayload)
        assert log == ["first:c1", "second:c1", "first:c3", "second:c3"]
    finally:
        p.close()


def test_an_interceptor_that_raises_something_unexpected_fails_only_its_command(tmp_path):
    p = open_partition(tmp_path / "s", [Broken()])
    try:
        results = p.handle_batch([command("a", "OpenAccount"), command("boom", "OpenAccount", command_id="b-1"),
                                  command("a")])
        assert [r.ok for r in results] == [True, False, True]
        err = results[1].error
        assert isinstance(err, InterceptorFailed)
        assert "Broken" in str(err) and "'b-1'" in str(err) and "KeyError" in str(err)
        assert p.stats()["rejections"] == {"InterceptorFailed": 1}
    finally:
        p.close()


def test_what_is_not_an_interceptor_is_refused_when_the_pipeline_is_built():
    with pytest.raises(TypeError, match="not a CommandInterceptor"):
        CommandPipeline(StoreConfig(), [object()])


# -- what an interceptor cannot do (hostile review of the pipeline) ------------------------------


class Rewriter:
    """Tries to change the command it is shown: other aggregate, id, expected version, metadata."""

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        envelope.aggregate_id = "victim"
        envelope.command_id = "stolen"
        envelope.expected_version = None
        envelope.principal = "\ud800"  # a value the envelope check would refuse
        if envelope.metadata is not None:
            envelope.metadata["tenant"]["id"] = float("nan")


def test_an_interceptor_changing_the_envelope_changes_nothing_that_is_decided_or_stored(tmp_path):
    root = tmp_path / "s"
    p = open_partition(root, [Rewriter()])
    try:
        assert p.handle_batch([command("victim", "OpenAccount"), command("victim")])[1].version == 2
        meta = {"tenant": {"id": "t1"}}
        results = p.handle_batch([command("m", "OpenAccount", command_id="m-open", principal="alice", metadata=meta)])
        assert results[0].ok and results[0].version == 1
        assert meta == {"tenant": {"id": "t1"}}  # the caller's object is untouched too
        assert p.get_state("BankAccount", "victim")[0] == 2 and p.get_state("BankAccount", "m")[0] == 1
        row = p.log.read_positions(3, 3)[0]
        assert (row[3], row[4], row[8], row[12]) == ("m", 1, "m-open", "alice")
    finally:
        p.close()
    reopened = open_partition(root)  # the log is consistent: every aggregate's versions gapless
    try:
        assert reopened.get_state("BankAccount", "victim")[0] == 2 and reopened.get_state("BankAccount", "m")[0] == 1
    finally:
        reopened.close()


class DenyAll:
    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        raise CommandRefused("nobody may write")


def test_a_refused_command_reads_nothing_of_the_log_before_its_refusal(tmp_path):
    root = tmp_path / "s"
    p = open_partition(root)
    p.handle_batch([command(f"a{i}", "OpenAccount") for i in range(20)])
    p.close()
    p = open_partition(root, [DenyAll()])  # a fresh owner: nothing hydrated yet
    try:
        results = p.handle_batch([command(f"a{i}") for i in range(20)])
        assert all(isinstance(r.error, CommandRefused) for r in results)
        assert len(p.hydrated) == 0  # no aggregate was rebuilt (and no dedup window read) for a refused command
    finally:
        p.close()


class Counter:
    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        self.runs[envelope.command_id] = self.runs.get(envelope.command_id, 0) + 1
        if envelope.command_id == "refused":
            raise CommandRefused("not this one")


def test_each_command_passes_the_interceptors_once_also_when_its_batch_is_rerun_one_at_a_time(tmp_path):
    from es_actors.domain import DomainRegistry
    from es_actors.storage.layout import StoreLayout
    from es_actors.write.partition import Partition
    from es_actors.write.protocol import CommandEnvelope
    from tests.validation_domains import Odd

    counter = Counter()
    StoreLayout(tmp_path / "s").create_or_check(1, 1)
    p = Partition(StoreLayout(tmp_path / "s"), 0, DomainRegistry([Odd]), StoreConfig(partitions=1, lock_timeout_s=0),
                  [counter])
    try:
        cmd = lambda cid, kind: CommandEnvelope("Odd", "o1", cid, "Record", f'{{"kind":"{kind}"}}')
        # "odd" decides an event the log cannot encode: the batch is decided again one command at a time
        results = p.handle_batch([cmd("c1", "ok"), cmd("refused", "ok"), cmd("c2", "odd"), cmd("c3", "ok")])
        assert [r.ok for r in results] == [True, False, False, True]
        assert isinstance(results[1].error, CommandRefused)  # still refused on the re-run, without a second run
        assert counter.runs == {"c1": 1, "refused": 1, "c2": 1, "c3": 1}
    finally:
        p.close()


def test_an_envelope_without_its_fields_is_refused_naming_it(tmp_path):
    from es_actors.write.protocol import CommandEnvelope

    p = open_partition(tmp_path / "s")
    try:
        results = p.handle_batch([CommandEnvelope.__new__(CommandEnvelope), command("a", "OpenAccount")])
        assert isinstance(results[0].error, InvalidPayload) and "CommandEnvelope" in str(results[0].error)
        assert results[1].ok
    finally:
        p.close()
