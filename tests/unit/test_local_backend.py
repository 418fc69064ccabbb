"""The job's local backend (all-MiniLM-L6-v2, ONNX int8 when it can be built): real semantics,
and the vectors of plain sentence-transformers within int8 noise."""

from __future__ import annotations

import numpy as np
import pytest

from recs.embeddings.local import LocalBackend, _model_path

TEXTS = [
    "red wine glass",
    "Set of 4 wine goblets, lead-free crystal, 15 oz",
    "Garden hose 50 ft, kink resistant, brass fittings",
    "Stapler, full strip, black. Office Products. Staples up to 20 sheets.",
    "Heavy duty 3-hole punch, adjustable, 40 sheets",
    "Ballpoint pens, medium point, blue ink, 12 pack",
    "Gel pens, fine point, assorted colours",
    "Printer paper, letter size, 20 lb, 500 sheets per ream, bright white",
    "Cardstock, 110 lb, 250 sheets, white",
    "HP 61 black ink cartridge",
    "Toner cartridge for Brother HL-L2350DW, high yield",
    "Cordless phone, DECT 6.0, 2 handsets, answering machine",
    "Corded telephone with big buttons and speakerphone",
    "Desk lamp, LED, dimmable, USB charging port",
    "Ergonomic office chair, mesh back, lumbar support",
    "Standing desk converter, 32 inch, height adjustable",
    "Monitor stand riser with drawer, bamboo",
    "Sticky notes, 3 x 3 in, canary yellow, 12 pads",
    "Index cards, ruled, 3 x 5, 100 count",
    "File folders, letter size, 1/3 cut tab, manila, 100 per box",
    "Hanging file folders, green, legal size",
    "Label maker, handheld, QWERTY keyboard",
    "Shipping labels for laser printers, 2 x 4 in",
    "Packing tape, clear, 6 rolls with dispenser",
    "Bubble mailers, 6 x 10 in, padded envelopes, 50 pack",
    "Scientific calculator, 240 functions, two-line display",
    "Paper shredder, cross cut, 12 sheets, 5 gallon bin",
    "Whiteboard, magnetic, 36 x 24, aluminium frame",
    "Dry erase markers, chisel tip, assorted, 12 count",
    "Cork bulletin board with push pins",
    "Binder, 3 ring, 2 inch, D-ring, view cover, black",
    "Sheet protectors, clear, heavy weight, 100 pack",
    "Laminator, 9 inch, hot and cold, with pouches",
    "Envelopes #10, security tint, self seal, 500 count",
    "Rubber bands, assorted sizes, 1 lb bag",
    "Paper clips, jumbo, silver, 10 boxes of 100",
    "Desk organizer, mesh, 5 compartments",
    "Pencil sharpener, electric, heavy duty",
    "Mechanical pencils 0.7 mm with erasers",
    "Highlighters, chisel tip, fluorescent, 10 pack",
    "Scissors, 8 inch, stainless steel, comfort grip",
    "Tape dispenser, weighted, non-skid base",
    "Notebook, college ruled, spiral bound, 70 sheets",
    "Planner 2026, weekly and monthly, hardcover",
    "Wall clock, silent, 12 inch, battery operated",
    "Coffee mug, ceramic, 12 oz, microwave safe",
    "USB flash drive 64 GB",
    "Wireless mouse, 2.4 GHz, silent click",
    "Keyboard wrist rest, memory foam",
    "AT&T 210 corded phone, black. Office Electronics. A basic phone that's reliable and easy to use.",
    "x",
    "",
]


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend()


def test_the_backend_builds_its_fast_runtime_in_its_own_space(backend):
    # This machine has onnxruntime: `auto` must not silently fall back to torch.
    assert backend.runtime == "onnx-int8"
    assert backend.space == "local:all-MiniLM-L6-v2@onnx-int8-v1:384"
    assert LocalBackend(runtime="torch").space == "local:all-MiniLM-L6-v2:384"


def test_wine_glass_is_nearer_wine_goblets_than_a_garden_hose(backend):
    glass, goblets, hose = backend.embed(["red wine glass", "set of 4 wine goblets", "garden hose"])
    assert float(glass @ goblets) > float(glass @ hose) + 0.2


def test_vectors_agree_with_plain_sentence_transformers(backend):
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(_model_path("all-MiniLM-L6-v2"), device="cpu")
    expected = plain.encode(TEXTS, batch_size=16, normalize_embeddings=True, show_progress_bar=False)
    before = backend.stats()

    vectors = backend.embed(TEXTS)

    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.mean() >= 0.99, cosines
    assert cosines.min() >= 0.95, cosines
    # Input order is kept although the backend batches by length.
    assert np.argmax(vectors @ expected.T, axis=1).tolist()[:50] == list(range(50))
    assert backend.stats()["texts"] - before["texts"] == len(TEXTS)
