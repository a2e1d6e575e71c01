"""Review 20 (hostile): read models, backfills and queries on an object-storage store (the local
S3-compatible server on 127.0.0.1; real Ray, real files)."""

from __future__ import annotations

import pytest

from es_actors import Store
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.jobs.backfill import backfill
from es_actors.read.readmodel.database import readmodel_path
from es_actors.storage.layout import read_models_dir
from tests.backfill_domains import SmallBalances

BACKENDS = ("s3",)


def _fill(store: Store, n: int = 4) -> None:
    store.submit_many([(BankAccount, f"a{i}", OpenAccount(owner=f"o{i}")) for i in range(n)])
    store.submit_many([(BankAccount, f"a{i}", Deposit(amount=i + 1)) for i in range(n)])


def test_a_backfill_installs_into_the_read_model_dir_the_store_was_opened_with(store_factory, tmp_path, monkeypatch):
    """A store opened with read_model_dir=X keeps its read model in X/<store id>. A backfill run with
    no projector up installs into X when told so (read_model_dir=, --read-model-dir); not told, it
    says before any work that it starts a new read model where this process resolves it, and its
    report names the file it went into (it used to say only "this process")."""
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    monkeypatch.setenv("ES_ACTORS_READ_MODELS", str(elsewhere))
    store = store_factory("bf", partitions=2, read_model_dir=str(mine), projections=[SmallBalances])
    _fill(store)
    store.projections.wait_for("balances", None, timeout=30)
    uri, store_id = store.layout.uri, store.descriptor.store_id
    store.close()
    said: list[dict] = []
    report = backfill(uri, SmallBalances, [BankAccount], parallelism=1, progress=said.append)
    stray = readmodel_path(read_models_dir(store_id, str(elsewhere)))
    assert str(stray) in report.installed_by, report.installed_by
    notes = [u["message"] for u in said if u.get("event") == "note"]
    assert notes and "read_model_dir" in notes[0] and str(stray.parent.parent) in notes[0], said
    report = backfill(uri, SmallBalances, [BankAccount], parallelism=1, progress=said.append, restart=True,
                      read_model_dir=str(mine))
    assert str(readmodel_path(read_models_dir(store_id, str(mine)))) in report.installed_by
    again = Store.open(uri, [BankAccount], read_only=True, read_model_dir=str(mine))
    assert again.query("SELECT count(*) AS n FROM balances__v1.balances").column("n")[0].as_py() == 4


def test_a_read_model_dir_that_is_not_a_directory_is_named_not_a_traceback(store_factory, tmp_path):
    """read_model_dir pointing at a regular file (or an unwritable place): the user's mistake must
    come back as an es_actors error that names the setting and the path -- today Store.open raises
    ActorStartFailed whose text is the projector actor's Python traceback (``File "...", line``,
    ``NotADirectoryError``), found only when the projector starts."""
    from es_actors.errors import EsActorsError
    from es_actors.examples.bank_projections import Balances

    bad = tmp_path / "a-file"
    bad.write_text("not a directory")
    with pytest.raises(EsActorsError) as info:
        store_factory("rmd", partitions=1, projections=[Balances], read_model_dir=str(bad))
    text = str(info.value)
    assert "read_model_dir" in text, text
    assert 'File "' not in text and "Traceback" not in text, text
