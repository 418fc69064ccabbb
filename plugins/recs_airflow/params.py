"""The DAG's Params: what an operator may set when triggering a run from the UI.

Defaults come from the pipeline's own configuration (`recs.config`), so the form
shows the values a scheduled run would use.
"""

from __future__ import annotations

from airflow.sdk import Param

from recs.config import EMBEDDING_BACKENDS, INPUT_FORMATS, RecsConfig


def dag_params(config: RecsConfig | None = None) -> dict[str, Param]:
    config = config or RecsConfig.load()
    return {
        "input_path": Param(
            config.input_path, type="string", minLength=1, title="Input",
            description="Folder with products.* and events.* (contract), or the raw file to import.",
        ),
        "input_format": Param(
            config.input_format, type="string", enum=list(INPUT_FORMATS), title="Input format",
            description="contract: the documented products/events tables; online_retail: the UCI CSV.",
        ),
        "embedding_backend": Param(
            config.embedding_backend, type="string", enum=list(EMBEDDING_BACKENDS), title="Embedding backend",
            description="auto: OpenAI when OPENAI_API_KEY is set, else the offline model. hashing is for tests.",
        ),
        "pca_dimensions": Param(
            config.pca_dimensions, type="integer", minimum=2, maximum=1024, title="PCA dimensions"
        ),
        "k": Param(
            config.k, type="integer", minimum=0, maximum=1000, title="Clusters (k)",
            description="0 chooses k by silhouette between k_min and k_max.",
        ),
        "k_min": Param(config.k_min, type="integer", minimum=2, maximum=1000, title="Smallest k to try"),
        "k_max": Param(config.k_max, type="integer", minimum=2, maximum=1000, title="Largest k to try"),
        "top_n": Param(
            config.top_n, type="integer", minimum=1, maximum=500, title="Recommendations per user and product"
        ),
        "gate_override": Param(
            False, type="boolean", title="Publish even if the quality gate fails",
            description="For this run only; the reason below is recorded in run_summary and the report.",
        ),
        "gate_override_reason": Param("", type="string", title="Why the gate is overridden"),
        "publish_run_id": Param(
            "", type="string", pattern=r"^[A-Za-z0-9_.:+-]*$", maxLength=250, title="Publish an earlier run",
            description="The run id of an earlier run (e.g. one the gate refused) whose tables this DAG run "
                        "publishes, with the gate override above; every other task is skipped. Empty: a normal run.",
        ),
    }
