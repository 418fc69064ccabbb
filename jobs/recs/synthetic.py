"""A synthetic shop for demos and tests: products in distinct categories with varied
titles and descriptions, and users whose latent category preferences produce views,
carts and purchases over time. Seeded: the same arguments write the same files.

    python -m recs.synthetic --out data/demo_shop --products 2000 --users 1500
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write products.csv and events.csv into")
    parser.add_argument("--products", type=int, default=ShopSize.products)
    parser.add_argument("--users", type=int, default=ShopSize.users)
    parser.add_argument("--days", type=int, default=ShopSize.days)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-bad-rows", action="store_true", help="write only valid rows")
    args = parser.parse_args(argv)
    size = ShopSize(products=args.products, users=args.users, days=args.days)
    products, events = write_shop(args.out, size, seed=args.seed, bad_rows=not args.no_bad_rows)
    print(f"wrote {products} products and {events} events to {args.out}")


if __name__ == "__main__":
    main()
