"""The S3 sink against a real local S3 API server (moto), through the whole stack."""

from __future__ import annotations

import gzip
import http.client
import time

import boto3
import orjson
import pytest

from scripts import sdkgen
from scripts.stack import LocalStack


@pytest.fixture
def s3_stack(tmp_path, moto_endpoint):
    aws = {
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="raw-bucket")
    stack = LocalStack.isolated(
        tmp_path,
        processes=1,
        sink_uri="s3://raw-bucket/team-a",
        roll_seconds=0.5,
        env=aws,
    )
    stack.start()
    yield stack, client
    stack.stop()


def test_records_land_as_gzip_ndjson_objects_with_contract_keys(s3_stack):
    stack, client = s3_stack
    rids = set()
    bodies = {}
    for n in range(20):
        body = sdkgen.body_text(sdkgen.sample_batch(5, seed=n), gzip_base64=n % 2 == 0)
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        connection.request("POST", sdkgen.collect_target("shop", body, n + 1, gzip_base64=n % 2 == 0), body)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
        rid = answer.headers["X-Request-ID"]
        rids.add(rid)
        bodies[rid] = body
        connection.close()
    stack.stop()  # drains: everything acknowledged is uploaded before the worker exits

    listing = client.list_objects_v2(Bucket="raw-bucket", Prefix="team-a/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert keys
    hour = time.strftime("year=%Y/month=%m/day=%d/hour=%H", time.gmtime())
    found = {}
    for key in keys:
        assert key.startswith(f"team-a/clickstream/default/data/buffer/{hour}/") and key.endswith(".gz")
        head = client.head_object(Bucket="raw-bucket", Key=key)
        assert head["ContentType"] == "application/x-gzip"
        body = client.get_object(Bucket="raw-bucket", Key=key)["Body"].read()
        for line in gzip.decompress(body).splitlines():
            record = orjson.loads(line)
            assert record["rid"] not in found, "a record was written twice"
            found[record["rid"]] = record
    assert set(found) == rids
    for rid, record in found.items():
        assert record["data"] == bodies[rid]
