"""The run report: one self-contained HTML file (inline SVG, no scripts, no network)
that a shop owner can read without the code."""

from __future__ import annotations

import html

import pandas as pd

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
MAIN_METRICS = ("ndcg", "hit", "recall", "map", "coverage", "diversity", "novelty")
METHOD_NOTES = {
    "published": "what this run publishes",
    "without_time": "ours without recency, trending, 'bought next' and similar customers' recent buys (ablation)",
    "without_text": "ours without text embeddings and clusters (ablation)",
    "most_popular": "the most bought products",
    "trending": "popular with a time decay",
    "item_knn": "item-kNN on co-purchases (cosine)",
    "ease": "EASE^R linear item model",
    "als": "Spark MLlib ALS (implicit)",
    "cluster_only": "popular products of the user's favourite clusters",
}


def _escape(value) -> str:
    return html.escape(str(value))


def line_chart(points: list[tuple[float, float]], x_label: str, y_label: str, width=420, height=220) -> str:
    if not points:
        return "<p>(no data)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_min, x_max = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_min, y_max = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    pad = 40

    def sx(x):
        return pad + (x - x_min) / (x_max - x_min) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y_min) / (y_max - y_min) * (height - 2 * pad)

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>{x:g}: {y:.4f}</title></circle>'
                   for x, y in points)
    return (
        f'<svg width="{width}" height="{height}" role="img">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>{dots}'
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{_escape(x_label)}</text>'
        f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
        f"{_escape(y_label)}</text>"
        f'<text x="{pad - 4}" y="{sy(y_max) + 4:.1f}" text-anchor="end" font-size="10">{y_max:.3g}</text>'
        f'<text x="{pad - 4}" y="{sy(y_min) + 4:.1f}" text-anchor="end" font-size="10">{y_min:.3g}</text>'
        f'<text x="{sx(x_min):.1f}" y="{height - pad + 14}" font-size="10">{x_min:g}</text>'
        f'<text x="{sx(x_max):.1f}" y="{height - pad + 14}" font-size="10" text-anchor="end">{x_max:g}</text>'
        "</svg>"
    )


def bar_chart(values: dict[str, float], width=420, height=220) -> str:
    if not values:
        return "<p>(no data)</p>"
    top = max(values.values()) or 1
    bar = (width - 40) / len(values)
    bars = "".join(
        f'<rect x="{20 + i * bar:.1f}" y="{height - 30 - v / top * (height - 50):.1f}" width="{bar * 0.8:.1f}" '
        f'height="{v / top * (height - 50):.1f}" fill="{PALETTE[i % len(PALETTE)]}"><title>{_escape(k)}: {v:g}'
        f"</title></rect>"
        f'<text x="{20 + i * bar + bar * 0.4:.1f}" y="{height - 15}" font-size="9" text-anchor="middle">'
        f"{_escape(k)}</text>"
        for i, (k, v) in enumerate(values.items())
    )
    return f'<svg width="{width}" height="{height}" role="img">{bars}</svg>'


def scatter_map(points: pd.DataFrame, width=640, height=480) -> str:
    """points: x, y, cluster, title. Products coloured by cluster, titles on hover."""
    if points.empty:
        return "<p>(no data)</p>"
    pad = 20
    x_min, x_max = points["x"].min(), points["x"].max()
    y_min, y_max = points["y"].min(), points["y"].max()
    x_span, y_span = (x_max - x_min) or 1, (y_max - y_min) or 1
    dots = "".join(
        f'<circle cx="{pad + (r.x - x_min) / x_span * (width - 2 * pad):.1f}" '
        f'cy="{height - pad - (r.y - y_min) / y_span * (height - 2 * pad):.1f}" r="2.5" '
        f'fill="{PALETTE[int(r.cluster) % len(PALETTE)]}" fill-opacity="0.7"><title>cluster {int(r.cluster)}: '
        f"{_escape(r.title)}</title></circle>"
        for r in points.itertuples()
    )
    return f'<svg width="{width}" height="{height}" role="img" style="border:1px solid #ddd">{dots}</svg>'


def metrics_table(metrics: pd.DataFrame, k: int) -> str:
    overall = metrics[metrics["segment"] == "all"].pivot_table(index="method", columns="metric", values="value")
    overall = overall.sort_values("ndcg", ascending=False)
    header = "".join(f"<th>{_escape(m)}@{k}</th>" if m in ("ndcg", "hit", "recall", "map") else f"<th>{m}</th>"
                     for m in MAIN_METRICS if m in overall.columns)
    rows = "".join(
        f"<tr{' class=ours' if method == 'published' else ''}><td>{_escape(method)}</td>"
        f"<td class=note>{_escape(METHOD_NOTES.get(method, ''))}</td>"
        + "".join(f"<td>{overall.loc[method, m]:.4f}</td>" for m in MAIN_METRICS if m in overall.columns)
        + "</tr>"
        for method in overall.index
    )
    return f"<table><tr><th>method</th><th></th>{header}</tr>{rows}</table>"


def segment_table(metrics: pd.DataFrame, k: int) -> str:
    ndcg = metrics[metrics["metric"] == "ndcg"].pivot_table(index="method", columns="segment", values="value")
    columns = list(ndcg.columns)
    header = "".join(f"<th>{_escape(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{_escape(method)}</td>" + "".join(f"<td>{ndcg.loc[method, c]:.4f}</td>" for c in columns) + "</tr>"
        for method in ndcg.index
    )
    return f"<p>NDCG@{k} by segment</p><table><tr><th>method</th>{header}</tr>{rows}</table>"


def render(
    summary: dict,
    metrics: pd.DataFrame | None,
    silhouette_by_k: dict[str, float],
    explained_variance: list[float],
    cluster_points: pd.DataFrame,
    cluster_examples: dict[int, list[str]],
    cluster_sizes: dict[str, int],
    embedding: dict,
    gate: dict,
) -> str:
    """The whole report as one HTML string."""
    k = int(summary.get("eval_k", 10))
    cumulative = []
    total = 0.0
    for i, share in enumerate(explained_variance, start=1):
        total += share
        cumulative.append((i, total))
    examples = "".join(
        f"<li><b>cluster {c}</b> ({cluster_sizes.get(str(c), 0)} products): "
        + "; ".join(_escape(t) for t in titles) + "</li>"
        for c, titles in sorted(cluster_examples.items())
    )
    spend = "".join(f"<tr><td>{_escape(name)}</td><td>{_escape(value)}</td></tr>" for name, value in embedding.items())
    quality = (
        metrics_table(metrics, k) + segment_table(metrics, k)
        if metrics is not None and not metrics.empty else "<p>No evaluation ran for this version.</p>"
    )
    gate_text = _escape(gate.get("message", ""))
    silhouettes = sorted((int(key), value) for key, value in silhouette_by_k.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recommendations run {_escape(summary.get('run_id'))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222 }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em }} td, th {{ border: 1px solid #ccc; padding: 4px 8px }}
td {{ text-align: right }} td:first-child, td.note {{ text-align: left }} td.note {{ color: #666; font-size: 0.9em }}
tr.ours {{ background: #eef6ff; font-weight: bold }} .grid {{ display: flex; flex-wrap: wrap; gap: 2em }}
</style></head><body>
<h1>Product recommendations: run {_escape(summary.get('run_id'))}</h1>
<p>{_escape(summary.get('products'))} products, {_escape(summary.get('users'))} customers,
{_escape(summary.get('events'))} events; {_escape(summary.get('quarantined_rows'))} input rows set aside
(see the <code>quarantine</code> table). Publish gate: {gate_text}</p>
<h2>Are the recommendations better than the alternatives?</h2>
<p>Each method was trained on the data before a cutoff and asked to rank the whole catalog for each customer;
the score counts how high it placed what the customer really bought next ({_escape(summary.get('protocol'))}).
Higher is better; <b>published</b> is what this run serves.</p>
{quality}
<h2>How the catalog was grouped</h2>
<div class="grid">
<div><p>Silhouette by number of clusters (k chosen: {_escape(summary.get('k'))})</p>
{line_chart(silhouettes, "k", "silhouette")}</div>
<div><p>PCA: share of the embedding variance kept</p>{line_chart(cumulative, "components", "cumulative share")}</div>
<div><p>Cluster sizes</p>{bar_chart({str(c): float(v) for c, v in cluster_sizes.items()})}</div>
</div>
<p>Products on the first two PCA axes, coloured by cluster (hover for titles):</p>
{scatter_map(cluster_points)}
<ul>{examples}</ul>
<h2>Embedding spend</h2>
<table>{spend}</table>
</body></html>
"""


def cluster_examples(products: pd.DataFrame, per_cluster: int = 4) -> dict[int, list[str]]:
    """A few titles per cluster, for the report."""
    titled = products.dropna(subset=["title"]).sort_values("title")
    return {int(c): group["title"].head(per_cluster).tolist() for c, group in titled.groupby("cluster")}
