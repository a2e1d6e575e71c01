"""Single writer per partition on S3 without a lock: two writer processes race for one partition,
many times, against a real S3-compatible server on 127.0.0.1 that serves one request at a time (so
the race cannot pass by the luck of interleaving inside the server). The older writer is fenced;
no acknowledged event of either is lost or doubled, and positions stay gapless. No Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from es_actors.storage.objects import ObjectBackend
from es_actors.storage.objects.s3 import S3BlobStore
from es_actors.testing.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, REGION, LocalS3, start_local_s3

TRIALS = 8
APPENDS = 25
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def single_threaded_s3() -> LocalS3:
    s3 = start_local_s3(single_threaded=True)
    yield s3
    s3.stop()


def _env(s3: LocalS3) -> dict[str, str]:
    env = dict(os.environ, AWS_ENDPOINT_URL=s3.endpoint_url, AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_two_writer_processes_one_is_fenced_and_no_acknowledged_event_is_lost_or_doubled(
    single_threaded_s3: LocalS3, tmp_path: Path
) -> None:
    bucket = single_threaded_s3.bucket("es-actors-fencing")
    fenced_trials = 0
    for trial in range(TRIALS):
        prefix, start = f"trial-{trial}", tmp_path / f"start-{trial}"
        outs = [tmp_path / f"out-{trial}-{w}" for w in "AB"]
        # Even trials: both are released together (they race to claim the partition). Odd trials: B
        # starts once A has acknowledged some events (a takeover while A appends).
        waits = [(start, 0), (start, 0) if trial % 2 == 0 else (outs[0], 1 + trial % 5)]
        procs = [
            subprocess.Popen([sys.executable, str(ROOT / "tests" / "s3_fencing_writer.py"), bucket, prefix, f"{w}{trial}-",
                              str(APPENDS), str(wait_file), str(after), str(out)], env=_env(single_threaded_s3))
            for w, out, (wait_file, after) in zip("AB", outs, waits)
        ]
        time.sleep(0.3 + 0.1 * (trial % 3))  # both are importing; the start file releases them together
        start.touch()
        for p in procs:
            assert p.wait(timeout=60) == 0
        lines = [out.read_text().splitlines() if out.exists() else [] for out in outs]
        acked = [line for ls in lines for line in ls if not line.startswith("fenced")]
        fenced_trials += any(line.startswith("fenced") for ls in lines for line in ls)
        blobs = S3BlobStore(bucket, prefix, client=single_threaded_s3.client())
        got = ObjectBackend(blobs).reader(0).read_all()
        ids = got.column("event_id").to_pylist()
        assert got.column("position").to_pylist() == list(range(1, len(ids) + 1)), f"trial {trial}: positions not gapless"
        assert len(set(ids)) == len(ids), f"trial {trial}: an event is doubled"
        missing = set(acked) - set(ids)
        assert not missing, f"trial {trial}: acknowledged events lost: {sorted(missing)[:5]}"
    assert fenced_trials >= TRIALS // 2, f"only {fenced_trials} of {TRIALS} trials fenced a writer: the race was not tried"


def test_the_fence_check_of_a_commit_is_one_request_however_many_owners_came_before() -> None:
    """Every open claims a new epoch; a commit checks for a newer one with one HEAD, not a LIST of all
    earlier claims (which grew with every reopen)."""
    import collections

    from es_actors.storage.objects.records import owner_key
    from es_actors.testing.local_s3 import shared_local_s3
    from es_actors.testing.storage_conformance import EventLog, small_config

    s3 = shared_local_s3()
    client = s3.client()
    blobs = S3BlobStore(s3.bucket("es-actors-fencing-cost"), f"owners-{time.time_ns()}", client=client)
    for epoch in range(1, 1201):  # 1,200 earlier owners: more than one LIST page
        assert blobs.put_if_absent(owner_key(0, epoch), b"{}")
    log = ObjectBackend(blobs).open_log(0, small_config())
    calls: collections.Counter[str] = collections.Counter()
    client.meta.events.register("before-call.s3.*", lambda model, **_kw: calls.update([model.name]))
    ev = EventLog()
    for i in range(5):
        ev.append(log, [f"a{i}"])
    log.close()
    assert calls["ListObjectsV2"] == 0 and calls["PutObject"] == 5 and calls["HeadObject"] == 5, dict(calls)
