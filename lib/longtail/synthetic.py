"""A synthetic long-tail catalogue for ``longtail demo`` and the tests.

Items are product-like ("Hydrating rose face serum 50ml") with a brand and categories;
popularity is Zipf-like (a few head items, a long tail); every user prefers one to three
categories and mostly picks items of those, with a popularity bias. So an item's text
(its category words, its brand) says something about who interacts with it, which is the
signal LLM-ESR exploits for tail items. With ``locality`` above 0, users also keep to their own
spot within each preferred category (items whose hidden order is close are bought by the same
users), an item-level structure that a sequential model can learn at any catalogue size: without
it a category of a large catalogue holds so many items that nothing tells them apart but
popularity (docs/scaling.md, the 1M-item trained point). Everything is drawn from one seeded
generator: the same arguments give identical frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from longtail.core import schemas
from longtail.core.config import DemoConfig
from longtail.ranking.vectors import unit_rows

# category -> (sub-category, product nouns, descriptive words, sizes)
_VOCAB: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "Skin Care": (
        "Face",
        ["face serum", "day cream", "night cream", "cleansing gel", "toner", "eye cream", "face mask"],
        ["hydrating", "brightening", "anti-ageing", "soothing", "firming", "rose", "vitamin C",
         "hyaluronic", "niacinamide", "aloe"],
        ["30ml", "50ml", "100ml", "150ml"],
    ),
    "Hair Care": (
        "Hair",
        ["shampoo", "conditioner", "hair oil", "hair mask", "styling gel", "dry shampoo", "leave-in spray"],
        ["argan", "keratin", "volumising", "curl-defining", "anti-frizz", "coconut", "tea tree",
         "colour-protect", "biotin", "repairing"],
        ["200ml", "250ml", "300ml", "500ml"],
    ),
    "Makeup": (
        "Face & Eyes",
        ["lipstick", "mascara", "foundation", "eyeliner", "blush", "concealer", "eyeshadow palette"],
        ["matte", "long-wear", "waterproof", "satin", "nude", "ruby red", "volumising", "dewy",
         "full-coverage", "shimmer"],
        ["3g", "5ml", "10ml", "30ml"],
    ),
    "Fragrance": (
        "Perfume",
        ["eau de parfum", "eau de toilette", "body mist", "cologne", "perfume oil"],
        ["oud", "citrus", "vanilla", "jasmine", "sandalwood", "fresh aquatic", "amber", "lavender",
         "bergamot", "musk"],
        ["15ml", "30ml", "50ml", "100ml"],
    ),
    "Bath & Body": (
        "Body",
        ["body lotion", "shower gel", "body scrub", "bath bomb", "hand cream", "body butter"],
        ["shea", "cocoa", "eucalyptus", "oatmeal", "honey", "sea salt", "almond", "mango",
         "unscented", "calming"],
        ["100ml", "250ml", "400ml", "500ml"],
    ),
    "Nails": (
        "Nail Polish",
        ["nail polish", "top coat", "base coat", "cuticle oil", "nail file set", "gel polish"],
        ["quick-dry", "glossy", "chip-resistant", "pastel", "glitter", "coral", "midnight blue",
         "strengthening", "neon", "classic red"],
        ["8ml", "10ml", "12ml", "15ml"],
    ),
    "Men's Grooming": (
        "Shaving",
        ["shaving cream", "beard oil", "aftershave balm", "razor", "beard trimmer", "face wash"],
        ["sandalwood", "cedar", "sensitive-skin", "menthol", "charcoal", "precision", "classic",
         "cooling", "five-blade", "cordless"],
        ["75ml", "100ml", "150ml", "1 pack"],
    ),
    "Sun Care": (
        "Sunscreen",
        ["sunscreen lotion", "sun spray", "after-sun gel", "SPF lip balm", "tinted sunscreen"],
        ["SPF 30", "SPF 50", "water-resistant", "mineral", "sport", "kids", "oil-free",
         "reef-safe", "broad-spectrum", "cooling"],
        ["50ml", "100ml", "200ml", "250ml"],
    ),
    "Oral Care": (
        "Teeth",
        ["toothpaste", "mouthwash", "electric toothbrush", "whitening strips", "dental floss"],
        ["whitening", "mint", "sensitive", "charcoal", "herbal", "enamel-care", "fluoride-free",
         "fresh breath", "extra soft", "travel"],
        ["75ml", "100ml", "500ml", "1 pack"],
    ),
    "Tools & Accessories": (
        "Tools",
        ["makeup brush set", "hair dryer", "curling iron", "facial roller", "tweezers", "makeup sponge"],
        ["professional", "ionic", "jade", "rose quartz", "ceramic", "vegan", "travel-size",
         "slanted", "ergonomic", "rose gold"],
        ["1 pack", "2 pack", "5 pieces", "12 pieces"],
    ),
}
_CATEGORIES = list(_VOCAB)
_BRAND_HEADS = ["Lumi", "Vera", "Nord", "Solis", "Maison", "Aqua", "Petal", "Orion", "Kora", "Zen",
                "Belle", "Arbor", "Nova", "Sage", "Ivy", "Opal"]
_BRAND_TAILS = ["Labs", "Botanics", "& Co", "Beauty", "Naturals", "Studio", "Paris", "Organics"]


@dataclass(frozen=True)
class Catalogue:
    """A synthetic catalogue as pandas frames.

    Attributes:
        interactions: ``user_id``, ``item_id``, ``timestamp`` (int64 unix seconds, day
            granularity like Amazon's ``unixReviewTime``, so ties occur), ``rating`` (float 1-5).
        items: ``item_id``, ``title``, ``description``, ``categories`` (list of str), ``brand``.
        users: ``user_id`` and ``preferred_categories`` (list of str; ground truth for tests).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame

    def __str__(self) -> str:
        # A progress line, not three DataFrame reprs.
        return (
            f"{len(self.users):,} users, {len(self.items):,} items, {len(self.interactions):,} interactions"
        )

    __repr__ = __str__


def generate_catalogue(
    users: int,
    items: int,
    seed: int,
    *,
    zipf_exponent: float = 1.0,
    preference_strength: float = 0.85,
    min_history: int = 5,
    max_history: int = 60,
    locality: float = 0.0,
    locality_width: float = 25.0,
) -> Catalogue:
    """Draw a deterministic long-tail catalogue.

    Args:
        users, items: how many of each (both >= 1; ``items >= min_history``).
        seed: the only source of randomness; same arguments -> identical frames.
        zipf_exponent: popularity of the item at popularity rank r is ~ 1 / (r + 2) ** exponent.
        preference_strength: probability that an interaction is drawn from the user's
            preferred categories rather than from the whole catalogue.
        min_history, max_history: bounds of the (long-tailed) per-user history length.
        locality: share of the preferred-category draws taken near the user's own spot in
            that category (drawn uniformly per user and category): the item at the spot's
            place in the category's hidden order (its items by index) plus a normal offset of
            ``locality_width`` items, wrapping round; the other draws follow popularity. 0 (the
            demo) draws no spots, so its frames are those of earlier releases.
        locality_width: standard deviation of that offset, in items (so the structure is as
            sharp at 10,000 items as at 10M).

    Returns:
        A :class:`Catalogue`. No user interacts with the same item twice.

    Raises:
        ValueError: sizes or locality out of range.
    """
    if not 0.0 <= locality <= 1.0 or not locality_width > 0:  # NaN fails both
        raise ValueError(f"synthetic catalogue: locality must be in [0, 1] and locality_width > 0, "
                         f"got {locality}, {locality_width}")
    if users < 1 or items < 1:
        raise ValueError(f"synthetic catalogue: users and items must be >= 1, got {users}, {items}")
    if items < min_history:
        raise ValueError(f"synthetic catalogue: items ({items}) must be >= min_history ({min_history})")
    # One generator, handed to each step in turn: the order of the steps is the order of the
    # draws, so it must not change (or the same seed gives another catalogue).
    rng = np.random.default_rng(seed)
    drawn = _draw_items(rng, items, zipf_exponent)
    pref, pref_cats = _draw_preferences(rng, users)
    lengths = _draw_history_lengths(rng, users, min_history, min(max_history, items))
    mixture = _Mixture.of(pref, drawn.category, drawn.weight, preference_strength)
    if locality > 0:  # drawn only then: a catalogue without locality keeps its draws
        mixture = mixture.with_spots(rng.random(pref.shape), locality, locality_width)
    chosen = _draw_histories(rng, mixture, lengths)
    user_ids = np.array(_ids("U", users))
    interactions = _draw_interactions(rng, user_ids, drawn, pref, lengths, chosen)
    users_df = pd.DataFrame({"user_id": user_ids, "preferred_categories": pref_cats})
    return Catalogue(interactions=interactions, items=drawn.frame, users=users_df)


def _ids(prefix: str, n: int) -> list[str]:
    """``n`` ids ``<prefix>1 ..`` zero-padded to the width of ``n``, so they sort as numbers."""
    width = len(str(n))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(n)]


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class _Items:
    """The drawn items: the frame plus what the interaction draws need."""

    frame: pd.DataFrame
    ids: list[str]
    #: Index into ``_CATEGORIES`` per item.
    category: np.ndarray
    #: Zipf-like popularity weight per item (not normalised).
    weight: np.ndarray


def _draw_items(rng: np.random.Generator, items: int, zipf_exponent: float) -> _Items:
    """Each item's category, brand, popularity and text (four draws from ``rng``, in this order)."""
    n_cat = len(_CATEGORIES)
    cat_of_item = rng.integers(0, n_cat, size=items)
    brands = [f"{h} {t}" for h in _BRAND_HEADS for t in _BRAND_TAILS]
    # Each brand sells in one home category, so the brand is a text cue for the category too.
    brand_home = rng.integers(0, n_cat, size=len(brands))
    brands_by_cat = [np.flatnonzero(brand_home == c) for c in range(n_cat)]
    pop_rank = rng.permutation(items)  # popularity independent of the id
    weight = 1.0 / (pop_rank + 2.0) ** zipf_exponent
    item_ids = _ids("I", items)
    word_draws = rng.random((items, 5))
    described = [
        _describe_item(i, cat_of_item[i], word_draws[i], brands, brands_by_cat[cat_of_item[i]])
        for i in range(items)
    ]
    titles, descriptions, categories, item_brands = (list(column) for column in zip(*described))
    frame = pd.DataFrame(
        {"item_id": item_ids, "title": titles, "description": descriptions,
         "categories": categories, "brand": item_brands}
    )
    return _Items(frame=frame, ids=item_ids, category=cat_of_item, weight=weight)


def _describe_item(
    i: int, cat_index: int, draws: np.ndarray, brands: list[str], pool: np.ndarray
) -> tuple[str, str, list[str], str]:
    """Title, description, categories and brand of item ``i`` from its five uniform ``draws``.

    ``pool`` holds the indexes (into ``brands``) of the brands at home in the item's category.
    """
    cat = _CATEGORIES[cat_index]
    sub, nouns, words, sizes = _VOCAB[cat]
    noun = nouns[int(draws[0] * len(nouns))]
    w1 = int(draws[1] * len(words))
    # A second, different word half of the time: "Hydrating rose face serum 50ml".
    w2 = (w1 + 1 + int(draws[4] * (len(words) - 1))) % len(words)
    word = words[w1] if draws[4] < 0.5 else f"{words[w1]} {words[w2]}"
    size = sizes[int(draws[2] * len(sizes))]
    brand = brands[pool[int(draws[3] * len(pool))]] if len(pool) else brands[i % len(brands)]
    title = f"{word[0].upper()}{word[1:]} {noun} {size}"
    article = "An" if word[0].lower() in "aeiou" else "A"
    description = f"{article} {word} {noun} by {brand} for your {cat.lower()} routine."
    return title, description, ["Beauty", cat, sub], brand


# --------------------------------------------------------------------------- users


def _draw_preferences(rng: np.random.Generator, users: int) -> tuple[np.ndarray, list[list[str]]]:
    """1-3 preferred categories per user with Dirichlet weights.

    Returns:
        ``(pref (users, n_cat) weights, zero outside the preferred categories;
        the preferred category names per user, sorted by category index)``.
    """
    n_cat = len(_CATEGORIES)
    n_pref = rng.choice([1, 2, 3], size=users, p=[0.4, 0.4, 0.2])
    pref = np.zeros((users, n_cat))
    pref_cats = []
    for u in range(users):
        cats = rng.choice(n_cat, size=n_pref[u], replace=False)
        pref[u, cats] = rng.dirichlet(np.full(n_pref[u], 2.0))
        pref_cats.append([_CATEGORIES[c] for c in sorted(cats)])
    return pref, pref_cats


def _draw_history_lengths(rng: np.random.Generator, users: int, min_history: int, cap: int) -> np.ndarray:
    """Long-tailed (Pareto) history length per user, in ``[min_history, cap]``."""
    return np.minimum(min_history + np.floor(rng.pareto(1.5, size=users) * 4.0).astype(int), cap)


@dataclass(frozen=True)
class _Mixture:
    """P(item | user) = strength * sum_c pref(c) * P(item | c) + (1 - strength) * P(item).

    Held as cumulative distributions, so a draw costs a binary search, not a pass over the
    catalogue: the generator stays linear in users x history length at any catalogue size.
    """

    #: (users,): ``preference_strength``, or 0 for a user none of whose categories has items.
    strength: np.ndarray
    #: (users, n_cat): cumulative preference weights over the categories that have items (last 1).
    pref_cdf: np.ndarray
    #: (items,): the items grouped by category, popularity-weighted CDF within each; category c's
    #: entries lie in (c, c + 1], so ``searchsorted(cat_cdf, c + u)`` draws from P(item | c).
    cat_cdf: np.ndarray
    #: (items,): the item index at each position of ``cat_cdf``.
    cat_items: np.ndarray
    #: (items,): CDF of P(item), popularity over the whole catalogue.
    global_cdf: np.ndarray
    #: (n_cat + 1,): where each category's items start in ``cat_items``.
    cat_start: np.ndarray | None = None
    #: (users, n_cat): each user's spot in each category, a share of its hidden order (None: no locality).
    spots: np.ndarray | None = None
    locality: float = 0.0
    locality_width: float = 1.0

    @staticmethod
    def of(pref: np.ndarray, cat_of_item: np.ndarray, weight: np.ndarray, preference_strength: float) -> _Mixture:
        """The mixture for users' category weights ``pref`` over items of categories ``cat_of_item``."""
        n_cat = pref.shape[1]
        cat_mass = np.bincount(cat_of_item, weights=weight, minlength=n_cat)
        # A preferred category with no items would leave its mass unspent: renormalise the rest.
        pref_eff = pref * (cat_mass > 0)
        pref_sum = pref_eff.sum(axis=1, keepdims=True)
        pref_eff = np.divide(pref_eff, pref_sum, out=np.zeros_like(pref_eff), where=pref_sum > 0)
        strength = np.where(pref_sum.ravel() > 0, preference_strength, 0.0)
        order = np.argsort(cat_of_item, kind="stable")
        cats = cat_of_item[order]
        within = np.cumsum(weight[order])
        before = np.concatenate(([0.0], np.cumsum(cat_mass)))[cats]  # mass of the lower categories
        cat_cdf = cats + (within - before) / cat_mass[cats]
        global_cdf = np.cumsum(weight) / weight.sum()
        cat_start = np.concatenate(([0], np.cumsum(np.bincount(cat_of_item, minlength=n_cat))))
        return _Mixture(strength, np.cumsum(pref_eff, axis=1), cat_cdf, order, global_cdf, cat_start)

    def with_spots(self, spots: np.ndarray, locality: float, width: float) -> _Mixture:
        """The same mixture whose preferred-category draws keep, with probability ``locality``,
        to each user's spot (``spots``: (users, n_cat) uniforms) within ``width`` items."""
        return dataclasses.replace(self, spots=spots, locality=locality, locality_width=width)

    def draw(self, rng: np.random.Generator, users: np.ndarray, k: int) -> np.ndarray:
        """``k`` independent item draws (with replacement) for each user index in ``users``."""
        component, pick = rng.random((len(users), k)), rng.random((len(users), k))
        strength = self.strength[users, None]
        preferred = component < strength
        # Below ``strength`` the uniform, rescaled, is uniform again: it picks the category.
        rescaled = component / np.maximum(strength, 1e-12)
        cat = (rescaled[:, :, None] > self.pref_cdf[users, None, :]).sum(axis=2)
        cat = np.minimum(cat, self.pref_cdf.shape[1] - 1)
        last = len(self.global_cdf) - 1
        from_cat = self.cat_items[np.minimum(np.searchsorted(self.cat_cdf, cat + pick, side="right"), last)]
        from_all = np.minimum(np.searchsorted(self.global_cdf, pick, side="right"), last)
        if self.spots is not None:
            from_cat = self._near_spots(rng, users, cat, from_cat)
        return np.where(preferred, from_cat, from_all)

    def _near_spots(self, rng: np.random.Generator, users: np.ndarray, cat: np.ndarray,
                    from_cat: np.ndarray) -> np.ndarray:
        """``from_cat`` with a ``locality`` share replaced by items near the users' spots."""
        near = rng.random(cat.shape) < self.locality
        offset = np.rint(rng.normal(0.0, self.locality_width, cat.shape)).astype(np.int64)
        start, size = self.cat_start[cat], np.diff(self.cat_start)[cat]
        spot = np.floor(self.spots[users[:, None], cat] * size).astype(np.int64)
        place = start + np.mod(spot + offset, np.maximum(size, 1))
        local = self.cat_items[np.minimum(place, len(self.cat_items) - 1)]
        return np.where(near & (size > 0), local, from_cat)


# --------------------------------------------------------------------------- interactions


def _draw_histories(rng: np.random.Generator, mixture: _Mixture, lengths: np.ndarray) -> np.ndarray:
    """Per user, ``lengths[u]`` distinct item indexes from the mixture in random order, concatenated.

    Sampling without replacement proportionally to P(item | user) is the same as drawing with
    replacement and keeping each item's first draw, so a user costs about its history length in
    draws, whatever the catalogue size (a Gumbel-top-k over the catalogue cost users x items).
    """
    out: list[np.ndarray] = []
    chunk = max(1, 4_000_000 // (4 * int(lengths.max())))  # bounds the (chunk, draws) matrices
    for start in range(0, len(lengths), chunk):
        users = np.arange(start, min(len(lengths), start + chunk))
        out.append(_distinct_draws(rng, mixture, users, lengths[users]))
    return np.concatenate(out)


def _distinct_draws(rng: np.random.Generator, mixture: _Mixture, users: np.ndarray,
                    lengths: np.ndarray) -> np.ndarray:
    """``lengths[i]`` distinct items for each of ``users``, in random order, concatenated."""
    draws = mixture.draw(rng, users, 2 * int(lengths.max()))
    while True:
        first = _first_draws(draws)
        short = np.flatnonzero(first.sum(axis=1) < lengths)
        if not len(short):
            break
        # Draw on for the users still short (rare: users of small catalogues); -1 pads the rest.
        more = np.full((len(users), draws.shape[1]), -1)
        more[short] = mixture.draw(rng, users[short], draws.shape[1])
        draws = np.concatenate([draws, more], axis=1)
    keep = first & (np.cumsum(first, axis=1) <= lengths[:, None])
    # Random order in time: the draw order would put favourite items first.
    order = np.argsort(np.where(keep, rng.random(draws.shape), np.inf), axis=1)
    in_history = np.arange(draws.shape[1]) < lengths[:, None]
    return np.take_along_axis(draws, order, axis=1)[in_history]


def _first_draws(draws: np.ndarray) -> np.ndarray:
    """Boolean mask of each row's first draw of each item (-1 is padding, never first)."""
    order = np.argsort(draws, axis=1, kind="stable")  # stable: the earliest draw leads its run
    ranked = np.take_along_axis(draws, order, axis=1)
    new = np.ones_like(ranked, dtype=bool)
    new[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(new)
    np.put_along_axis(first, order, new, axis=1)
    return first & (draws >= 0)


def _draw_interactions(rng: np.random.Generator, user_ids: np.ndarray, drawn: _Items, pref: np.ndarray,
                       lengths: np.ndarray, item_idx: np.ndarray) -> pd.DataFrame:
    """The interactions frame: the items ``item_idx`` (users' histories one after the other) with
    timestamps and ratings."""
    owner, timestamps = _draw_timestamps(rng, lengths)
    preferred = pref[owner, drawn.category[item_idx]] > 0
    rating = _draw_ratings(rng, preferred)
    return pd.DataFrame(
        {"user_id": user_ids[owner], "item_id": np.array(drawn.ids)[item_idx],
         "timestamp": timestamps.astype(np.int64), "rating": rating}
    )


def _draw_timestamps(rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user starts somewhere in 2012-2013 and returns every few days.

    Returns:
        ``(owner, timestamps)``: per interaction (users' histories one after the other), the
        user's index and the unix time in seconds, whole days, non-decreasing within a user.
    """
    users = len(lengths)
    day = 86_400
    t0 = 1_325_376_000  # 2012-01-01 UTC
    start_day = rng.integers(0, 730, size=users)
    total = int(lengths.sum())
    gaps = np.floor(rng.exponential(6.0, size=total)).astype(np.int64)  # 0-day gaps make ties
    owner = np.repeat(np.arange(users), lengths)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cum = np.cumsum(gaps)
    within = cum - np.repeat(cum[first], lengths)  # days since the user's first interaction
    return owner, t0 + (start_day[owner] + within) * day


def _draw_ratings(rng: np.random.Generator, preferred: np.ndarray) -> np.ndarray:
    """Ratings 2-5: mostly 4-5, better for items in the user's own categories (``preferred``)."""
    r = rng.random(len(preferred))
    return np.where(preferred, np.where(r < 0.6, 5.0, np.where(r < 0.9, 4.0, 3.0)),
                    np.where(r < 0.3, 5.0, np.where(r < 0.6, 4.0, np.where(r < 0.85, 3.0, 2.0))))


#: Rows per Parquet file of the generated tables: a DataFrame built from pandas has one partition
#: per Arrow batch (``spark.arrow_max_records_per_batch``, 2,048), so without a coalesce 3M
#: interactions became about 1,500 files of 2,048 rows, which every later stage then listed and opened.
ROWS_PER_FILE = 1_000_000


def planted_item_embeddings(
    items: pd.DataFrame, *, dim: int = 128, seed: int = 0, locality_width: float = 25.0,
    category_dims: int = 16, noise: float = 0.1,
) -> np.ndarray:
    """Unit-length stand-ins for text embeddings of ``items`` that know the planted structure.

    What a text encoder gives a real catalogue (items whose text is alike are bought by the same
    users), for a synthetic one too large to encode on a laptop: ``category_dims`` coordinates
    place an item's category (a random centre per category), the rest are random Fourier
    features of its place in the category's hidden order (:func:`generate_catalogue`'s
    ``locality``), so the cosine of two items of one category falls like
    ``exp(-gap^2 / (2 locality_width^2))`` with the gap between their places, as the users'
    draws near a spot do; a per-category phase keeps equal places of two categories apart. Then
    ``noise`` (relative) and a unit norm. Seeded, independent of the catalogue's own draws.

    Args:
        items: the catalogue's ``items`` frame (``item_id`` in index order, ``categories`` with
            the category second, as :func:`generate_catalogue` writes them).
        dim: embedding width (> ``category_dims``); locality_width: in items, as the catalogue's.

    Returns:
        ``[len(items), dim]`` float32, row i for ``items.item_id[i]``.

    Raises:
        ValueError: ``dim`` not above ``category_dims`` or ``locality_width`` not positive.
    """
    if dim <= category_dims or category_dims < 1 or not locality_width > 0:
        raise ValueError(f"planted embeddings: need dim > category_dims >= 1 and locality_width > 0, "
                         f"got {dim}, {category_dims}, {locality_width}")
    rng = np.random.default_rng([seed, 2])
    names = items["categories"].map(lambda c: c[1] if len(c) > 1 else c[0]).to_numpy()
    cats, cat = np.unique(names, return_inverse=True)
    # The hidden order: a category's items by index (the frame is in index order).
    place = pd.Series(np.arange(len(items))).groupby(cat).cumcount().to_numpy().astype(np.float64)
    waves = dim - category_dims
    omega = rng.normal(0.0, 1.0 / locality_width, waves)
    phase = rng.uniform(0.0, 2 * np.pi, (len(cats), waves))
    centres = rng.normal(0.0, 1.0 / np.sqrt(category_dims), (len(cats), category_dims))
    out = np.empty((len(items), dim), dtype=np.float32)
    step = 65_536  # rows at a time: the float64 product of a million items is 0.9 GB
    for a in range(0, len(items), step):
        b = min(len(items), a + step)
        wave = np.sqrt(2.0 / waves) * np.cos(place[a:b, None] * omega + phase[cat[a:b]])
        block = np.concatenate([centres[cat[a:b]], wave], axis=1)
        block += noise * rng.normal(0.0, 1.0 / np.sqrt(dim), block.shape)
        out[a:b] = unit_rows(block)
    return out


def write_catalogue(
    wh, cfg: DemoConfig, *, zipf_exponent: float = 1.0, locality: float = 0.0,
    locality_width: float = 25.0, rows_per_file: int = ROWS_PER_FILE,
) -> Catalogue:
    """Generate the catalogue of ``cfg`` and write tables ``interactions``, ``items`` and ``users``.

    Args:
        wh: the :class:`~longtail.core.tables.Warehouse`.
        cfg: the ``demo`` config section (users, items, seed).
        zipf_exponent: as :func:`generate_catalogue` (the demo's 1.0 by default). A flatter
            popularity (``benchmarks/retrieval.py`` uses 0.5) gives most of a large catalogue
            interactions at about as many users as items; at 1.0 and 10 interactions per user
            most of 200,000 items never pass a 5-core.
        locality, locality_width: as :func:`generate_catalogue` (0: the demo's catalogue).
        rows_per_file: at most this many rows per written file (about: files are whole batches).

    Returns:
        The generated :class:`Catalogue` (pandas frames).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cat = generate_catalogue(cfg.users, cfg.items, cfg.seed, zipf_exponent=zipf_exponent,
                             locality=locality, locality_width=locality_width)
    spark = wh.spark
    inter = spark.createDataFrame(
        cat.interactions,
        T.StructType([
            T.StructField("user_id", T.StringType()), T.StructField("item_id", T.StringType()),
            T.StructField("timestamp", T.LongType()), T.StructField("rating", T.DoubleType()),
        ]),
    ).withColumn("ts", F.timestamp_seconds("timestamp"))
    items = spark.createDataFrame(
        cat.items,
        T.StructType([
            T.StructField("item_id", T.StringType()), T.StructField("title", T.StringType()),
            T.StructField("description", T.StringType()),
            T.StructField("categories", T.ArrayType(T.StringType())),
            T.StructField("brand", T.StringType()),
        ]),
    ).withColumn("attributes", F.lit(None).cast(T.MapType(T.StringType(), T.StringType())))
    # Preferred categories stay out of the table: they are the ground truth the models should find.
    users = spark.createDataFrame(
        cat.users[["user_id"]], T.StructType([T.StructField("user_id", T.StringType())])
    ).withColumn("attributes", F.lit(None).cast(T.MapType(T.StringType(), T.StringType())))
    tables = ((inter, len(cat.interactions), schemas.INTERACTIONS), (items, len(cat.items), schemas.ITEMS),
              (users, len(cat.users), schemas.USERS))
    with wh.job():
        for frame, rows, table in tables:
            files = max(1, -(-rows // rows_per_file))
            wh.write(schemas.conform(frame.coalesce(files), table), table, mode="overwrite")
    return cat
