"""OpenAIBackend through the real openai client against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import time
import traceback
from collections import Counter

import numpy as np
import openai
import pytest

from openai_fake_server import ENCODING, FakeOpenAIServer, Fault, fake_embedding
from recs.config import RecsConfig
from recs.embeddings.openai_backend import EmbeddingInputError, OpenAIBackend, OpenAIKeyError

KEY = "sk-test-right-key"
DIMENSIONS = 16  # small vectors keep the responses light; the 1536-wide path has its own test
UNKNOWN_MODEL = "acme-embed-1"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(api_key=KEY, model_dimensions={UNKNOWN_MODEL: 384}) as running:
        yield running


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    return server


def make_backend(**settings) -> OpenAIBackend:
    defaults = {
        "embedding_backend": "openai",
        "embedding_dimensions": DIMENSIONS,
        "openai_timeout_seconds": 5.0,
        "openai_max_retries": 3,
        "openai_concurrency": 4,
    }
    return OpenAIBackend.from_settings(RecsConfig.from_settings({**defaults, **settings}).embedding)


def product_texts(count: int, prefix: str = "Product") -> list[str]:
    colours = ["blue", "red", "green", "white", "black"]
    return [f"{prefix} {i}: {colours[i % 5]} ceramic mug, {250 + i % 7 * 50} ml, dishwasher safe" for i in range(count)]


def expected(texts: list[str], dimensions: int | None = DIMENSIONS, native: int = 1536) -> np.ndarray:
    return np.stack([fake_embedding(text, native, dimensions) for text in texts])


def assert_each_delivered_once(fake: FakeOpenAIServer, texts: list[str]) -> None:
    """Every text was paid for in exactly one successful response."""
    assert Counter(fake.delivered) == Counter(set(texts))


def test_vectors_match_the_server_in_input_order(fake):
    texts = product_texts(50)[::-1]
    vectors = make_backend().embed(texts)

    assert vectors.dtype == np.float32
    assert vectors.shape == (50, DIMENSIONS)
    np.testing.assert_allclose(vectors, expected(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert [record.dimensions for record in fake.requests] == [DIMENSIONS]


def test_native_dimensions_are_not_sent(fake):
    backend = make_backend(embedding_dimensions=0)
    texts = product_texts(3)

    vectors = backend.embed(texts)

    assert backend.dimensions == 1536 and backend.space == "openai:text-embedding-3-small:1536"
    np.testing.assert_allclose(vectors, expected(texts, dimensions=None), atol=1e-6)
    assert fake.requests[0].dimensions is None


def test_unknown_model_learns_its_dimensions_from_the_first_response(fake):
    backend = make_backend(embedding_model=UNKNOWN_MODEL, embedding_dimensions=0)
    assert backend.dimensions == 0

    vectors = backend.embed(["a lamp"])

    assert vectors.shape == (1, 384)
    assert backend.space == f"openai:{UNKNOWN_MODEL}:384"


def test_ada_refuses_a_dimensions_setting_before_any_request(fake):
    with pytest.raises(ValueError, match="dimensions"):
        make_backend(embedding_model="text-embedding-ada-002", embedding_dimensions=256)
    assert fake.requests == []


def test_many_inputs_are_split_at_2048_and_sent_concurrently_in_order(fake):
    texts = product_texts(5000)

    vectors = make_backend(openai_concurrency=4).embed(texts)

    sizes = [len(record.inputs) for record in fake.requests]
    assert len(sizes) >= 3 and max(sizes) <= 2048 and sum(sizes) == 5000
    assert {record.status for record in fake.requests} == {200}
    np.testing.assert_allclose(vectors, expected(texts), atol=1e-6)


def test_requests_stay_under_the_token_limit(fake):
    # 40 inputs of ~7,900 tokens: ~316k tokens, more than one request may carry.
    body = " ".join(f"w{i % 500}" for i in range(4000))
    texts = [f"{i} {body}" for i in range(40)]
    assert sum(len(ENCODING.encode_ordinary(text)) for text in texts) > 300_000

    vectors = make_backend().embed(texts)

    assert len(fake.requests) >= 2
    assert all(record.status == 200 and record.tokens <= 250_000 for record in fake.requests)
    np.testing.assert_allclose(vectors, expected(texts), atol=1e-6)


def test_long_input_is_cut_to_8191_tokens(fake):
    text = " ".join(f"word{i}" for i in range(6000))
    assert len(ENCODING.encode_ordinary(text)) > 8191
    backend = make_backend()

    vectors = backend.embed([text])

    (record,) = fake.requests
    (sent,) = record.inputs
    assert text.startswith(sent)
    assert 8180 <= record.tokens <= 8191
    np.testing.assert_allclose(vectors[0], fake_embedding(sent, 1536, DIMENSIONS), atol=1e-6)
    assert backend.stats()["truncated"] == 1


def test_empty_strings_get_zero_rows_and_duplicates_are_sent_once(fake):
    texts = ["", "a kettle", "", "a toaster", "a kettle"]

    vectors = make_backend().embed(texts)

    assert fake.received == ["a kettle", "a toaster"]
    assert not vectors[0].any() and not vectors[2].any()
    np.testing.assert_allclose(vectors[[1, 3, 4]], expected(["a kettle", "a toaster", "a kettle"]), atol=1e-6)


FAULTS = {
    "429 retry-after": Fault.rate_limit(retry_after=1),
    "500": Fault.status(500),
    "503": Fault.status(503),
    "timeout": Fault.stall(3),
    "truncated body": Fault.truncated_body(),
    "invalid json": Fault.invalid_json(),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_fault_is_retried_to_the_fault_free_vectors(fake, fault):
    backend = make_backend(openai_timeout_seconds=1.0)
    texts = product_texts(300)
    fake.add_faults(fault)

    vectors = backend.embed(texts)

    np.testing.assert_allclose(vectors, expected(texts), atol=1e-6)
    assert_each_delivered_once(fake, texts)
    assert len(fake.requests) == 2
    stats = backend.stats()
    assert stats["retries"] == 1 and stats["requests"] == 2 and stats["inputs"] == 300


def test_retry_after_is_honoured(fake):
    fake.add_faults(Fault.rate_limit(retry_after=1))

    make_backend().embed(["a chair"])

    first, second = fake.requests
    assert first.status == 429 and second.status == 200
    # The client's own first backoff is at most 0.5 s: only Retry-After explains a 1 s wait.
    assert second.started - first.started >= 0.95
    assert second.retry_count_header == "1"


def test_faults_on_concurrent_requests_each_recover(fake):
    texts = product_texts(5000)
    fake.add_faults(Fault.status(503), Fault.rate_limit(retry_after=1), Fault.truncated_body())

    vectors = make_backend(openai_concurrency=3).embed(texts)

    np.testing.assert_allclose(vectors, expected(texts), atol=1e-6)
    assert_each_delivered_once(fake, texts)


def test_a_refused_input_is_isolated_and_shortened_without_losing_the_others(fake):
    # The marker sits in the second half of one input: the API refuses it whole, accepts it halved.
    poisoned = "Garden hose, 20 m. " + "Durable and flexible. " * 40 + "FORBIDDEN"
    texts = product_texts(200)
    texts.insert(123, poisoned)
    fake.reject_inputs(lambda text: "FORBIDDEN" in text)
    backend = make_backend()

    vectors = backend.embed(texts)

    tokens = ENCODING.encode_ordinary(poisoned)
    halved = ENCODING.decode(tokens[: len(tokens) // 2])
    others = texts[:123] + texts[124:]
    np.testing.assert_allclose(np.delete(vectors, 123, axis=0), expected(others), atol=1e-6)
    np.testing.assert_allclose(vectors[123], fake_embedding(halved, 1536, DIMENSIONS), atol=1e-6)
    assert_each_delivered_once(fake, others + [halved])
    # Bisection costs about two requests per halving, not one per input.
    assert len(fake.requests) <= 2 * 8 + 2


def test_an_input_refused_even_shortened_is_reported_by_index(fake):
    texts = product_texts(20)
    texts[7] = "BAD " + texts[7]
    fake.reject_inputs(lambda text: text.startswith("BAD"))

    with pytest.raises(EmbeddingInputError) as caught:
        make_backend().embed(texts)

    assert caught.value.index == 7
    assert "#7" in str(caught.value) and "ceramic mug" not in str(caught.value)


def test_a_rejected_key_fails_at_once_without_showing_it(fake, monkeypatch):
    secret = "sk-wrong-Zebra-4242-do-not-print"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    backend = make_backend(openai_max_retries=6)

    started = time.monotonic()
    with pytest.raises(OpenAIKeyError) as caught:
        backend.embed(product_texts(5))

    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message and "rejected" in message
    assert "Zebra" not in "".join(traceback.format_exception(caught.value))
    assert len(fake.requests) == 0  # refused before any input was looked at
    assert backend.stats()["requests"] == 1 and backend.stats()["retries"] == 0


def test_a_missing_key_fails_before_any_request(fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")

    with pytest.raises(OpenAIKeyError, match="OPENAI_API_KEY"):
        make_backend()


def test_stats_count_requests_tokens_retries_and_cost(fake):
    backend = make_backend(embedding_price_per_million_tokens=0.13)
    texts = product_texts(100)
    fake.add_faults(Fault.status(500))

    backend.embed(texts)

    stats = backend.stats()
    tokens = sum(len(ENCODING.encode_ordinary(text)) for text in texts)
    assert stats["requests"] == 2 and stats["retries"] == 1 and stats["inputs"] == 100
    assert stats["tokens_sent"] == tokens == fake.tokens_delivered
    assert stats["estimated_cost_usd"] == pytest.approx(tokens * 0.13 / 1e6)


def test_the_fake_server_refuses_what_the_api_refuses(fake):
    client = openai.OpenAI(api_key=KEY, base_url=fake.url, max_retries=0)
    model = "text-embedding-3-small"

    for bad_input in ([""], ["x"] * 2049, ["word " * 8200], ["word " * 7000] * 43):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(input=bad_input, model=model)

    as_tokens = client.embeddings.create(input=[ENCODING.encode_ordinary("a sofa")], model=model)
    as_floats = client.embeddings.create(input="a sofa", model=model, encoding_format="float")
    np.testing.assert_allclose(as_tokens.data[0].embedding, fake_embedding("a sofa", 1536), atol=1e-6)
    np.testing.assert_allclose(as_floats.data[0].embedding, fake_embedding("a sofa", 1536), atol=1e-6)
    assert as_floats.usage.prompt_tokens == len(ENCODING.encode_ordinary("a sofa"))
