"""An S3-compatible server for tests: moto's server (`moto_server`, an implementation of the
S3 API over HTTP, in memory) on a free loopback port, in a process of its own; the backend
talks to it over HTTP with boto3 as it would to MinIO or AWS. Its objects live only as long
as the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker import free_port
from polling import stop_process, wait_listening

# Any non-empty keys: the server checks none. Set in the environment of the test process and
# of every `espcam serve` it starts, as a user would for MinIO.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "espcam-test", "AWS_SECRET_ACCESS_KEY": "espcam-test-key",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = "127.0.0.1", port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3Server:
        binary = Path(sys.executable).with_name("moto_server")
        log = self.dir / "moto.log"
        self.proc = subprocess.Popen(
            [str(binary), "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
            env=dict(os.environ, **CREDENTIALS))
        # moto imports Flask and its S3 models first: seconds on a loaded machine.
        wait_listening(self.host, self.port, self.proc, lambda: log.read_text(), timeout=90)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`: key -> bytes."""
        s3 = self.client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out
