"""The LLM judge against a local OpenAI-compatible HTTP server started by the test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flopnet.verifiers.judge import check_judge, parse_score
from flopnet.verifiers.registry import Verifiers, VerifyOptions


class JudgeServer:
    """Answers /v1/chat/completions with ``reply`` (or ``status``); records the requests."""

    def __init__(self) -> None:
        self.reply = '{"score": 85}'
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                server.headers.append(dict(self.headers))
                answer = {"choices": [{"message": {"role": "assistant", "content": server.reply}}]}
                data = json.dumps(answer).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge() -> Iterator[JudgeServer]:
    server = JudgeServer()
    yield server
    server.close()


TASK = {"task_type": "llm_judge", "question": "Why is the sky blue?", "gold": "Rayleigh scattering"}
RESPONSE = "<think>secret draft: maybe dust</think> Because of Rayleigh scattering of sunlight."


def test_score_is_normalised_and_only_the_final_answer_is_sent(judge: JudgeServer) -> None:
    r = check_judge(TASK, RESPONSE, url=judge.url, model="m1", api_key="k3y")
    assert r.score == pytest.approx(0.85) and r.passed and r.error is None
    request = judge.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["model"] == "m1"
    user = request["messages"][-1]["content"]
    assert "Rayleigh scattering of sunlight" in user and "Why is the sky blue?" in user
    assert "secret draft" not in user  # the reasoning is not judged
    assert judge.headers[0]["Authorization"] == "Bearer k3y"


def test_reply_formats(judge: JudgeServer) -> None:
    judge.reply = "<think>hmm, partly right</think>Score: 30"
    r = check_judge(TASK, RESPONSE, url=judge.url, model="m")
    assert r.score == pytest.approx(0.3) and not r.passed
    assert parse_score('```json\n{"score": 100}\n```') == 100
    assert parse_score("I'd say score = 72/100") == 72
    assert parse_score('{"score": 250}') is None
    assert parse_score("no idea") is None


def test_endpoint_failures_are_errors(judge: JudgeServer) -> None:
    judge.status = 500
    r = check_judge(TASK, RESPONSE, url=judge.url, model="m")
    assert r.error is not None and "HTTP 500" in r.error and r.score == 0.0
    judge.status, judge.reply = 200, "I cannot grade this."
    r = check_judge(TASK, RESPONSE, url=judge.url, model="m")
    assert r.error is not None and "no 0-100 score" in r.error
    r = check_judge(TASK, RESPONSE, url="http://127.0.0.1:9/v1", model="m", timeout_s=2)
    assert r.error is not None and r.score == 0.0
    r = check_judge(TASK, "<think>never finished", url=judge.url, model="m")
    assert not r.passed and r.error is None and "unfinished" in r.reasons[0]


def test_judge_through_the_registry(judge: JudgeServer) -> None:
    options = VerifyOptions(judge_url=judge.url, judge_model="grader", judge_threshold=0.9)
    with Verifiers(options, workers=1) as v:
        r = v.verify(TASK, RESPONSE)
        assert r.score == pytest.approx(0.85) and not r.passed  # below the 0.9 threshold
        assert dict(r.rules)["format"] is True
        r = v.verify({"task_type": "stem", "question": "q"}, RESPONSE)
        assert r.error is not None and "reference" in r.error
    with Verifiers(workers=1) as v:
        assert "no LLM judge configured" in (v.verify(TASK, RESPONSE).error or "")
