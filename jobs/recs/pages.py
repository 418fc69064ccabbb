"""The pages a team looks at, rendered on the server (Jinja2, inline SVG, no scripts,
no build step), from the same source as the API (recs.serving):

    /                          the current version, forms to look up a customer or a product
    /customers/{user_id}       what the customer bought (titles, dates) beside their recommendations and reasons
    /products/{product_id}     its cluster and category, its similar products
    /runs                      NDCG of each kept version against its best baseline (a chart), gate decisions
    /report                    the current version's report.html (/report/{version}: a kept one)

Every value from the data (titles above all: they come from a shop's catalog) is
escaped by Jinja2's autoescape; links are built under the app's root path, so the
pages work mounted in the Airflow API server too.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment

from recs.reader import UnknownId, purchase_history

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
nav a{margin-right:1rem} table{border-collapse:collapse;margin:.5rem 0}
td,th{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
.columns{display:flex;gap:2rem;flex-wrap:wrap} .columns>section{flex:1;min-width:420px}
.muted{color:#777} .bad{color:#b00} .good{color:#070} .note{background:#fff6d5;padding:.5rem}
"""

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · recommendations</title>
<style>{{ style }}</style></head><body>
<nav><a href="{{ root }}/">Recommendations</a><a href="{{ root }}/runs">Runs</a>
<a href="{{ root }}/report">Current report</a><a href="{{ root }}/docs">API</a></nav>
<h1>{{ title }}</h1>
{% if version %}<p class="muted">version <code id="version">{{ version }}</code></p>{% endif %}
{% block body %}{% endblock %}
</body></html>"""

TEMPLATES = {
    "index": """{% extends "layout" %}{% block body %}
<form action="{{ root }}/customers" method="get"><label>Customer id <input name="id" required></label>
<button>Show</button></form>
<form action="{{ root }}/products" method="get"><label>Product id <input name="id" required></label>
<button>Show</button></form>
<h2>Popular right now</h2>
<ol>{% for item in popular %}<li><a href="{{ root }}/products/{{ item.product_id | urlq }}">{{ item.title }}</a>
 <span class="muted">{{ item.product_id }}</span></li>{% endfor %}</ol>
{% endblock %}""",
    "customer": """{% extends "layout" %}{% block body %}
{% if not personal %}<p class="note" id="fallback">Unknown customer: this version has no recommendations for
{{ user_id }}, so a storefront shows the popular products below.</p>{% endif %}
<div class="columns">
<section id="history"><h2>Bought</h2>
{% if history is none %}<p class="muted">The run folder this version came from is gone: no history to show.</p>
{% elif not history %}<p class="muted">No purchases.</p>
{% else %}<table><tr><th>date</th><th>product</th><th>quantity</th></tr>
{% for row in history %}<tr><td>{{ row.ts[:10] if row.ts else "" }}</td>
<td><a href="{{ root }}/products/{{ row.product_id | urlq }}">{{ row.title }}</a>
<span class="muted">{{ row.product_id }}</span></td><td>{{ row.quantity }}</td></tr>{% endfor %}</table>{% endif %}
</section>
<section id="recommendations"><h2>Recommended</h2>
<table><tr><th>#</th><th>product</th><th>why</th><th>score</th></tr>
{% for item in items %}<tr class="recommendation"><td>{{ item.rank }}</td>
<td class="title"><a href="{{ root }}/products/{{ item.product_id | urlq }}">{{ item.title }}</a>
<span class="muted">{{ item.product_id }}</span></td><td class="reason">{{ item.reason }}</td>
<td>{{ "%.3f" | format(item.score) }}</td></tr>{% endfor %}</table>
</section></div>
{% endblock %}""",
    "product": """{% extends "layout" %}{% block body %}
<p id="product">{{ product.title }} <span class="muted">{{ product.product_id }}</span></p>
<p>Category <b>{{ product.category }}</b>, cluster <b id="cluster">{{ product.cluster }}</b></p>
<h2>Similar products</h2>
{% if not items %}<p class="muted">None published for this product.</p>{% else %}
<table id="similar"><tr><th>#</th><th>product</th><th>similarity</th></tr>
{% for item in items %}<tr class="similar"><td>{{ item.rank }}</td>
<td class="title"><a href="{{ root }}/products/{{ item.product_id | urlq }}">{{ item.title }}</a>
<span class="muted">{{ item.product_id }}</span></td><td>{{ "%.3f" | format(item.score) }}</td></tr>{% endfor %}
</table>{% endif %}
{% endblock %}""",
    "runs": """{% extends "layout" %}{% block body %}
<p>{{ metric or "NDCG" }} of each kept version (oldest on the left) against the best of the baselines evaluated on
the same split. The gate refuses a run below the most-popular baseline or too far below the last published run.</p>
{{ chart | safe }}
<table id="runs"><tr><th>version</th><th>published</th><th>{{ metric or "ndcg" }}</th><th>best baseline</th>
<th>coverage</th><th>gate</th></tr>
{% for run in runs %}<tr class="run{% if run.current %} current{% endif %}">
<td>{{ run.version }}{% if run.current %} <b>(current)</b>{% endif %}</td><td>{{ run.published_at }}</td>
<td>{{ fmt(run.ndcg) }}</td><td>{{ run.best_baseline or "" }} {{ fmt(run.best_baseline_ndcg) }}</td>
<td>{{ fmt(run.catalog_coverage) }}</td>
<td class="{{ 'good' if run.gate_passed else 'bad' }}">{{ run.gate_message or "" }}
{% if run.override_reason %}<br>override: {{ run.override_reason }}{% endif %}</td></tr>{% endfor %}
</table>
{% endblock %}""",
    "missing": """{% extends "layout" %}{% block body %}<p class="note">{{ message }}</p>{% endblock %}""",
}


def _environment() -> Environment:
    from jinja2 import DictLoader

    environment = Environment(loader=DictLoader({"layout": LAYOUT, **TEMPLATES}), autoescape=True)
    environment.filters["urlq"] = lambda value: quote(str(value), safe="")
    environment.globals["fmt"] = lambda value: "" if value is None else f"{value:.4f}"
    return environment


ENVIRONMENT = _environment()


def ndcg_chart(runs: list[dict], metric: str, width: int = 640, height: int = 260) -> str:
    """Two series over the versions, oldest first: ours and the best baseline. Inline SVG."""
    runs = [run for run in reversed(runs) if run.get("ndcg") is not None]
    if not runs:
        return '<p class="muted">No version with an evaluation yet.</p>'
    values = [v for run in runs for v in (run["ndcg"], run.get("best_baseline_ndcg")) if v is not None]
    top, pad = max(values) * 1.1 or 1.0, 44
    step = (width - 2 * pad) / max(len(runs) - 1, 1)

    def x(i):
        return pad + (i * step if len(runs) > 1 else (width - 2 * pad) / 2)

    def y(v):
        return height - pad - v / top * (height - 2 * pad)

    parts = [f'<svg id="ndcg-chart" width="{width}" height="{height}" role="img" aria-label="{metric} by version">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
             f'<text x="{pad - 4}" y="{y(top) + 4:.1f}" text-anchor="end" font-size="10">{top:.3f}</text>',
             f'<text x="{pad - 4}" y="{height - pad + 4}" text-anchor="end" font-size="10">0</text>']
    for series, key, colour in (("ours", "ndcg", "#1f77b4"), ("baseline", "best_baseline_ndcg", "#ff7f0e")):
        points = [(x(i), y(run[key]), run) for i, run in enumerate(runs) if run.get(key) is not None]
        if not points:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py, _) in enumerate(points))
        parts.append(f'<path class="{series}" d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for px, py, run in points:
            label = f"{run['version']}: {series} {run[key]:.4f}"
            parts.append(f'<circle class="{series}" cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}">'
                         f"<title>{_escape(label)}</title></circle>")
    parts.append(f'<text x="{width - pad}" y="{pad - 20}" text-anchor="end" font-size="12" fill="#1f77b4">'
                 f"ours ({_escape(metric)})</text>")
    parts.append(f'<text x="{width - pad}" y="{pad - 6}" text-anchor="end" font-size="12" fill="#ff7f0e">'
                 "best baseline</text>")
    for i, run in enumerate(runs):
        anchor = "middle" if len(runs) == 1 else "start" if i == 0 else "end" if i == len(runs) - 1 else "middle"
        parts.append(f'<text x="{x(i):.1f}" y="{height - pad + 14}" text-anchor="{anchor}" font-size="9">'
                     f"{_escape(run['version'][-24:])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _escape(value) -> str:
    from markupsafe import escape

    return str(escape(str(value)))


def add_routes(app: FastAPI, holder) -> None:
    """The pages, on the API's app; `holder.get()` is the serving source (recs.serving)."""

    def render(request: Request, template: str, status: int = 200, **values) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        html = ENVIRONMENT.get_template(template).render(root=root, style=STYLE, **values)
        return HTMLResponse(html, status_code=status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request):
        answer = holder.get().popular(10)
        return render(request, "index", title="Recommendations", version=answer.version, popular=answer.items)

    @app.get("/customers", include_in_schema=False)
    def customer_lookup(request: Request, id: str = Query(...)):  # noqa: A002 - the form's field
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/customers/{quote(id.strip(), safe='')}", status_code=303)

    @app.get("/products", include_in_schema=False)
    def product_lookup(request: Request, id: str = Query(...)):  # noqa: A002
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/products/{quote(id.strip(), safe='')}", status_code=303)

    @app.get("/customers/{user_id}", response_class=HTMLResponse, include_in_schema=False)
    def customer(request: Request, user_id: str):
        source = holder.get()
        answer = source.recommendations(user_id, None)
        run_id = _run_id_of(source, answer.version)
        history = purchase_history(source.data_root, run_id, user_id) if run_id else None
        return render(request, "customer", title=f"Customer {user_id}", version=answer.version, user_id=user_id,
                      personal=answer.personal, items=answer.items, history=history)

    @app.get("/products/{product_id}", response_class=HTMLResponse, include_in_schema=False)
    def product(request: Request, product_id: str):
        try:
            answer = holder.get().product(product_id)
        except UnknownId as err:
            return render(request, "missing", status=404, title=f"Product {product_id}", version=None,
                          message=err.args[0])
        return render(request, "product", title=f"Product {product_id}", version=answer.version,
                      product=answer.product, items=answer.items)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs(request: Request):
        versions = holder.get().versions()
        metric = next((run["metric"] for run in versions if run.get("metric")), "ndcg")
        return render(request, "runs", title="Published runs", version=None, runs=versions, metric=metric,
                      chart=ndcg_chart(versions, metric))

    @app.get("/report", response_class=HTMLResponse, include_in_schema=False)
    def current_report(request: Request):
        return report(request, holder.get().current()[0])

    @app.get("/report/{version}", response_class=HTMLResponse, include_in_schema=False)
    def report(request: Request, version: str):
        source = holder.get()
        path = os.path.join(source.data_root, "published", "versions", version, "report.html")
        kept = {run["version"] for run in source.versions()}
        if version not in kept or not os.path.isfile(path):
            return render(request, "missing", status=404, title="Run report", version=version,
                          message=f"no report.html for version {version} under {source.data_root}/published")
        with open(path, encoding="utf-8") as handle:
            return HTMLResponse(handle.read())


def _run_id_of(source, version: str) -> str | None:
    """The run folder a version was published from (its manifest's run id)."""
    if getattr(source, "name", "") == "parquet":
        loaded = source.store.version()
        if loaded.name == version:
            return loaded.run_id
    for run in source.versions():
        if run["version"] == version:
            return run["run_id"]
    return None
