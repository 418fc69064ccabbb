"""The local sentence-transformers model, made fast on CPU: ONNX, fused, int8.

Once per machine (cached, keyed by the weights and the library versions) the model's
transformer is exported from its local weights with `torch.onnx.export`, its graph is
fused by onnxruntime's transformer optimizer (embeddings + layer norm, attention, bias +
GELU, skip + layer norm) and its MatMul and Attention weights are quantised to int8 per
output channel (activations quantised dynamically). Texts are tokenised with the model's
own tokenizer, sorted by length so that each batch carries little padding, run through
onnxruntime and mean-pooled and L2-normalised as the sentence-transformers pipeline does.

Measured on this project's 2-core machine (Amazon Office texts, see bench/embeddings.py):
about twice the texts per second of plain `SentenceTransformer.encode()` at a mean cosine
of 0.994 to its fp32 vectors. Quantising per tensor instead costs too much quality (0.95);
the embedding table stays fp32 (quantising it lowers the worst cosine from 0.98 to 0.96).

Nothing is downloaded: the weights, tokenizer and configuration come from the model folder.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Part of the cache space and of the export's file name: bump it whenever a change of
# the recipe below changes the vectors, so that a cache never mixes two recipes.
RECIPE = "onnx-int8-v1"
DEFAULT_CACHE = Path.home() / ".cache" / "recs" / "models"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The export is checked against the torch model on these before it is kept.
_CHECK_TEXTS = [
    "red wine glass",
    "Set of 4 stemless wine goblets, lead-free crystal, dishwasher safe, 15 oz",
    "Garden hose 50 ft, kink resistant, brass fittings. Garden & Outdoor. Heavy duty rubber hose.",
    "x",
]
# Int8 noise stays above these (worst ~0.97: a one-letter text in a padded batch); a bad
# trace or fusion falls far below.
_MIN_CHECK_COSINE = 0.95
_MIN_CHECK_MEAN_COSINE = 0.98


class OnnxUnavailable(RuntimeError):
    """The model cannot run through the ONNX path (unsupported layout, missing package, export failed)."""


def model_layout(model_path: str) -> dict:
    """What the ONNX path needs to know about a sentence-transformers folder, or OnnxUnavailable."""
    root = Path(model_path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise OnnxUnavailable(f"{model_path} is not a sentence-transformers folder: {err}") from err
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
        raise OnnxUnavailable(f"modules {kinds}: only Transformer + mean Pooling (+ Normalize) is exported")
    pooling = json.loads((root / modules[1]["path"] / "config.json").read_text())
    others = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
    if others != ["pooling_mode_mean_tokens"]:
        raise OnnxUnavailable(f"pooling {others}: only mean pooling is exported")
    if config.get("model_type") != "bert":
        raise OnnxUnavailable(f"model type {config.get('model_type')!r}: only BERT-style models are exported")
    try:
        max_length = int(json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        max_length = int(config.get("max_position_embeddings", 512))
    return {
        "dimensions": int(pooling["word_embedding_dimension"]),
        "num_heads": int(config["num_attention_heads"]),
        "hidden_size": int(config["hidden_size"]),
        "max_length": max_length,
    }


@functools.cache
def _weights_digest(model_path: str) -> str:
    root = Path(model_path)
    weights = [root / name for name in ("model.safetensors", "pytorch_model.bin") if (root / name).exists()]
    if not weights:
        raise OnnxUnavailable(f"no model.safetensors or pytorch_model.bin in {model_path}")
    digest = hashlib.sha256()
    with open(weights[0], "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def export_path(model_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the int8 export of this model lives: named by the weights, the recipe and the
    versions of everything that takes part in building it."""
    key = json.dumps(
        {
            "weights": _weights_digest(model_path),
            "recipe": RECIPE,
            "versions": {name: _version(name) for name in ("torch", "transformers", "onnx", "onnxruntime")},
        },
        sort_keys=True,
    )
    name = f"{Path(model_path).name}-{RECIPE}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    return Path(cache_dir or DEFAULT_CACHE) / name


def ensure_export(model_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The int8 ONNX file, exported on first use. Concurrent workers wait for one export
    (a file lock) and the file appears whole or not at all (written aside, then renamed)."""
    target = export_path(model_path, cache_dir)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                _export(model_path, target)
    except OnnxUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means: use the torch runtime
        raise OnnxUnavailable(f"exporting {model_path} to ONNX failed: {type(err).__name__}: {err}") from err
    return target


def _export(model_path: str, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    layout = model_layout(model_path)
    log.info("exporting %s to ONNX int8 (%s), once for this machine, into %s", model_path, RECIPE, target)
    # Eager attention traces to plain MatMul/Softmax, which the optimizer fuses into Attention.
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    # The reference vectors, taken before the export (tracing may leave the module changed).
    expected = _torch_vectors(model, model_path, layout)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            output = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return output.last_hidden_state

    # A padded sample, so that the traced graph keeps the attention mask.
    input_ids = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 10:] = 0
    sample = (input_ids, attention_mask, torch.zeros(2, 16, dtype=torch.long))
    axes = {name: {0: "batch", 1: "sequence"} for name in (*_INPUTS, "last_hidden_state")}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=target.parent) as work:
        fp32, fused, int8 = (Path(work) / f"{name}.onnx" for name in ("fp32", "fused", "int8"))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
            torch.onnx.export(
                LastHiddenState(model), sample, str(fp32), input_names=list(_INPUTS),
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
            )
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            optimized = optimize_model(
                str(fp32), model_type="bert", num_heads=layout["num_heads"], hidden_size=layout["hidden_size"]
            )
            optimized.save_model_to_file(str(fused))
            fusions = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
            log.info("onnxruntime transformer optimizer fused %s", fusions)
        except Exception as err:  # noqa: BLE001 - onnxruntime still fuses at load time, a little slower
            log.warning("the transformer optimizer failed (%s); quantising the unfused graph", err)
            fused = fp32
        # Per channel: per tensor loses too much (mean cosine 0.95). The embeddings stay fp32.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
        try:
            quantize_dynamic(
                str(fused), str(int8), per_channel=True, weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
        _check(int8, model_path, layout, expected)
        os.replace(int8, target)
    log.info("ONNX int8 export ready: %s (%.1f MB)", target, target.stat().st_size / 1e6)


def _torch_vectors(model, model_path: str, layout: dict) -> np.ndarray:
    """The fp32 model's mean-pooled unit vectors of the check texts, one text at a time."""
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.enable_truncation(layout["max_length"])
    tokenizer.no_padding()  # tokenizer.json pads batches to the longest: one text at a time here
    vectors = []
    with torch.no_grad():
        for encoding in tokenizer.encode_batch(_CHECK_TEXTS):
            ids = torch.tensor([encoding.ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            vectors.append(hidden.last_hidden_state[0].mean(0).numpy())
    vectors = np.stack(vectors)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _check(candidate: Path, model_path: str, layout: dict, expected: np.ndarray) -> None:
    """Refuse an export whose vectors stray from the torch model's (a bad trace, a bad fusion)."""
    encoder = OnnxEncoder(str(candidate), model_path, layout, threads=1)
    cosines = (encoder.encode(_CHECK_TEXTS, batch_size=len(_CHECK_TEXTS)) * expected).sum(axis=1)
    if cosines.min() < _MIN_CHECK_COSINE or cosines.mean() < _MIN_CHECK_MEAN_COSINE:
        raise OnnxUnavailable(f"the int8 export strays from the torch model (cosines {np.round(cosines, 3)})")
    log.info("the int8 export agrees with the torch model (cosines %s)", np.round(cosines, 3))


class OnnxEncoder:
    """One onnxruntime session and the model's tokenizer: texts in, unit vectors out."""

    def __init__(self, onnx_path: str, model_path: str, layout: dict, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
        self.tokenizer.enable_truncation(layout["max_length"])
        self.tokenizer.no_padding()
        self.dimensions = layout["dimensions"]

    def tokenize(self, texts: list[str]):
        return self.tokenizer.encode_batch(texts)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors for `texts`, in order; batches of similar lengths (longest first)."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenize(texts)
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for row, index in enumerate(rows):
                ids = encodings[index].ids
                input_ids[row, : len(ids)] = ids
                mask[row, : len(ids)] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
            feeds = {name: value for name, value in feeds.items() if name in self.input_names}
            (hidden,) = self.session.run(["last_hidden_state"], feeds)
            weights = mask[:, :, None].astype(np.float32)
            out[rows] = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)
