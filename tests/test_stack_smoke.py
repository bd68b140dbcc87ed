import urllib.request

from scripts import sdkgen
from tests.support import metric_value, wait_for_rids


def test_one_request_lands_in_the_lake(stack):
    body = sdkgen.body_text(sdkgen.sample_batch(3, seed=7))
    target = sdkgen.collect_target("shop", body, 1)
    request = urllib.request.Request(stack.url + target, data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
        rid = answer.headers["X-Request-ID"]
    records = wait_for_rids(stack.lake, {rid})
    (record,) = [r for r in records if r["rid"] == rid]
    assert record["data"] == body
    assert record["uri"] == target
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert metric_value(text, "proxy_accepted_records_total") >= 1
