"""Pure ranking rules shared by training (policy evaluation) and serving (responses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.decisioning.rules import Slate, select_slate, slot_epsilon


def expected_value(uplift: np.ndarray, p_redeem: np.ndarray, basket_value: np.ndarray,
                   cost: np.ndarray, margin: float,
                   cost_multiplier: float | np.ndarray = 1.0) -> np.ndarray:
    """Incremental profit of an offer: margin x basket x uplift - lambda x P(redeem) x cost.

    The program pays the reward only when it is redeemed, so cost is weighted by propensity;
    ``cost_multiplier`` (lambda) > 1 makes ranking thriftier when spend runs over budget.
    """
    return margin * basket_value * uplift - cost_multiplier * p_redeem * cost


def basket_estimate(avg_basket_90d: np.ndarray | float, multiplier: float,
                    fallback: float) -> np.ndarray:
    """Expected spend of a converted member in the attribution window.

    A conversion week holds more than one average purchase, so the member's recent average
    basket is scaled by a multiplier fitted on training data; members with no purchases get
    the population fallback.
    """
    avg = np.asarray(avg_basket_90d, dtype=np.float64)
    return np.where(avg > 0, avg * multiplier, fallback)


def member_basket(avg_basket_90d: np.ndarray | float, value_params: Mapping[str, float]
                  ) -> np.ndarray:
    """:func:`basket_estimate` with a model's value parameters (its metadata's
    ``value_params``; defaults for a model exported without them)."""
    return basket_estimate(avg_basket_90d, value_params.get("basket_multiplier", 1.0),
                           value_params.get("basket_fallback", 50.0))


def flow_zone_choice(group: np.ndarray, target: np.ndarray, p_complete: np.ndarray,
                     flow_zone: float = 0.7) -> np.ndarray:
    """Index of the target per group whose completion probability is nearest the flow zone.

    Ties go to the easier (lower) target: equally close, the member is likelier to finish.
    Returns row indices into the inputs, one per distinct group, in group order.
    """
    if not 0.0 < flow_zone < 1.0:
        raise ValueError(f"flow_zone must be in (0, 1), got {flow_zone}")
    # rounded so that ties up to float noise (|0.8 - 0.7| vs |0.6 - 0.7|) go to the easier target
    distance = np.round(np.abs(np.asarray(p_complete, dtype=np.float64) - flow_zone), 9)
    order = np.lexsort((target, distance, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]


def target_layout(template: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Grid rows per template (templates in code order), each template's rows by ascending
    target (ties in grid order), padded with ``len(target)``: an index that reads +inf.

    With this layout the flow-zone choice is one argmin per (member, template), whose first
    minimum is the easiest of equally close targets, as in flow_zone_choice.
    """
    order = np.lexsort((np.arange(len(target)), target, template))
    counts = np.bincount(template)
    layout = np.full((len(counts), counts.max()), len(target), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, counts)
    layout[template[order], position] = order
    return layout


def flow_zone_targets(p_complete: np.ndarray, layout: np.ndarray,
                      flow_zone: float) -> np.ndarray:
    """Per member (row of ``p_complete``, one column per grid row) and template, the grid row
    whose completion probability is nearest the flow zone: (members, templates).

    The same choice as flow_zone_choice over a regular grid (distances rounded to 1e-9,
    ties to the lower target, NaN last), without sorting every member's rows: ~10x faster.
    """
    if not 0.0 < flow_zone < 1.0:
        raise ValueError(f"flow_zone must be in (0, 1), got {flow_zone}")
    n, g = p_complete.shape
    distance = np.full((n, g + 1), np.inf)  # the last column is the padding's +inf
    distance[:, :g] = np.round(np.abs(p_complete.astype(np.float64) - flow_zone), 9)
    distance[np.isnan(distance)] = np.inf
    nearest = distance[:, layout].argmin(axis=2)  # first minimum: the lowest target
    return layout[np.arange(len(layout)), nearest]


def slate_probabilities(value: np.ndarray, category: np.ndarray, picks: Sequence[int], k: int,
                        max_per_category: int, epsilon: float, new: np.ndarray,
                        new_epsilon: float, floor: float = 0.0) -> np.ndarray:
    """Per slot j, the probability that :func:`select_slate_exploring_new`, given the same
    arguments, shows ``picks[j]`` in slot j given ``picks[:j]`` in the slots before: what it
    logs when it drew this slate itself, computed without drawing. For a policy that did not
    serve the decision it is what that policy would have logged, so a decision served by one
    of two policies drawn at random (a trial beside the champion) can log every slot's
    probability over the draw. 0 for a pick the policy could not show there.

    Slots 0..k-2 (all k without new items eligible) are :func:`select_slate`'s: the best
    allowed item with probability 1 - e, else a uniform allowed one; the last slot mixes in
    the new-item draw."""
    n = len(value)
    out = np.zeros(len(picks), dtype=np.float64)
    if n == 0 or max_per_category <= 0:
        return out
    category = np.asarray(category)
    if category.dtype.kind not in "iu":  # labels: integer codes, as select_slate does
        category = np.unique(category, return_inverse=True)[1]
    cat_code = category.tolist()
    new = np.asarray(new, dtype=bool)
    explores_new = new_epsilon > 0 and bool(new.any())
    # best first, equal values by index, NaN last: select_slate's order
    order = np.argsort(-np.asarray(value, dtype=np.float64), kind="stable").tolist()
    remaining = [True] * n
    per_cat: dict[int, int] = {}
    for j, pick in enumerate(picks):
        if j >= k:
            break
        candidates = [i for i in range(n)
                      if remaining[i] and per_cat.get(cat_code[i], 0) < max_per_category]
        allowed = set(candidates)
        if pick not in allowed:
            break  # the policy could not show it there (nor, given it, anything after)
        best = next(i for i in order if i in allowed)
        fresh = [i for i in candidates if new[i]] if explores_new and j == k - 1 else []
        share = 1.0 - new_epsilon if fresh else 1.0  # left to the epsilon-greedy choice
        e = slot_epsilon(epsilon, len(candidates), floor / share if share > 0 else floor)
        p = (1.0 - e) * (pick == best) + e / len(candidates)
        if fresh:
            p = share * p + new_epsilon * bool(new[pick]) / len(fresh)
        out[j] = p
        remaining[pick] = False
        per_cat[cat_code[pick]] = per_cat.get(cat_code[pick], 0) + 1
    return out


def mixture_slot_probabilities(served: np.ndarray, other: np.ndarray, served_share: float
                               ) -> np.ndarray:
    """Per slot, the probability of a slate's item given the earlier ones when the slate was
    drawn by one of two policies, the served one with probability ``served_share``: the
    conditional probabilities of each (``served``, ``other``) weighted by how likely each
    policy is to have shown the slots before:

        P(slot j | slots < j) = [s P_a(slots <= j) + (1 - s) P_b(slots <= j)]
                                / [s P_a(slots < j) + (1 - s) P_b(slots < j)]

    Slot 0 is the plain mixture s p_a + (1 - s) p_b."""
    a = np.cumprod(np.concatenate([[1.0], np.asarray(served, dtype=np.float64)]))
    b = np.cumprod(np.concatenate([[1.0], np.asarray(other, dtype=np.float64)]))
    joint = served_share * a + (1.0 - served_share) * b
    return joint[1:] / joint[:-1]


def select_slate_exploring_new(value: np.ndarray, category: np.ndarray, k: int,
                               max_per_category: int, epsilon: float, rng: np.random.Generator,
                               new: np.ndarray, new_epsilon: float,
                               floor: float = 0.0) -> tuple[Slate, bool]:
    """:func:`~serving.decisioning.rules.select_slate` with the exploration of new items.

    A new item (one the model has never seen: no history to score it by) would rarely win a
    slot, so nothing would ever be learnt about it. Rule: the slate's first k - 1 slots are
    chosen as by ``select_slate``; in its last slot (slot k - 1), when some eligible new item
    remains (not shown yet, its category under the cap), a uniformly drawn one of them is
    shown with probability ``new_epsilon``, else the slot is chosen as ``select_slate`` would.
    The logged probability of the last slot's item is the mixture's, exactly:

        (1 - new_epsilon) x [(1 - epsilon) x [it is the best] + epsilon / n]
        + new_epsilon x [it is new] / n_new

    (n: items allowed in the slot, n_new: new ones among them), and every slot's probabilities
    over its candidates still sum to 1. Without new items (or ``new_epsilon`` 0) this is
    ``select_slate`` itself, random draws included. Returns the slate and whether its last
    slot was the new-item exploration's draw.

    ``floor``: every candidate of every slot keeps at least this probability (epsilon raised
    per slot, rules.slot_epsilon); in a last slot that may explore new items, the floor is
    divided by (1 - new_epsilon), the share left to the epsilon-greedy choice, so that the
    items that are not new keep it too.
    """
    new = np.asarray(new, dtype=bool)
    if k <= 0 or new_epsilon <= 0 or not new.any():
        return select_slate(value, category, k, max_per_category, epsilon, rng, floor), False
    head = select_slate(value, category, k - 1, max_per_category, epsilon, rng, floor)
    category = np.asarray(category)
    if category.dtype.kind not in "iu":  # labels: integer codes, as select_slate does
        category = np.unique(category, return_inverse=True)[1]
    cat_code = category.tolist()
    taken = set(head.index.tolist())
    per_cat: dict[int, int] = {}
    for i in taken:
        per_cat[cat_code[i]] = per_cat.get(cat_code[i], 0) + 1
    candidates = [i for i in range(len(cat_code))
                  if i not in taken and per_cat.get(cat_code[i], 0) < max_per_category]
    if len(head.index) < k - 1 or not candidates:  # the slate ran out before its last slot
        return head, False
    allowed = set(candidates)
    # best first, equal values by index, NaN last: select_slate's order
    order = np.argsort(-np.asarray(value, dtype=np.float64), kind="stable").tolist()
    best = next(i for i in order if i in allowed)
    fresh = [i for i in candidates if new[i]]
    share = 1.0 - new_epsilon if fresh else 1.0  # of the slot left to the epsilon-greedy choice
    e = slot_epsilon(epsilon, len(candidates), floor / share if share > 0 else floor)
    explored = bool(fresh) and rng.random() < new_epsilon
    if explored:  # uniform draws by index: rng.integers costs a fraction of rng.choice
        pick = fresh[int(rng.integers(len(fresh)))]
    elif rng.random() >= e:
        pick = best
    else:
        pick = candidates[int(rng.integers(len(candidates)))]
    p = (1.0 - e) * (pick == best) + e / len(candidates)
    if fresh:
        p = (1.0 - new_epsilon) * p + new_epsilon * bool(new[pick]) / len(fresh)
    return Slate(np.array([*head.index.tolist(), pick], dtype=np.int64),
                 np.array([*head.probability.tolist(), p], dtype=np.float64)), explored


# -- exploration: cold start and targets ------------------------------------------------------

def uniform_slate(n: int, k: int, rng: np.random.Generator) -> Slate:
    """Up to ``k`` of ``n`` items drawn uniformly without replacement: the slot of rank r shows
    each remaining item with probability 1 / (n - r), the logged probability.

    What a family without a model serves (cold start) and an experiment's random arm: every
    eligible item equally likely, so the first model learns from all of them alike.
    """
    index = rng.permutation(n)[:k]
    return Slate(index, 1.0 / (n - np.arange(len(index), dtype=np.float64)))


def uniform_targets(templates: np.ndarray, layout: np.ndarray, n_grid: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per template (codes into ``layout``, see :func:`target_layout`), a grid row drawn
    uniformly among the template's targets, and its probability 1 / (its number of targets).

    Cold start of the difficulty family: with no model the whole difficulty curve is unknown,
    so every allowed target is tried as often as any other.
    """
    templates = np.asarray(templates, dtype=np.int64)
    if len(templates) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    counts = (layout[templates] < n_grid).sum(axis=1)  # a template's rows come first, then pads
    position = np.minimum((rng.random(len(templates)) * counts).astype(np.int64), counts - 1)
    return layout[templates, position], 1.0 / counts


def target_neighbours(layout: np.ndarray, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grid row, the grid row of the next lower and of the next higher target of the same
    template (``n_grid`` where there is none), from :func:`target_layout`'s ``layout``.
    Computed once per catalog: the request path then looks neighbours up."""
    lower = np.full(n_grid, n_grid, dtype=np.int64)
    higher = np.full(n_grid, n_grid, dtype=np.int64)
    if layout.size:
        here, left = layout[:, 1:], layout[:, :-1]
        real = here < n_grid  # a pad has no neighbour (and no row of its own)
        lower[here[real]] = left[real]
        higher[left[real]] = here[real]
    return lower, higher


def explore_targets(rows: Sequence[int], lower: Sequence[int], higher: Sequence[int],
                    n_grid: int, share: float, rng: np.random.Generator
                    ) -> tuple[list[int], list[float]]:
    """Around each flow-zone pick (grid ``rows``), its neighbouring targets: the template's
    next lower and next higher allowed target (``lower`` / ``higher`` per grid row, see
    :func:`target_neighbours`), each served instead of the pick with probability ``share``
    when it exists; the pick keeps 1 - share x (its neighbours).

    Returns the grid rows served and P(served target | template picked) per row. Without it
    the service would only ever log the flow-zone targets, and a difficulty model retrained on
    its own decisions could never learn the curve around them. One draw for all rows; plain
    Python over the few rows of a slate (numpy's per-call cost would exceed the work).
    """
    if share <= 0 or not len(rows):
        return list(rows), [1.0] * len(rows)
    served: list[int] = []
    probability: list[float] = []
    for row, u in zip(rows, rng.random(len(rows)).tolist(), strict=True):
        down, up = int(lower[row]), int(higher[row])
        has_down, has_up = down < n_grid, up < n_grid
        cut = share if has_down else 0.0  # the lower neighbour's slice of [0, 1)
        if has_down and u < share:
            served.append(down)
            probability.append(share)
        elif has_up and cut <= u < cut + share:
            served.append(up)
            probability.append(share)
        else:
            served.append(int(row))
            probability.append(1.0 - share * (has_down + has_up))
    return served, probability
