"""A synthetic shop for demos and tests: products in distinct categories with varied
titles and descriptions, and users whose latent category preferences produce views,
carts and purchases over time. Seeded: the same arguments write the same files.

    python -m recs.synthetic --out data/demo_shop --products 2000 --users 1500
    python -m recs.synthetic --out /tmp/shop_m --products 100000 --users 100000 --scale

The demo shop (CSV, a loop per user) is small on purpose. `--scale` writes a shop of
a real store's shape instead, vectorised so a million customers take seconds, as
Parquet: long-tailed (Zipf) product popularity drifting over time, sessions of views,
carts and purchases, repeat purchases, about `events_per_customer` events per customer
and a few heavy customers (wholesalers, bots) with tens of times more.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

CATALOG = {
    "Kitchen": (
        ["mug", "teapot", "frying pan", "chef knife", "cutting board", "mixing bowl", "saucepan", "espresso cup"],
        ["ceramic", "stainless steel", "cast iron", "bamboo", "enamel", "glass"],
        "for everyday cooking, dishwasher safe and easy to clean",
    ),
    "Garden": (
        ["garden hose", "planter", "hand trowel", "watering can", "pruning shears", "bird feeder", "seed tray"],
        ["galvanised", "terracotta", "recycled plastic", "wooden", "copper"],
        "weatherproof for the patio, the balcony or the allotment",
    ),
    "Office": (
        ["stapler", "notebook", "fountain pen", "desk lamp", "file organiser", "paper tray", "whiteboard"],
        ["metal", "leather", "recycled paper", "aluminium", "oak"],
        "keeps your desk tidy and your work moving",
    ),
    "Toys": (
        ["building blocks", "puzzle", "plush bear", "toy train", "kite", "board game", "doll house"],
        ["wooden", "soft", "colourful", "magnetic", "classic"],
        "hours of fun for children aged three and up",
    ),
    "Sports": (
        ["yoga mat", "dumbbell", "running belt", "water bottle", "resistance band", "tennis racket", "skipping rope"],
        ["non-slip", "neoprene", "insulated", "lightweight", "carbon"],
        "built for training at home or at the gym",
    ),
    "Beauty": (
        ["face cream", "lip balm", "shampoo", "body lotion", "hand soap", "bath salts", "serum"],
        ["organic", "fragrance-free", "lavender", "rose", "vitamin C"],
        "gentle on sensitive skin, not tested on animals",
    ),
    "Electronics": (
        ["usb cable", "phone charger", "bluetooth speaker", "headphones", "power bank", "keyboard", "mouse"],
        ["wireless", "fast-charging", "braided", "compact", "noise-cancelling"],
        "plug and play with every modern phone and laptop",
    ),
    "Pets": (
        ["dog bed", "cat scratcher", "pet bowl", "dog lead", "cat toy", "aquarium filter", "pet brush"],
        ["washable", "chew-proof", "orthopaedic", "reflective", "self-cleaning"],
        "for happy cats and dogs of every size",
    ),
    "Bedding": (
        ["duvet cover", "pillow", "fitted sheet", "throw blanket", "mattress topper", "pillowcase set"],
        ["cotton", "linen", "memory foam", "flannel", "silk"],
        "soft, breathable and machine washable",
    ),
    "Wine & Bar": (
        ["wine glass", "decanter", "corkscrew", "cocktail shaker", "champagne flute", "ice bucket", "wine goblet"],
        ["crystal", "lead-free", "stainless steel", "hand-blown", "stemless"],
        "for wine lovers and home bartenders",
    ),
    "Camping": (
        ["tent", "sleeping bag", "camping stove", "head torch", "hiking backpack", "folding chair"],
        ["waterproof", "ultralight", "four-season", "rechargeable", "compact"],
        "ready for the trail, the festival or the campsite",
    ),
    "Stationery": (
        ["greeting card", "gift wrap", "washi tape", "sticker sheet", "envelope set", "sketchbook"],
        ["vintage", "floral", "kraft", "glitter", "hand-drawn"],
        "for birthdays, thank-yous and every celebration",
    ),
}
COLOURS = ["red", "blue", "green", "black", "white", "grey", "pink", "yellow", "navy", "natural"]
EXTRAS = ["", "", "", " set of 2", " set of 4", " large", " small", " deluxe", " travel size"]
END_OF_HISTORY = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)


@dataclass(frozen=True)
class ShopSize:
    products: int = 2000
    users: int = 1500
    days: int = 120
    sessions_per_user: float = 8.0


def generate_products(rng: np.random.Generator, count: int) -> list[dict]:
    categories = list(CATALOG)
    products = []
    for index in range(count):
        category = categories[index % len(categories)]
        nouns, materials, blurb = CATALOG[category]
        noun, material, colour = rng.choice(nouns), rng.choice(materials), rng.choice(COLOURS)
        extra = rng.choice(EXTRAS)
        title = f"{colour.title()} {material} {noun}{extra}"
        description = f"A {material} {noun} in {colour}, {blurb}. Model {index:05d}."
        price = round(float(rng.lognormal(mean=2.5 + 0.1 * (index % 7), sigma=0.5)), 2)
        products.append(
            {"product_id": f"P{index:05d}", "title": title, "description": description,
             "category": category, "price": f"{price:.2f}"}
        )
    return products


def generate_events(rng: np.random.Generator, products: list[dict], size: ShopSize) -> list[dict]:
    categories = list(CATALOG)
    by_category = {c: [p["product_id"] for p in products if p["category"] == c] for c in categories}
    # Within a category, a few products are much more popular (Zipf-like), and each
    # product's popularity peaks at its own moment, so recency carries signal.
    appeal = {c: rng.pareto(1.2, len(ids)) + 0.05 for c, ids in by_category.items()}
    peak_day = {c: rng.uniform(0, size.days, len(ids)) for c, ids in by_category.items()}
    start = END_OF_HISTORY - timedelta(days=size.days)
    events = []
    for user_index in range(size.users):
        user_id = f"U{user_index:05d}"
        liked = rng.choice(len(categories), size=rng.integers(1, 4), replace=False)
        preference = np.full(len(categories), 0.1 / len(categories))
        preference[liked] += rng.dirichlet(np.ones(len(liked))) * 0.9
        sessions = max(1, int(rng.poisson(size.sessions_per_user * rng.lognormal(0, 0.5))))
        for day in np.sort(rng.uniform(0, size.days, sessions)):
            category = categories[rng.choice(len(categories), p=preference / preference.sum())]
            ids = by_category[category]
            if not ids:
                continue
            timeliness = np.exp(-np.abs(peak_day[category] - day) / 20.0)
            weights = appeal[category] * (0.3 + timeliness)
            moment = start + timedelta(days=float(day))
            for step, item in enumerate(rng.choice(len(ids), size=rng.integers(1, 6), p=weights / weights.sum())):
                ts = moment + timedelta(minutes=3 * step)
                events.append(_event(user_id, ids[item], "view", 1, ts))
                if rng.random() < 0.25:
                    events.append(_event(user_id, ids[item], "add_to_cart", 1, ts + timedelta(minutes=1)))
                    if rng.random() < 0.6:
                        quantity = int(rng.choice([1, 1, 1, 2, 3]))
                        events.append(_event(user_id, ids[item], "purchase", quantity, ts + timedelta(minutes=2)))
    return events


def _event(user_id: str, product_id: str, event_type: str, quantity: int, ts: datetime) -> dict:
    return {"user_id": user_id, "product_id": product_id, "event_type": event_type,
            "quantity": str(quantity), "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ")}


def add_bad_rows(products: list[dict], events: list[dict]) -> None:
    """The mistakes real feeds make, so the demo shows the quarantine at work."""
    products += [
        {"product_id": "", "title": "Mystery item without an id", "description": "", "category": "", "price": "1.00"},
        {"product_id": "P99990", "title": "", "description": "  ", "category": "Kitchen", "price": "5.00"},
        {"product_id": "P99991", "title": "Salt &amp; pepper mill set", "description": "<b>Two</b> mills",
         "category": "Kitchen", "price": "abc"},
        dict(products[0]),  # an exact duplicate: dropped, and counted
    ]
    some_user, some_product = events[0]["user_id"], events[0]["product_id"]
    events += [
        _event(some_user, "P-NOT-IN-CATALOG", "view", 1, END_OF_HISTORY),
        {**_event(some_user, some_product, "view", 1, END_OF_HISTORY), "ts": "yesterday-ish"},
        {**_event(some_user, some_product, "click", 1, END_OF_HISTORY)},
        {**_event(some_user, some_product, "purchase", 1, END_OF_HISTORY), "quantity": "-2"},
        {**_event("", some_product, "view", 1, END_OF_HISTORY)},
        dict(events[0]),
    ]


def write_shop(out: str, size: ShopSize, seed: int = 7, bad_rows: bool = True) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    products = generate_products(rng, size.products)
    events = generate_events(rng, products, size)
    if bad_rows:
        add_bad_rows(products, events)
    os.makedirs(out, exist_ok=True)
    for name, rows in (("products", products), ("events", events)):
        with open(os.path.join(out, f"{name}.csv"), "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return len(products), len(events)


@dataclass(frozen=True)
class ScaleShop:
    products: int = 10_000
    customers: int = 10_000
    events_per_customer: float = 10.0
    days: int = 120
    # Popularity of the product of rank r (within the whole catalog) ~ 1 / r ** zipf.
    zipf: float = 1.0
    # Share of customers with `heavy_factor` times more sessions.
    heavy_share: float = 0.002
    heavy_factor: float = 40.0
    # A purchased product is bought again later with this probability.
    repeat_share: float = 0.2


# Events a session yields on average: 1 + Poisson(1.5) views, each carted with 0.25
# and then bought with 0.6 (see `_scale_events`), plus repeat purchases.
_VIEWS_PER_SESSION = 2.5
_EVENTS_PER_VIEW = 1 + 0.25 + 0.25 * 0.6
_PERIODS = 12  # popularity drifts: each product's appeal peaks in one of these periods


def scale_products(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Columns of `count` products; ids P0000001.. and texts varied enough to embed."""
    categories = list(CATALOG)
    category = np.arange(count) % len(categories)
    noun_pick, material_pick = rng.integers(0, 1 << 30, count), rng.integers(0, 1 << 30, count)
    colour, extra = rng.integers(0, len(COLOURS), count), rng.integers(0, len(EXTRAS), count)
    price = np.round(rng.lognormal(mean=2.5 + 0.1 * (np.arange(count) % 7), sigma=0.5), 2)
    titles, descriptions = [], []
    for index in range(count):
        name = categories[category[index]]
        nouns, materials, blurb = CATALOG[name]
        noun, material = nouns[noun_pick[index] % len(nouns)], materials[material_pick[index] % len(materials)]
        titles.append(f"{COLOURS[colour[index]].title()} {material} {noun}{EXTRAS[extra[index]]}")
        descriptions.append(f"A {material} {noun} in {COLOURS[colour[index]]}, {blurb}. Model {index:07d}.")
    return {
        "product_id": np.array([f"P{i:07d}" for i in range(count)], dtype=object),
        "title": np.array(titles, dtype=object),
        "description": np.array(descriptions, dtype=object),
        "category": np.array(categories, dtype=object)[category],
        "price": np.array([f"{p:.2f}" for p in price], dtype=object),
        "category_index": category,
    }


def _scale_events(rng: np.random.Generator, category: np.ndarray, size: ScaleShop) -> dict[str, np.ndarray]:
    """Event columns as integer codes: customer, product, type (0 view, 1 cart, 2
    purchase), quantity and epoch seconds, sorted by customer and time."""
    categories = int(category.max()) + 1
    # Customers: a favourite and a second category, and a number of sessions giving
    # about `events_per_customer` events, a few heavy customers many times more.
    favourite = rng.integers(0, categories, size.customers)
    second = (favourite + rng.integers(1, categories, size.customers)) % categories
    per_session = _VIEWS_PER_SESSION * (_EVENTS_PER_VIEW + 0.25 * 0.6 * size.repeat_share * 0.7)
    heavy_load = 1 + size.heavy_share * (size.heavy_factor - 1)
    mean_sessions = size.events_per_customer / per_session / heavy_load
    activity = rng.lognormal(0.0, 0.6, size.customers) / np.exp(0.18)  # mean 1
    activity[rng.random(size.customers) < size.heavy_share] *= size.heavy_factor
    sessions = np.maximum(1, rng.poisson(mean_sessions * activity))
    session_customer = np.repeat(np.arange(size.customers), sessions)
    session_count = len(session_customer)
    choice = rng.random(session_count)
    session_category = np.where(
        choice < 0.6, favourite[session_customer],
        np.where(choice < 0.9, second[session_customer], rng.integers(0, categories, session_count)))
    session_start = rng.uniform(0, size.days, session_count)
    # Views: 1 + Poisson(1.5) per session, products drawn by popularity within the
    # session's category and period (Zipf over the catalog, drifting over time).
    views = 1 + rng.poisson(_VIEWS_PER_SESSION - 1, session_count)
    view_session = np.repeat(np.arange(session_count), views)
    view_step = np.arange(len(view_session)) - np.repeat(np.cumsum(views) - views, views)
    rank = rng.permutation(len(category)) + 1
    appeal = 1.0 / rank.astype(np.float64) ** size.zipf
    peak = rng.integers(0, _PERIODS, len(category))
    period = np.minimum((session_start / size.days * _PERIODS).astype(np.int64), _PERIODS - 1)
    view_period, view_category = period[view_session], session_category[view_session]
    view_product = np.empty(len(view_session), dtype=np.int64)
    for cat in range(categories):
        members = np.flatnonzero(category == cat)
        for when in range(_PERIODS):
            rows = np.flatnonzero((view_category == cat) & (view_period == when))
            if len(rows) == 0 or len(members) == 0:
                continue
            distance = np.minimum(np.abs(peak[members] - when), _PERIODS - np.abs(peak[members] - when))
            weights = appeal[members] * (0.3 + np.exp(-distance / 1.5))
            cumulative = np.cumsum(weights)
            picks = np.searchsorted(cumulative, rng.random(len(rows)) * cumulative[-1], side="right")
            view_product[rows] = members[np.minimum(picks, len(members) - 1)]
    view_time = session_start[view_session] * 86400 + view_step * 180
    carted = rng.random(len(view_session)) < 0.25
    bought = carted & (rng.random(len(view_session)) < 0.6)
    # Repeat purchases: some bought products are bought again days or weeks later.
    repeat = bought & (rng.random(len(view_session)) < size.repeat_share)
    repeat_time = view_time[repeat] + 120 + rng.uniform(3, 45, int(repeat.sum())) * 86400
    later = repeat_time < size.days * 86400
    customer = np.concatenate([session_customer[view_session], session_customer[view_session[carted]],
                               session_customer[view_session[bought]], session_customer[view_session[repeat]][later]])
    product = np.concatenate([view_product, view_product[carted], view_product[bought],
                              view_product[repeat][later]])
    kind = np.concatenate([np.zeros(len(view_session), np.int8), np.ones(int(carted.sum()), np.int8),
                           np.full(int(bought.sum()), 2, np.int8), np.full(int(later.sum()), 2, np.int8)])
    seconds = np.concatenate([view_time, view_time[carted] + 60, view_time[bought] + 120, repeat_time[later]])
    quantity = np.where(kind == 2, rng.choice(np.array([1, 1, 1, 2, 3]), len(kind)), 1)
    start = int((END_OF_HISTORY - timedelta(days=size.days)).timestamp())
    order = np.lexsort((seconds, customer))
    return {"customer": customer[order], "product": product[order], "kind": kind[order],
            "quantity": quantity[order], "epoch": start + seconds[order].astype(np.int64)}


def write_scale_shop(out: str, size: ScaleShop, seed: int = 7, files: int = 8) -> tuple[int, int, int]:
    """Write `products.parquet` and `events.parquet/` (`files` part files) of the
    contract, every column a string as a CSV export would hold it; return (products,
    customers with events, events). Ids and event types are dictionary-encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    products = scale_products(rng, size.products)
    events = _scale_events(rng, products.pop("category_index"), size)
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table({name: pa.array(values, pa.string()) for name, values in products.items()}),
                   os.path.join(out, "products.parquet"))
    user_ids = pa.array([f"U{i:07d}" for i in range(size.customers)], pa.string())
    product_ids = pa.array(products["product_id"], pa.string())
    kinds = pa.array(["view", "add_to_cart", "purchase"], pa.string())
    quantities = pa.array([str(q) for q in range(4)], pa.string())
    folder = os.path.join(out, "events.parquet")
    os.makedirs(folder, exist_ok=True)
    bounds = np.linspace(0, len(events["customer"]), files + 1).astype(np.int64)
    for part, (low, high) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        chunk = {name: values[low:high] for name, values in events.items()}
        stamps = np.datetime_as_string(chunk["epoch"].astype("datetime64[s]"), unit="s")
        table = pa.table({
            "user_id": pa.DictionaryArray.from_arrays(pa.array(chunk["customer"], pa.int32()), user_ids),
            "product_id": pa.DictionaryArray.from_arrays(pa.array(chunk["product"], pa.int32()), product_ids),
            "event_type": pa.DictionaryArray.from_arrays(pa.array(chunk["kind"], pa.int8()), kinds),
            "quantity": pa.DictionaryArray.from_arrays(pa.array(chunk["quantity"], pa.int8()), quantities),
            "ts": pa.array(np.char.add(stamps, "Z"), pa.string()),
        })
        pq.write_table(table, os.path.join(folder, f"part-{part:05d}.parquet"))
    return size.products, int(len(np.unique(events["customer"]))), int(len(events["customer"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write products.csv and events.csv into")
    parser.add_argument("--products", type=int, default=ShopSize.products)
    parser.add_argument("--users", type=int, default=ShopSize.users)
    parser.add_argument("--days", type=int, default=ShopSize.days)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-bad-rows", action="store_true", help="write only valid rows")
    parser.add_argument("--scale", action="store_true",
                        help="a real store's shape, vectorised, as Parquet (--users customers)")
    parser.add_argument("--events-per-customer", type=float, default=ScaleShop.events_per_customer,
                        help="with --scale: mean events per customer")
    args = parser.parse_args(argv)
    if args.scale:
        shape = ScaleShop(products=args.products, customers=args.users, days=args.days,
                          events_per_customer=args.events_per_customer)
        products, customers, events = write_scale_shop(args.out, shape, seed=args.seed)
        print(f"wrote {products} products and {events} events of {customers} customers to {args.out}")
        return
    size = ShopSize(products=args.products, users=args.users, days=args.days)
    products, events = write_shop(args.out, size, seed=args.seed, bad_rows=not args.no_bad_rows)
    print(f"wrote {products} products and {events} events to {args.out}")


if __name__ == "__main__":
    main()
