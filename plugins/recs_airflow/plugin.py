"""The Airflow plugin: the recommendation service (recs.serving, its API and pages)
mounted in the Airflow API server under /recs, and "Recommendations" in the UI's
navigation, which opens the runs page.

Airflow 3 loads this file from the plugins folder; the app opens its store (PostgreSQL
when RECS_DATABASE_URL is set, else the Parquet tables under RECS_DATA_ROOT) at its
first request, so the Airflow processes that only import plugins never connect.
Like every plugin FastAPI app, its routes are not behind Airflow's login: the API
server should be reachable only by those who may see the recommendations.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from recs.serving import create_app

URL_PREFIX = "/recs"


class RecsServingPlugin(AirflowPlugin):
    name = "recs_serving"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Recommendations"}]
    external_views = [
        {"name": "Recommendations", "href": f"{URL_PREFIX}/runs", "destination": "nav", "url_route": "recommendations"}
    ]
