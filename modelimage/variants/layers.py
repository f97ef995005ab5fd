"""Layers that variants share: the same files give the same blobs.

A weight file has a layer of its own in every plan, so a weight file that
several variants hold is one identical layer in each. Small files
(configs, tokenizer, README) share layers, so they are packed by *who holds
them*: first the files every variant holds, then each smaller group of
variants' files, each group into layers of its own. A group's layers are
then byte-identical in every variant that holds the group, stored once in a
layout and pushed once to a registry. Pure: plans in, plans out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..plan import Layer, Plan, _pack_small, blob_budget
from ..tarstream import Entry


def holders_of(plan: Plan, holders: Callable[[str], tuple[str, ...]], own: str) -> Callable[[Entry], tuple[str, ...]]:
    """Who holds each planned file: the variants holding its source file; a
    file the plan generated (a reshard's shards or index) is held by the
    variants that hold all of its sources; ``own`` (this variant) alone when
    nothing else is known."""
    made = {out: r.sources for r in plan.reshards for out in r.outputs}

    def who(e: Entry) -> tuple[str, ...]:
        rel = e.content.name  # the file's path in the model root
        if rel in made:
            sets = [set(holders(s)) for s in made[rel]]
            common = set.intersection(*sets) if sets else set()
            return tuple(n for n in holders(made[rel][0]) if n in common) or (own,)
        return holders(rel) or (own,)

    return who


def group_shared(plan: Plan, who: Callable[[Entry], tuple[str, ...]], order: Sequence[str]) -> Plan:
    """``plan`` with its small-file layers packed again by holder group:
    the group of most variants first (ties in ``order``), each group's files
    in path order. Weight layers are kept as they are. When the groups would
    need more layers than the image may have, the plan is returned unchanged
    (still correct; the small files are then stored once per variant)."""
    settings = plan.settings
    small = [e for layer in plan.layers if layer.kind == "files" for e in layer.entries]
    kept = [layer for layer in plan.layers if layer.kind != "files"]
    groups: dict[tuple[str, ...], list[Entry]] = {}
    for e in small:
        groups.setdefault(who(e), []).append(e)
    rank = {n: i for i, n in enumerate(order)}
    budget = blob_budget(settings.max_layer_size, settings.compression)
    packed: list[Layer] = []
    for key in sorted(groups, key=lambda k: (-len(k), [rank.get(n, len(rank)) for n in k])):
        packed += _pack_small(sorted(groups[key], key=lambda e: e.path), settings, budget)
    if len(kept) + len(packed) > settings.max_layers - settings.base_layers:
        return plan
    return Plan(tuple(kept + packed), settings, plan.reshards)
