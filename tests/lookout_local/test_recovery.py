"""Crash recovery: jobs recorded IN_PROGRESS when the process died are run again by the next process."""

from __future__ import annotations

import shutil

from agent.lookout_local import LocalLookoutService

from . import synth
from .conftest import BUCKET, make_client, wait_for, write_history

ROLE = "arn:aws:iam::123456789012:role/l4e"


def test_in_progress_jobs_resume_after_a_crash(tmp_path, store, history):
    write_history(store, {c: f.iloc[:600] for c, f in history.items()})
    store_url = (tmp_path / "store").as_uri() + "/"
    svc = LocalLookoutService(tmp_path / "state", store_url).start()
    try:
        client = make_client(svc.endpoint_url)
        client.create_dataset(DatasetName="crash", DatasetSchema={"InlineDataSchema": synth.schema()})
        with svc.worker.paused():
            job = client.start_data_ingestion_job(
                DatasetName="crash", RoleArn=ROLE,
                IngestionInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "history/"}})
            # the state as a crash would leave it: committed, the job never run
            shutil.copytree(tmp_path / "state", tmp_path / "crashed")
    finally:
        svc.stop()
    with LocalLookoutService(tmp_path / "crashed", store_url) as again:
        client = make_client(again.endpoint_url)
        done = wait_for(lambda: (d := client.describe_data_ingestion_job(JobId=job["JobId"]))["Status"] != "IN_PROGRESS"
                        and d)
        assert done["Status"] == "SUCCESS"
        assert client.describe_dataset(DatasetName="crash")["Status"] == "ACTIVE"
