"""The DAG's Params: what an operator may set when triggering a run from the UI.

Which settings appear, and their titles and bounds, are marked on the settings
themselves (`recs.config`, field metadata "param"), and the defaults come from the
pipeline's own configuration, so the form shows the values a scheduled run would use.
The jobs refuse any other key a run's conf carries (`recs.runtime.load_config`): the
form and that check read the same list.
"""

from __future__ import annotations

from airflow.sdk import Param

from recs.config import DAG_PARAMS, RecsConfig, setting_type

# JSON Schema types of the settings' Python types.
_SCHEMA_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def dag_params(config: RecsConfig | None = None) -> dict[str, Param]:
    config = config or RecsConfig.load()
    return {
        name: Param(config.value(name), type=_SCHEMA_TYPES[setting_type(name)], **schema)
        for name, schema in DAG_PARAMS.items()
    }
