"""Building blocks of the sequential models: encoders, item views, cross-attention, the model.

Every model is one :class:`SequentialRecommender` put together from parts:

- a sequence **encoder** (causal Transformer for SASRec, bidirectional for Bert4Rec, GRU
  for GRU4Rec) with two steps: ``prepare`` (scaling, positions, dropout) and ``forward``;
- one or more item **views**, each a table ``[rows, hidden]`` of item vectors (trainable
  ids; frozen LLM embeddings through an adapter);
- optionally a **cross-attention** between two views (LLM-ESR);
- an objective (next item or cloze) and a self-distillation weight ``alpha``.

Conventions: item index 0 is padding; sequences are left-padded (most recent item last);
positions count from a user's oldest item (1..n, 0 on padding), so dropping all-padding
columns on the left changes no result. Padding rows of every view are zero.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.models.losses import LOSSES, bce, full_softmax_ce, sampled_softmax

# --------------------------------------------------------------------------- helpers


def left_positions(seqs: Tensor) -> Tensor:
    """Position of each item counted from the user's oldest item (1..n); 0 on padding."""
    keep = seqs != 0
    return torch.cumsum(keep, dim=1) * keep


def trim_padding(seqs: Tensor) -> Tensor:
    """Drop the leading columns that are padding in every row (keeps at least one column)."""
    if seqs.shape[1] <= 1:
        return seqs
    filled = (seqs != 0).any(dim=0)
    if not bool(filled.any()):
        return seqs[:, -1:]
    first = int(torch.nonzero(filled)[0, 0])
    return seqs[:, first:]


def attention_mask(pad: Tensor, causal: bool) -> Tensor:
    """``[B, 1, L, L]`` boolean, True where query i may attend key j.

    Keys on padding are hidden; with ``causal`` so are later keys. Every query may see
    itself, so no softmax row is empty (padding queries give garbage that is zeroed after).
    """
    length = pad.shape[1]
    allowed = ~pad[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=pad.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=pad.device)
    return allowed | eye


#: Histories up to this length share one encoder pass in :func:`length_groups`.
SHORT_HISTORY = 32


def length_groups(lengths: Tensor, group_rows: int, short: int | None = None) -> list[Tensor]:
    """Row ids in groups of similar length, to encode each group trimmed to its longest row.

    Rows sorted by length are cut every ``group_rows`` rows and wherever the length passes a
    power of two above ``short`` (default :data:`SHORT_HISTORY`; rounded up to a power of two):
    a group's rows are then at least half as long as its longest, so padding costs at most 2x in
    the linear layers and 4x in attention, where a batch of 128 rows of 30 to 197 items padded to
    197 (the longest of a length-bucketed Beauty epoch) cost about 10x. Short histories stay in
    one pass (each pass has a fixed cost).
    """
    short = SHORT_HISTORY if short is None else short
    order = torch.argsort(lengths, stable=True)
    # A ``short`` that is not a power of two counts as the next one up (10: lengths up to 16 share).
    floor = math.ceil(math.log2(max(int(short), 1)))
    classes = torch.ceil(torch.log2(lengths[order].clamp(min=1).double())).clamp(min=floor)
    cuts = set(range(group_rows, order.numel(), group_rows))
    cuts.update((torch.nonzero(classes[1:] != classes[:-1]).squeeze(1) + 1).tolist())
    bounds = [0, *sorted(cuts), order.numel()]
    return [order[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def xavier_init(module: nn.Module, skip: Sequence[nn.Parameter] = ()) -> None:
    """Xavier-normal init of every matrix parameter of ``module`` except those in ``skip``."""
    skipped = {id(p) for p in skip}
    for param in module.parameters():
        if param.dim() >= 2 and id(param) not in skipped:
            nn.init.xavier_normal_(param)


def loss_options(hp: Mapping) -> dict:
    """The :class:`SequentialRecommender` loss arguments from hyperparameters (``loss``,
    ``ce_item_chunk``); models saved before these keys existed train with ``bce``."""
    return {
        "loss": hp.get("loss", "bce"),
        "ce_item_chunk": int(hp.get("ce_item_chunk", 16384)),
        "similarity": hp.get("similarity", "dot"),
        "temperature": float(hp.get("temperature", 1.0)),
    }


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: each element zeroed with probability ``p``, the rest scaled by ``1 / (1 - p)``.

    The same as ``F.dropout`` except for where the random numbers come from on a CPU: torch's CPU
    ``bernoulli_`` draws one number per element at about 13 ns each (17% of an ``llmesr_sasrec``
    step on Beauty); this draws 64 random bits per 4 elements (about 1 ns each) and keeps an
    element when its 15 bits are at least ``p * 32768``, so ``p`` is honoured to 1 / 32,768.
    Elsewhere (CUDA) ``F.dropout``, whose generator is already fast. Gradients flow through the
    saved mask as in ``F.dropout``.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    n = x.numel()
    # random_() on int64 fills [0, 2^63): every 16-bit quarter has 15 uniform low bits (the top
    # quarter's sign bit is always 0, so the sign bit is masked off in all four).
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
    keep = (bits & 0x7FFF) >= round(p * 32768)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` drawing its mask with :func:`dropout` (faster on CPUs, the same otherwise)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


# --------------------------------------------------------------------------- attention


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention; queries from one sequence, keys and values from another."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden, bias=bias)
        self.key = nn.Linear(hidden, hidden, bias=bias)
        self.value = nn.Linear(hidden, hidden, bias=bias)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, query: Tensor, context: Tensor, allowed: Tensor) -> Tensor:
        b, length, hidden = query.shape
        d = hidden // self.heads

        def split(x: Tensor) -> Tensor:  # queries and keys may differ in length (last_only)
            return x.view(b, x.shape[1], self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(query)), split(self.key(context)), split(self.value(context))
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            out = _attention_with_dropout(q, k, v, allowed, self.dropout)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(out.transpose(1, 2).reshape(b, length, hidden))


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, p: float) -> Tensor:
    """What ``scaled_dot_product_attention`` computes with ``dropout_p`` (its math path), with the
    attention weights dropped by :func:`dropout`: on a CPU SDPA draws them with ``bernoulli_``."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return dropout(weights, p, True) @ v


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + point-wise feed-forward, as in SASRec."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), Dropout(dropout),
            nn.Linear(hidden, hidden), Dropout(dropout),
        )

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor, last_only: bool = False) -> Tensor:
        """``[B, L, H]``; with ``last_only`` ``[B, 1, H]``: the last position alone, its query
        against every key (``allowed`` and ``keep`` of that position, ``[B, 1, 1, L]`` and ``[B, 1, 1]``)."""
        q = self.attention_norm(x[:, -1:] if last_only else x)
        x = q + self.attention(q, x, allowed)
        x = self.feed_forward_norm(x)
        x = x + self.feed_forward(x)
        return x * keep


# --------------------------------------------------------------------------- encoders


class TransformerEncoder(nn.Module):
    """Self-attention sequence encoder: causal (SASRec) or bidirectional (Bert4Rec)."""

    def __init__(
        self, hidden: int, layers: int, heads: int, dropout: float, max_len: int, causal: bool
    ) -> None:
        super().__init__()
        self.causal = causal
        self.max_len = max_len
        self.scale = math.sqrt(hidden)
        self.positions = nn.Embedding(max_len + 1, hidden)
        self.input_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)

    def prepare(self, x: Tensor, seqs: Tensor) -> Tensor:
        keep = (seqs != 0).unsqueeze(-1)
        x = x * self.scale + self.positions(left_positions(seqs).clamp(max=self.max_len))
        return self.input_dropout(x) * keep

    def forward(self, x: Tensor, seqs: Tensor, last_only: bool = False) -> Tensor:
        """``[B, L, H]`` outputs; with ``last_only`` ``[B, 1, H]``, the last position's, the same
        values: the last block then runs its query, attention output and feed-forward for that
        position alone (the keys and values still cover every position), about a third less work
        for two blocks where only the user vector is read (scoring, evaluation, validation)."""
        pad = seqs == 0
        keep = (~pad).unsqueeze(-1)
        allowed = attention_mask(pad, self.causal)
        last = len(self.blocks) - 1 if last_only else -1
        for i, block in enumerate(self.blocks):
            if i == last:
                allowed, keep = allowed[:, :, -1:], keep[:, -1:]
            x = block(x, allowed, keep, last_only=i == last)
        return self.final_norm(x) * keep


class GRUEncoder(nn.Module):
    """GRU4Rec's recurrent encoder.

    No biases, as in the reference: zero inputs then keep the state exactly zero, so
    left padding of any width gives the same result (rows in a batch may be trimmed).
    """

    causal = True

    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, bias=False, batch_first=True)

    def prepare(self, x: Tensor, seqs: Tensor) -> Tensor:
        return x * (seqs != 0).unsqueeze(-1)

    def forward(self, x: Tensor, seqs: Tensor, last_only: bool = False) -> Tensor:
        out, _ = self.gru(x)
        out = out * (seqs != 0).unsqueeze(-1)
        return out[:, -1:] if last_only else out


# --------------------------------------------------------------------------- item views


class IdView(nn.Module):
    """Trainable item embeddings (the collaborative view).

    Args:
        rows: table rows (items + padding row 0, + a mask token for cloze models).
        hidden: vector size.
        init: optional ``[rows, hidden]`` initial table (LLM-ESR: PCA of the LLM embeddings).
        projection: optional ``(mean [E], components [hidden, E], offset [hidden])`` that maps
            an LLM embedding to this view, for items the model never saw.
    """

    def __init__(
        self,
        rows: int,
        hidden: int,
        init: Tensor | None = None,
        projection: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, hidden)
        if init is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(init)
        if projection is not None:
            mean, components, offset = projection
            self.register_buffer("pca_mean", mean.clone().float())
            self.register_buffer("pca_components", components.clone().float())
            self.register_buffer("pca_offset", offset.clone().float())

    def table(self) -> Tensor:
        w = self.embedding.weight
        return torch.cat([torch.zeros_like(w[:1]), w[1:]], dim=0)

    def rows(self, ids: Tensor) -> Tensor:
        """``table()[ids]`` without building the whole table; the gradient is sparse (the rows of
        ``ids``) when the embedding is (:meth:`SequentialRecommender.sparse_item_tables`)."""
        return F.embedding(ids, self.embedding.weight, sparse=self.embedding.sparse) * (ids != 0).unsqueeze(-1)

    @property
    def from_text_available(self) -> bool:
        return hasattr(self, "pca_mean")

    def from_text(self, llm: Tensor) -> Tensor:
        if not self.from_text_available:
            raise TypeError("this id view has no PCA projection for new items")
        return (llm - self.pca_mean) @ self.pca_components.T + self.pca_offset


class SemanticView(nn.Module):
    """Frozen LLM item embeddings through a trainable adapter (LLM-ESR's semantic view).

    The adapter is Linear(E, E/2) -> Linear(E/2, hidden) with no activation, as in the paper.
    With ``standardize`` the frozen table is first centred and scaled per dimension over the
    catalogue's items (all-zero rows, padding and mask, stay zero): sentence embeddings are
    strongly anisotropic (a large shared component), which a linear adapter can undo in
    principle but Adam finds slowly. New items go through the same map.
    """

    def __init__(self, llm: Tensor, hidden: int, standardize: bool = False) -> None:
        super().__init__()
        dim = llm.shape[1]
        llm = llm.clone().float()
        self.standardize = standardize
        if standardize:
            rows = llm.abs().sum(dim=1) > 0
            mean = llm[rows].mean(dim=0) if bool(rows.any()) else torch.zeros(dim)
            scale = llm[rows].std(dim=0).clamp_min(1e-6) if int(rows.sum()) > 1 else torch.ones(dim)
            self.register_buffer("llm_mean", mean)
            self.register_buffer("llm_scale", scale)
            llm = torch.where(rows[:, None], (llm - mean) / scale, torch.zeros_like(llm))
        self.register_buffer("llm", llm)
        self.adapter = nn.Sequential(nn.Linear(dim, max(1, dim // 2)), nn.Linear(max(1, dim // 2), hidden))

    def _folded(self) -> tuple[Tensor, Tensor]:
        # Two linear layers with no activation are one linear map: applying the folded
        # (hidden x E) matrix to the whole table costs a third of the two-step product,
        # with the same result and gradients for both layers.
        first, second = self.adapter[0], self.adapter[1]
        return second.weight @ first.weight, second.weight @ first.bias + second.bias

    def table(self) -> Tensor:
        weight, bias = self._folded()
        t = F.linear(self.llm, weight, bias)
        return torch.cat([torch.zeros_like(t[:1]), t[1:]], dim=0)

    def rows(self, ids: Tensor) -> Tensor:
        """``table()[ids]``: the adapter applied to those rows only."""
        weight, bias = self._folded()
        return F.linear(self.llm.index_select(0, ids), weight, bias) * (ids != 0).unsqueeze(-1)

    from_text_available = True

    def from_text(self, llm: Tensor) -> Tensor:
        weight, bias = self._folded()
        llm = llm.float()
        if self.standardize:
            llm = (llm - self.llm_mean) / self.llm_scale
        return F.linear(llm, weight, bias)


class CrossViewAttention(nn.Module):
    """Each view's sequence attends over its own values with the other view's queries.

    New collaborative sequence = Attn(query=semantic, key/value=collaborative) and the
    other way round, as in LLM-ESR (2 heads, padding mask). Causal for causal encoders,
    so no position sees a later item through the other view. ``residual`` is the weight of
    each view's own sequence in the result (``Attn + residual * x``): 0 is the reference
    (``1 * cross + 0 * id``), where position t holds a mixture of the items up to t and
    no longer item t itself; 1 keeps each item's identity and adds what the other view says.
    """

    def __init__(self, hidden: int, causal: bool, heads: int = 2, residual: float = 0.0) -> None:
        super().__init__()
        heads = heads if hidden % heads == 0 else 1
        self.causal = causal
        self.residual = float(residual)
        self.first = MultiHeadAttention(hidden, heads, bias=False)
        self.second = MultiHeadAttention(hidden, heads, bias=False)

    def forward(self, a: Tensor, b: Tensor, seqs: Tensor) -> tuple[Tensor, Tensor]:
        pad = seqs == 0
        keep = (~pad).unsqueeze(-1)
        allowed = attention_mask(pad, self.causal)
        new_a, new_b = self.first(b, a, allowed) * keep, self.second(a, b, allowed) * keep
        if self.residual:
            return new_a + self.residual * a, new_b + self.residual * b
        return new_a, new_b


class PopularityGate(nn.Module):
    """A learned weight per view and per popularity bucket on the item side of the score.

    Item i's vector in view v is scaled by ``weight[bucket(i), v]`` where ``bucket(i)`` is
    ``floor(log2(1 + training count))`` capped at ``buckets - 1``: a handful of parameters that
    let rarely seen items lean on the view that knows them (the frozen-LLM one, whose adapter is
    trained on every item) and popular items on the collaborative one. All weights start at 1,
    so a new model scores as it would without the gate. Only the scoring side is gated: the
    sequence encoder reads the views' own tables. Items the model never saw (placed from text)
    get bucket 0's weights, those of items with no training interaction.
    """

    def __init__(self, popularity: Tensor, views: int, rows: int, buckets: int = 8) -> None:
        super().__init__()
        counts = torch.zeros(rows, dtype=torch.float64)
        counts[: popularity.shape[0]] = popularity.double().clamp_min(0)[:rows]
        bucket = torch.floor(torch.log2(1.0 + counts)).long().clamp(max=buckets - 1)
        self.register_buffer("bucket", bucket)
        self.weight = nn.Parameter(torch.ones(buckets, views))

    def forward(self, tables: list[Tensor]) -> list[Tensor]:
        return [t * self.weight[self.bucket[: t.shape[0]], v].unsqueeze(-1) for v, t in enumerate(tables)]

    def new_items(self, vectors: list[Tensor]) -> list[Tensor]:
        """The weights of bucket 0 on per-view vectors of items placed from text."""
        return [x * self.weight[0, v] for v, x in enumerate(vectors)]


# --------------------------------------------------------------------------- the model


class SequentialRecommender(nn.Module):
    """A sequence encoder over one or more item views; see the module docstring.

    Args:
        n_items: catalogue size (item idxs 1..n_items).
        encoder: a :class:`TransformerEncoder` or :class:`GRUEncoder` (shared by all views).
        views: item views, each with ``table() -> [rows, hidden]``.
        max_len: longest input sequence.
        objective: ``next`` (BCE of the next item against one sampled negative, at every
            position) or ``cloze`` (the same BCE at masked positions; a mask token row
            ``n_items + 1`` exists in every view and ``user_vectors`` appends it).
        cross: optional :class:`CrossViewAttention` between the first two views.
        item_gate: optional :class:`PopularityGate` on the item side of the score.
        alpha: weight of the self-distillation term (0 turns it off).
        loss: ``bce`` (the reference: one sampled negative per position), ``ce`` (softmax
            over the whole catalogue, in blocks of ``ce_item_chunk`` items) or
            ``sampled_softmax`` (shared negatives, optional logQ); see :mod:`.losses`.
        similarity, temperature: score = ``dot(u, v) / temperature`` (``dot``) or
            ``cos(u, v) / temperature`` (``cosine``: user and item vectors L2-normalised).
            Applied in training and in ``user_vectors``/``item_vectors``, so serving ranks
            exactly as training scores.
    """

    def __init__(
        self,
        n_items: int,
        encoder: nn.Module,
        views: Sequence[nn.Module],
        max_len: int,
        objective: str = "next",
        cross: CrossViewAttention | None = None,
        alpha: float = 0.0,
        item_gate: PopularityGate | None = None,
        loss: str = "bce",
        ce_item_chunk: int = 16384,
        similarity: str = "dot",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if objective not in ("next", "cloze"):
            raise ValueError(f"unknown objective {objective!r}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r} (known: dot, cosine)")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if cross is not None and len(views) != 2:
            raise ValueError("cross-attention needs exactly two views")
        self.n_items = n_items
        self.max_len = max_len
        self.objective = objective
        self.alpha = float(alpha)
        self.loss_kind = loss
        self.ce_item_chunk = int(ce_item_chunk)
        self.similarity = similarity
        self.temperature = float(temperature)
        self.encoder = encoder
        self.views = nn.ModuleList(views)
        self.cross = cross
        self.item_gate = item_gate
        #: Token that stands for a hidden item (cloze models only).
        self.mask_token = n_items + 1 if objective == "cloze" else None

    # ---- item side

    def tables(self) -> list[Tensor]:
        """Each view's item table ``[rows, hidden]`` (row 0 zero)."""
        return [view.table() for view in self.views]

    def item_vectors(self) -> Tensor:
        """``[n_items + 1, D]`` item vectors (row 0 padding); scores = users @ items.T."""
        return self._item_space(self._scored(self.tables())[: self.n_items + 1])

    def _scored(self, tables: list[Tensor]) -> Tensor:
        """The item side of the score: the views' tables, gated when the model has a gate."""
        return torch.cat(self.item_gate(tables) if self.item_gate is not None else tables, dim=-1)

    def _item_space(self, items: Tensor) -> Tensor:
        return F.normalize(items, dim=-1) if self.similarity == "cosine" else items

    def _user_space(self, users: Tensor) -> Tensor:
        if self.similarity == "cosine":
            users = F.normalize(users, dim=-1)
        return users / self.temperature if self.temperature != 1.0 else users

    @property
    def supports_text(self) -> bool:
        """True when every view can place an item from its LLM embedding alone."""
        return all(getattr(v, "from_text_available", False) for v in self.views)

    def item_vectors_from_text(self, llm_embeddings: Tensor) -> Tensor:
        """``[N, D]`` vectors for new items from their ``[N, E]`` LLM embeddings.

        Raises:
            TypeError: the model has no text view (plain backbones).
        """
        if not self.supports_text:
            raise TypeError("this model has no semantic view: it cannot place items from text")
        llm = llm_embeddings.float()
        vectors = [view.from_text(llm) for view in self.views]
        if self.item_gate is not None:
            vectors = self.item_gate.new_items(vectors)
        return self._item_space(torch.cat(vectors, dim=-1))

    # ---- user side

    def features(self, seqs: Tensor, tables: list[Tensor] | None = None, last_only: bool = False) -> Tensor:
        """``[B, L, D]`` encoder output at every position of left-padded ``seqs`` (``[B, 1, D]``, the
        last position's, with ``last_only``: what a user vector reads, at less cost).

        Without ``tables``, only the rows of the items in ``seqs`` are built (:meth:`touched_rows`):
        a user's vector then costs the same whatever the catalogue's size.
        """
        if tables is None:
            touched = self.touched_rows([seqs])
            if touched is None:
                tables = self.tables()
            else:
                rows, tables = touched
                seqs = torch.searchsorted(rows, seqs.contiguous())
        xs = [self.encoder.prepare(F.embedding(seqs, t), seqs) for t in tables]
        if self.cross is not None:
            xs = list(self.cross(xs[0], xs[1], seqs))
        return torch.cat([self.encoder(x, seqs, last_only=last_only) for x in xs], dim=-1)

    def user_vectors(self, seqs: Tensor) -> Tensor:
        """``[B, D]`` user representations from left-padded histories (most recent last)."""
        if self.mask_token is not None:
            mask = torch.full_like(seqs[:, :1], self.mask_token)
            seqs = torch.cat([seqs, mask], dim=1)
        seqs = trim_padding(seqs[:, -self.max_len :])
        return self._user_space(self.features(seqs, last_only=self.last_position_only)[:, -1])

    #: User vectors run the last block for the scored position alone (``features(last_only=True)``);
    #: False runs every position (the same vectors: for tests and measurements).
    last_position_only = True

    #: Rows per length-sorted chunk when encoding many histories without gradients.
    encode_chunk_rows = 32

    def _last_features(self, seqs: Tensor, tables: list[Tensor], chunk: int | None = None) -> Tensor:
        # Length-sorted chunks, each trimmed to its longest row: the cost follows the
        # real lengths, not the longest sequence in the whole set.
        chunk = chunk or self.encode_chunk_rows
        lengths = (seqs != 0).sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        out = seqs.new_zeros((seqs.shape[0], sum(t.shape[1] for t in tables)), dtype=tables[0].dtype)
        for start in range(0, seqs.shape[0], chunk):
            rows = order[start : start + chunk]
            out[rows] = self.features(trim_padding(seqs[rows]), tables, last_only=self.last_position_only)[:, -1]
        return out

    # ---- training

    #: Rows per length group in :meth:`loss` (see there).
    loss_group_rows = 16

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Training loss of one batch.

        Args:
            batch: ``seqs`` ``[B, L]`` inputs; ``pos`` ``[B, L]`` the item to predict at each
                position (0 = none); for ``bce`` ``neg`` ``[B, L]`` one sampled negative per
                position; for ``sampled_softmax`` ``negatives`` ``[M]`` shared negatives and
                optionally ``logq`` ``[n_items + 1]``; for distillation ``neighbor_index``
                ``[B, K]`` (-1 = none) and either ``neighbor_seqs`` ``[M, L']`` (left-padded
                inputs of the batch's similar users, rows of ``neighbor_index``) or
                ``teacher`` ``[U, D]`` (cached reps, rows of ``neighbor_index``).

        Returns:
            The objective (:mod:`.losses`) averaged over positions with a target, plus
            ``alpha * MSE(user rep, mean of the similar users' detached reps)``.
        """
        batch, tables = self._batch_tables(batch)
        seqs, pos = batch["seqs"], batch["pos"]
        neg = batch.get("neg") if self.loss_kind == "bce" else None
        items = self._scored(tables)
        # Rows are encoded in groups of similar length, each trimmed to its longest row:
        # the same loss as one padded pass over the batch, at a fraction of the cost when
        # most histories are short. Logits are pooled before averaging.
        hs, pos_items, neg_items = [], [], []
        student = None
        for rows in length_groups((seqs != 0).sum(dim=1), self.loss_group_rows):
            s = trim_padding(seqs[rows])
            width = s.shape[1]
            p = pos[rows][:, -width:]
            feats = self.features(s, tables)
            target = p > 0
            hs.append(feats[target])
            pos_items.append(p[target])
            if neg is not None:
                neg_items.append(neg[rows][:, -width:][target])
            if student is None:
                student = feats.new_zeros((seqs.shape[0], feats.shape[-1]))
            student = student.index_put((rows,), feats[:, -1])
        h = torch.cat(hs)
        if h.shape[0]:
            targets = torch.cat(pos_items)
            if self.similarity != "dot" or self.temperature != 1.0:
                h, items = self._user_space(h), self._item_space(items)
            if self.loss_kind == "bce":
                loss = bce(h, items, targets, torch.cat(neg_items))
            elif self.loss_kind == "ce":
                loss = full_softmax_ce(h, items[: self.n_items + 1], targets, self.ce_item_chunk)
            else:
                loss = sampled_softmax(h, items, targets, batch["negatives"], batch.get("logq"))
        else:  # keep every parameter in the graph (DDP expects gradients for all)
            loss = student.sum() * 0.0 + items.sum() * 0.0
        if self.alpha > 0 and "neighbor_index" in batch:
            loss = loss + self.alpha * self.distillation(student, batch, tables)
        return loss

    #: Build only the item rows a batch or a history touches (:meth:`touched_rows`); False builds
    #: every row (the same results: for tests and measurements).
    gather_touched_rows = True

    @property
    def step_builds_touched_rows(self) -> bool:
        """Whether a training step can build only the item rows it touches: not with ``ce`` (it
        scores every item) nor the popularity gate (indexed by item idx); see :meth:`_batch_tables`."""
        return self.loss_kind != "ce" and self.item_gate is None

    def _batch_tables(self, batch: Mapping[str, Tensor]) -> tuple[Mapping[str, Tensor], list[Tensor]]:
        """The item tables a training step scores with, and the batch in their row numbers.

        A step touches its inputs, targets and negatives (and the similar users' inputs): with
        ``bce`` or ``sampled_softmax``, every view builds those rows only and the batch's item
        idxs are renumbered into them (sorted, so 0 stays padding). The same loss and gradients as
        the whole tables; what it saves grows with the catalogue: each gather from a whole table
        costs a dense ``[rows, hidden]`` gradient buffer in backward (18 per step, 51 MB each at
        200,000 items), and the semantic view's adapter runs over a few thousand rows, not every
        item. ``ce`` scores every item, and the popularity gate is indexed by item idx: whole tables.
        """
        keys = [k for k in ("seqs", "pos", "neg", "negatives", "neighbor_seqs") if batch.get(k) is not None]
        touched = self.touched_rows([batch[k] for k in keys]) if self.step_builds_touched_rows else None
        if touched is None:
            return batch, self.tables()
        rows, tables = touched
        local = dict(batch)
        for k in keys:
            local[k] = torch.searchsorted(rows, batch[k].contiguous())
        if batch.get("logq") is not None:
            # A cloze model's mask token (idx n_items + 1) has no log Q; it is never a target or a
            # negative, so any value serves its row.
            local["logq"] = batch["logq"][rows.clamp(max=batch["logq"].shape[0] - 1)]
        return local, tables

    def touched_rows(self, ids: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]] | None:
        """The sorted distinct item idxs in ``ids`` (0 among them) and each view's rows of them.

        Renumbering inputs with ``torch.searchsorted(rows, x)`` keeps 0 as padding; the rows equal
        ``tables()[rows]``. None when :attr:`gather_touched_rows` is off or a view builds whole
        tables only.
        """
        if not self.gather_touched_rows or not all(hasattr(view, "rows") for view in self.views):
            return None
        flat = [x.reshape(-1) for x in ids]
        rows = torch.unique(torch.cat(flat + [flat[0].new_zeros(1)]))
        return rows, [view.rows(rows) for view in self.views]

    def sparse_item_tables(self) -> list[nn.Parameter]:
        """Make the trainable item tables emit sparse gradients (the rows a step touched) and return
        them, for a row-wise optimiser (:class:`~longtail.models.optim.ItemRowsAdam`). Call before
        wrapping the model in DDP, which reads each embedding's ``sparse`` flag when it is built.

        Raises:
            ValueError: the model's training step builds whole tables (``loss: ce``, the popularity
                gate, or :attr:`gather_touched_rows` off), whose gradients are dense.
        """
        if not (self.step_builds_touched_rows and self.gather_touched_rows):
            raise ValueError("sparse item updates need a step that builds only the rows it touches "
                             "(not loss: ce, not view_gate: popularity)")
        tables = [view.embedding for view in self.views if isinstance(view, IdView)]
        for embedding in tables:
            embedding.sparse = True
        return [embedding.weight for embedding in tables]

    def distillation(self, student: Tensor, batch: Mapping[str, Tensor], tables: list[Tensor]) -> Tensor:
        """MSE between each user's rep and the mean rep of its similar users.

        The similar users' reps are computed under ``no_grad`` from detached tables, so
        the term moves only the student's representation; and without dropout (the
        reference keeps it on): a steadier target at about half the cost. With ``teacher``
        in the batch (reps cached once per epoch, :meth:`teacher_reps`) nothing is encoded here.
        """
        index = batch["neighbor_index"]
        valid = index >= 0
        has = valid.any(dim=1)
        if not bool(has.any()):
            return student.sum() * 0.0
        if "teacher" in batch:
            teacher = batch["teacher"]
            picked = teacher[index.clamp(min=0)] * valid.unsqueeze(-1)
            mean = picked.sum(dim=1)[has] / valid.sum(dim=1)[has].unsqueeze(-1)
            return F.mse_loss(student[has], mean.detach())
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                teacher = self._last_features(batch["neighbor_seqs"], [t.detach() for t in tables])
                picked = teacher[index.clamp(min=0)] * valid.unsqueeze(-1)
                mean = picked.sum(dim=1)[has] / valid.sum(dim=1)[has].unsqueeze(-1)
        finally:
            self.train(was_training)
        return F.mse_loss(student[has], mean)

    def teacher_reps(self, seqs: Tensor, chunk: int = 256) -> Tensor:
        """``[M, D]`` distillation targets of left-padded ``seqs``: the last position's
        features, eval mode, no gradient, length-sorted chunks (as :meth:`distillation`
        computes them per step)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                tables = [t.detach() for t in self.tables()]
                out = self._last_features(seqs, tables, chunk)
        finally:
            self.train(was_training)
        return out.clone()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The training loss (so a DDP wrapper synchronises through ``forward``)."""
        return self.loss(batch)
