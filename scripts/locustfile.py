"""Scenario load with locust: each simulated user is a visitor playing SDK sessions.

    uv run locust -f scripts/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8080

Web visitors post JSON arrays in small batches (like the web SDK in Batch mode), app visitors post
gzip+Base64 bodies (like the mobile SDKs). For capacity figures use `make bench` (wrk) instead:
locust itself tops out at a few thousand requests per second.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import sdkgen

APP_IDS = ["shop", "news_app"]


class SdkVisitor(HttpUser):
    wait_time = between(0.2, 2.0)

    def on_start(self) -> None:
        self.visitor = sdkgen.Visitor(random.choice(APP_IDS), "shop.example.com")
        self.mobile = random.random() < 0.3
        self.sequence = 0
        self.visits = 0

    @task
    def visit(self) -> None:
        events = sdkgen.Session(self.visitor).play(first_visit=self.visits == 0)
        self.visits += 1
        for start in range(0, len(events), 8):
            batch = events[start : start + 8]
            body = sdkgen.body_text(batch, gzip_base64=self.mobile)
            self.sequence += 1
            target = sdkgen.collect_target(
                self.visitor.app_id, body, self.sequence, gzip_base64=self.mobile, fake_ip=self.visitor.ip
            )
            with self.client.post(
                target,
                data=body,
                name="/collect",
                catch_response=True,
                headers={"User-Agent": self.visitor.user_agent, "Content-Type": "application/json; charset=utf-8"},
            ) as answer:
                if answer.status_code != 200:
                    answer.failure(f"status {answer.status_code}")
