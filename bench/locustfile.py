"""The benchmark's Locust peer: boto3 PutObject 1 KiB into one bucket, wait 0."""
import time

import boto3
import botocore.config
from locust import User, constant, task


class S3Put(User):
    wait_time = constant(0)

    def on_start(self):
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.host,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}
            ),
        )
        self.body = b"x" * 1024
        self.n = 0

    @task
    def put(self):
        self.n += 1
        start = time.perf_counter()
        exc = None
        try:
            self.s3.put_object(Bucket="bench", Key=f"{id(self)}/{self.n}", Body=self.body)
        except Exception as e:  # noqa: BLE001 - every failure is recorded
            exc = e
        self.environment.events.request.fire(
            request_type="s3",
            name="PutObject",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=exc,
            context={},
        )
