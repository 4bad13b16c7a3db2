"""A local OpenAI-compatible server for tests: real HTTP on 127.0.0.1, scripted answers.

It speaks enough of the API for the real `openai` client: GET /v1/models,
POST /v1/chat/completions, POST /v1/files (multipart), GET /v1/files/{id}/content,
POST /v1/batches and GET /v1/batches/{id}.

Chat answers come from `script` (a list consumed in order: a `Reply`, or a function of the
request body returning one); when the script is empty, from `always` (the same kind of step,
for a server broken for good), and without that the server plays a well-behaved model
(`valid_answer`).

Any string the server sends (a JSON body's strings, a text body, a header) can echo the
caller's key, as careless servers and proxies do, so tests can check that it never leaks out
of the client: see `ECHOES` for the forms it takes.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _key(auth: str) -> str:
    return auth.removeprefix("Bearer ")


def _wrapped(key: str) -> str:
    return f"{key[: len(key) // 2]}\n{key[len(key) // 2 :]}"


# Placeholders replaced in whatever the server sends, each a way a key really leaks.
ECHOES: dict[str, Callable[[str], str]] = {
    "{auth}": lambda auth: auth,  # the Authorization header: "Bearer <key>"
    "{key}": _key,
    # every character \uXXXX-escaped: in a JSON text body it decodes to the key, in a string it stays escaped
    "{key_escaped}": lambda auth: "".join(f"\\u{ord(c):04x}" for c in _key(auth)),
    "{key_split}": lambda auth: _wrapped(_key(auth)),  # wrapped at a line end, or chunked by a model
}


def echo(value: Any, auth: str) -> Any:
    """`value` (a JSON-like body or a string) with every placeholder of ECHOES filled in."""
    if isinstance(value, str):
        for name, fill in ECHOES.items():
            if name in value:
                value = value.replace(name, fill(auth))
        return value
    if isinstance(value, dict):
        return {k: echo(v, auth) for k, v in value.items()}
    if isinstance(value, list):
        return [echo(v, auth) for v in value]
    return value


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict: sent as JSON; str: sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering, as a server that went away


def completion(content: str, prompt_tokens: int = 100, completion_tokens: int = 40) -> Reply:
    return Reply(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(
    status: int,
    message: str = "error",
    headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
    code: str | None = None,
) -> Reply:
    """An error reply (placeholders of ECHOES in the message are filled in)."""
    return Reply(
        status, {"error": {"message": message, "type": "fake_error", "code": code}}, headers or {}, delay_s
    )


def asked_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of the last user message that carries some (the real request, not an example)."""
    for message in reversed(body["messages"]):
        content = message["content"]
        if message["role"] == "user" and '{"items"' in content:
            return json.loads(content[content.index('{"items"') :])["items"]
    raise AssertionError("no items in the request")


def asked_levels(body: dict[str, Any]) -> list[str]:
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return re.search(r"at the levels (.+?)\.\n", first_user).group(1).split(", ")


def _split(words: list[str], k: int) -> list[str]:
    edges = [round(i * len(words) / k) for i in range(k + 1)]
    return [" ".join(words[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


def valid_answer(body: dict[str, Any]) -> dict[str, Any]:
    """What a good model answers: two-word chunks at the lowest level, halving upwards."""
    items = []
    for item in asked_items(body):
        words = item["source"].split()
        shortest = min([len(words), *(len(t.split()) for t in item["translations"].values())])
        k = max(1, min(len(words) // 2, shortest))
        levels = {}
        for level in asked_levels(body):
            levels[level] = {
                "source_chunks": _split(words, k),
                "target_chunks": {lang: _split(t.split(), k) for lang, t in item["translations"].items()},
            }
            k = max(1, k // 2)
        items.append({"id": item["id"], "levels": levels})
    return {"items": items}


def answer_with(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Reply]:
    """A script step: the valid answer, changed by `change` (which edits it or returns text)."""

    def reply(body: dict[str, Any]) -> Reply:
        answer = valid_answer(body)
        changed = change(answer)
        return completion(changed if isinstance(changed, str) else json.dumps(answer))

    return reply


class FakeOpenAI:
    def __init__(self, refuse_json_schema: bool = False, polls_until_done: int = 1, estimate_tokens: bool = False):
        self.script: list[Reply | Callable[[dict[str, Any]], Reply]] = []
        self.always: Reply | Callable[[dict[str, Any]], Reply] | None = None  # once the script is empty
        self.refuse_json_schema = refuse_json_schema
        self.estimate_tokens = estimate_tokens  # count ~4 characters a token instead of fixed numbers
        self.models_reply: Reply | None = None  # what GET /v1/models answers instead of the model list
        self.polls_until_done = polls_until_done
        self.batch_extra: dict[str, Any] = {}  # fields laid over every batch object sent
        self.chat_requests: list[dict[str, Any]] = []
        self.chat_times: list[float] = []  # time.monotonic() when each chat request arrived, in order
        self.authorizations: list[str] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- behaviour -----------------------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.chat_times.append(time.monotonic())
            self.chat_requests.append(body)
            step = self.script.pop(0) if self.script else self.always
        if self.refuse_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            return error(400, "response_format json_schema is not supported")
        if step is None:
            content = json.dumps(valid_answer(body), ensure_ascii=False)
            if self.estimate_tokens:
                prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
                return completion(content, prompt // 4, len(content) // 4)
            return completion(content)
        return step(body) if callable(step) else step

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _run_batch(self, input_file_id: str) -> str:
        lines = []
        for raw in self.files[input_file_id].decode().splitlines():
            request = json.loads(raw)
            reply = self.chat(request["body"])
            lines.append(
                json.dumps(
                    {
                        "id": self._new_id("batch_req"),
                        "custom_id": request["custom_id"],
                        "response": {"status_code": reply.status, "request_id": "r", "body": reply.body},
                        "error": None,
                    }
                )
            )
        out_id = self._new_id("file")
        self.files[out_id] = ("\n".join(lines) + "\n").encode()
        return out_id

    def _batch_json(self, batch_id: str) -> dict[str, Any]:
        b = self.batches[batch_id]
        done = b["polls"] >= self.polls_until_done
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": b["input_file_id"],
            "completion_window": "24h",
            "created_at": 0,
            "status": "completed" if done else "in_progress",
            "output_file_id": b["output_file_id"] if done else None,
            "error_file_id": None,
            "request_counts": {"total": b["n"], "completed": b["n"] if done else 0, "failed": 0},
            **self.batch_extra,
        }

    # -- HTTP ----------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    return
                auth = self.headers.get("Authorization", "")
                body = echo(reply.body, auth)
                data = (
                    body.encode()
                    if isinstance(body, str)
                    else (json.dumps(body).encode() if body is not None else b"")
                )
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, echo(v, auth).replace("\n", " "))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout tests)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):
                fake.authorizations.append(self.headers.get("Authorization", ""))
                if self.path.startswith("/v1/models"):
                    model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "me"}
                    return self._send(fake.models_reply or Reply(body={"object": "list", "data": [model]}))
                m = re.fullmatch(r"/v1/files/([\w-]+)/content", self.path)
                if m:
                    return self._send(Reply(body=fake.files[m.group(1)].decode()))
                m = re.fullmatch(r"/v1/batches/([\w-]+)", self.path)
                if m:
                    fake.batches[m.group(1)]["polls"] += 1
                    return self._send(Reply(body=fake._batch_json(m.group(1))))
                self._send(error(404, f"no route {self.path}"))

            def do_POST(self):
                fake.authorizations.append(self.headers.get("Authorization", ""))
                raw = self._body()
                if self.path == "/v1/chat/completions":
                    return self._send(fake.chat(json.loads(raw)))
                if self.path == "/v1/files":
                    message = email.parser.BytesParser().parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
                    )
                    parts = {
                        p.get_param("name", header="content-disposition"): p for p in message.get_payload()
                    }
                    file_id = fake._new_id("file")
                    fake.files[file_id] = parts["file"].get_payload(decode=True)
                    return self._send(
                        Reply(
                            body={
                                "id": file_id,
                                "object": "file",
                                "bytes": len(fake.files[file_id]),
                                "created_at": 0,
                                "filename": "requests.jsonl",
                                "purpose": "batch",
                                "status": "processed",
                            }
                        )
                    )
                if self.path == "/v1/batches":
                    request = json.loads(raw)
                    batch_id = fake._new_id("batch")
                    n = len(fake.files[request["input_file_id"]].decode().splitlines())
                    fake.batches[batch_id] = {
                        "input_file_id": request["input_file_id"],
                        "output_file_id": fake._run_batch(request["input_file_id"]),
                        "polls": 0,
                        "n": n,
                    }
                    return self._send(Reply(body=fake._batch_json(batch_id)))
                self._send(error(404, f"no route {self.path}"))

        return Handler
