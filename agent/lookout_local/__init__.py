"""A local Amazon Lookout for Equipment compatible service (AWS ended L4E support on 2026-10-07).

It speaks the L4E API (AWS JSON 1.0, the 22 operations of the 2021 API) so an unmodified boto3
``lookoutequipment`` client works against it, reads sensor CSVs from the same buckets/folders the agent
writes, trains a multivariate detector and runs inference schedulers that write ``results.jsonl``.

Modules, one job each:
    protocol    wire format (X-Amz-Target, JSON bodies, errors)      validation  botocore-model request checks
    sigv4       optional signature verification                       state       SQLite persistence
    stores      bucket → agent.pipeline.store ObjectStore                       operations  the 22 API operations
    pagination  NextToken/MaxResults                                  schema      InlineDataSchema parsing
    timestamps  CSV timestamp formats                                 ingest      CSVs → Parquet + data quality
    detector    the anomaly detector (numpy)                          modeling    resampling, training, metrics, scoring
    inference   one scheduler window → results.jsonl                 scheduler   the tick loop over schedulers
    worker      ingestion/training thread                             server      HTTP + LocalLookoutService
    cli         serve_main, worker_main
Fleet mode (``--db postgresql://…``):
    pgstate     PostgreSQL persistence                                migrate     Alembic (migrations/)
    dispatch    due windows → executions + tasks                      fleet       procrastinate tasks, workers, leases
    artifacts   datasets' and models' files for every host (PostgreSQL)
"""

from agent.lookout_local.cli import serve_main
from agent.lookout_local.server import LocalLookoutService

__all__ = ["LocalLookoutService", "serve_main"]
