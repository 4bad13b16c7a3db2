"""`simulforge-worker`: an SDK worker's boot for an external worker pool, what Beam's container `boot` does.

On Flink or Spark on Kubernetes, each worker pod runs Beam's worker pool, which starts one SDK worker
per request of the runner by running its container's boot program with the runner's endpoints:

    python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT --container_executable=simulforge-worker

Started without an executable, the pool runs a bare SDK harness that never sees the job's pipeline
options, so a filesystem that needs them (s3:// with --s3_endpoint_url and credentials) cannot be
reached from the workers. This boot does what Beam's Go boot does: it asks the runner's provision
service for the job's options and starts the SDK harness with them, in an empty temporary folder of
its own (workers share nothing but the storage; nothing of the pool's cwd or the launcher's state).
The worker's environment is the pool's: the packages of the worker image and any credentials it holds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

STAGED = "staged"  # sdk_worker_main puts SEMI_PERSISTENT_DIRECTORY/staged on sys.path


def provision_info(endpoint: str, worker_id: str):
    """The job's provision info (pipeline options, endpoints) from the runner, for this worker."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        request = beam_provision_api_pb2.GetProvisionInfoRequest()
        return stub.GetProvisionInfo(request, metadata=[("worker_id", worker_id)], timeout=60).info


def harness_environment(info, args, folder: str) -> dict[str, str]:
    """The environment sdk_worker_main reads: the runner's endpoints, the job's options, a folder."""
    from apache_beam.portability.api import endpoints_pb2
    from google.protobuf import json_format, text_format

    def descriptor(given, fallback: str) -> str:
        url = given.url if given.url else fallback
        return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

    env = {
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(info.control_endpoint, args.control_endpoint),
        "SEMI_PERSISTENT_DIRECTORY": folder,
        "WORKER_ID": args.id,
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if info.logging_endpoint.url or args.logging_endpoint:
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = descriptor(info.logging_endpoint, args.logging_endpoint)
    return env


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="simulforge-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", required=True, help="the worker id the runner gave")
    parser.add_argument("--provision_endpoint", required=True)
    parser.add_argument("--control_endpoint", required=True)
    parser.add_argument("--logging_endpoint", default="")
    parser.add_argument("--artifact_endpoint", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    info = provision_info(args.provision_endpoint, args.id)
    folder = tempfile.mkdtemp(prefix=f"simulforge-worker-{args.id}-")
    os.makedirs(os.path.join(folder, STAGED))
    try:
        os.chdir(folder)
        os.environ.update(harness_environment(info, args, folder))
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process, as curate sets locally
        from apache_beam.runners.worker import sdk_worker_main

        from ..transforms import files  # noqa: F401  (its fix of Beam's S3 writer, before any write)

        sdk_worker_main.main(sys.argv)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
