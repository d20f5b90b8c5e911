"""Aggregating the nodes' updates: each reply checked against what was sent, then averaged.

``checked_update`` refuses a reply whose tensors, shapes or sample count do
not fit (NaN, a count above what the node holds); ``fedavg`` is the weighted
mean the pretraining rounds use by default, taken one reply at a time as
replies arrive (``RunningMean``); the robust rules and federated
fine-tuning's strategies are Flower's own classes (``make_strategy``), run on
plain state dicts (``strategy_average``, ``FinetuneAggregator``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.config import FINETUNE_STRATEGIES, CampaignConfig
from common.towers import block_of

State = dict[str, torch.Tensor]

def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """The weighted mean of state dicts (weights: windows trained on); integer entries come from the first."""
    if not states:
        raise ValueError("fedavg: no states")
    if len(states) != len(weights):
        raise ValueError(f"fedavg: {len(states)} states but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fedavg: weights must be finite, non-negative and not all zero, got {list(weights)}")
    mean = RunningMean()
    for s, wi in zip(states, w):
        mean.add(s, float(wi))
    return mean.result()


class RunningMean:
    """FedAvg one reply at a time: the weighted sum of the states so far, in float64, and their total weight.

    A round's replies can be added as they arrive and dropped at once, so the
    coordinator holds one running sum per block, not every node's state: its
    memory does not grow with the fleet. Integer entries (step counters) come
    from the first state; every later state must have its keys and shapes.
    """

    def __init__(self) -> None:
        self.sum: State = {}  # floating entries: the weighted sum, float64
        self.fixed: State = {}  # other entries: the first state's
        self.first: dict[str, tuple[torch.Size, torch.dtype]] = {}  # every key in the first state's order: its shape and dtype
        self.total = 0.0
        self.count = 0

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None:
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"fedavg: weights must be finite and non-negative, got {weight}")
        if self.count == 0:
            self.first = {k: (v.shape, v.dtype) for k, v in state.items()}
            self.fixed = {k: v.clone() for k, v in state.items() if not v.is_floating_point()}
            self.sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items() if v.is_floating_point()}
        elif set(state) != set(self.first):
            raise ValueError(f"fedavg: state {self.count} has keys {sorted(set(state) ^ set(self.first))[:3]} that state 0 does not share")
        for k, v in state.items():
            if v.shape != self.first[k][0]:
                raise ValueError(f"fedavg: {k!r} has shape {tuple(v.shape)} in state {self.count}, {tuple(self.first[k][0])} in state 0")
        for k, acc in self.sum.items():
            acc += weight * state[k].to(torch.float64)
        self.total += weight
        self.count += 1

    def result(self) -> State:
        """The weighted mean, keys in the first state's order."""
        if self.count == 0 or self.total <= 0:
            raise ValueError("fedavg: no states, or weights that are all zero")
        return {k: (self.sum[k] / self.total).to(dtype) if k in self.sum else self.fixed[k].clone() for k, (_, dtype) in self.first.items()}


def checked_update(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], n: object, cap: int, what: str) -> tuple[State, float]:
    """A node's trained state and its sample count, checked against what was sent and what it announced, or ValueError.

    The state must hold exactly the reference's keys with the same shapes and
    finite values; ``n`` (the FedAvg weight the node reports) must be a finite
    number in [1, ``cap``], the windows its manifest announced: a node cannot
    buy itself a larger share of the average.
    """
    missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or extra:
        raise ValueError(f"{what}: keys differ from what was sent (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, ref in reference.items():
        v = state[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise ValueError(f"{what}: {k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{what}: {k!r} holds NaN or Inf")
    try:
        count = float(n)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: sample count {n!r} is not a number") from None
    if not (math.isfinite(count) and 1 <= count <= cap):
        raise ValueError(f"{what}: sample count {count:g} is outside [1, {cap}] (the windows it announced)")
    return dict(state), count


# --- federated fine-tuning ---------------------------------------------------------------------


def make_strategy(name: str, cfg: CampaignConfig):
    """One of Flower's own strategy classes, used for its aggregation (our rounds send and wait themselves)."""
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi

    if name == "fedmedian":
        return FedMedian()
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=cfg.trim_fraction)
    if name == "fedavg":
        return FedAvg()
    if name == "fedprox":
        return FedProx(proximal_mu=cfg.finetune_mu)
    if name == "fedadam":
        return FedAdam(eta=cfg.finetune_server_lr)
    if name == "fedyogi":
        return FedYogi(eta=cfg.finetune_server_lr)
    raise ValueError(f"unknown fine-tuning strategy {name!r}; known: {', '.join(FINETUNE_STRATEGIES)}")


class FinetuneAggregator:
    """Aggregates fine-tuned models with a Flower strategy, one instance per block of parameters.

    A block is one modality's encoder, adapter and head, or the shared
    prototype; it is aggregated over the nodes that hold it (a gyro-only node
    has no say in lin_acc's encoder), and a server-side optimiser (FedAdam,
    FedYogi) keeps its moments per block across rounds.

    A round is ``begin``, one ``add`` per reply as it arrives, then ``finish``.
    The strategies that start from the weighted mean of the replies (FedAvg,
    FedProx, FedAdam, FedYogi) get that mean, taken reply by reply in a
    ``RunningMean`` per block, as one reply carrying the round's total weight:
    the coordinator holds one model per block whatever the fleet, and the
    result is the strategy's own on the whole round. The robust rules
    (FedMedian, FedTrimmedAvg) need every reply of the round together.
    """

    MEAN_FIRST = frozenset({"fedavg", "fedprox", "fedadam", "fedyogi"})

    def __init__(self, cfg: CampaignConfig):
        self.cfg = cfg
        self.strategies: dict[str, Any] = {}
        self.streaming = cfg.finetune_strategy in self.MEAN_FIRST
        self.current: Mapping[str, torch.Tensor] = {}
        self.blocks: dict[str, list[str]] = {}
        self.sums: dict[str, RunningMean] = {}
        self.kept: dict[str, list[tuple[State, float]]] = {}

    def begin(self, current: Mapping[str, torch.Tensor]) -> None:
        """A new round from the model ``current`` (the one the nodes were sent)."""
        self.current = current
        self.blocks = {}
        for k in current:
            self.blocks.setdefault(block_of(k), []).append(k)
        self.sums = {b: RunningMean() for b in self.blocks}
        self.kept = {b: [] for b in self.blocks}

    def add(self, state: Mapping[str, torch.Tensor], n: float) -> None:
        """One node's fine-tuned state (the blocks it holds) and its weight, or ValueError with nothing taken from it."""
        held = [b for b, keys in self.blocks.items() if all(k in state for k in keys)]
        for b in held:  # every block checked before any is taken: a bad reply leaves the round as it was
            for k in self.blocks[b]:
                if state[k].shape != self.current[k].shape or not torch.isfinite(state[k].float()).all():
                    raise ValueError(f"a fine-tuned {k!r} has shape {tuple(state[k].shape)} or non-finite values (expected {tuple(self.current[k].shape)})")
        for b in held:
            part = {k: state[k] for k in self.blocks[b]}
            if self.streaming:
                self.sums[b].add(part, n)
            else:
                self.kept[b].append((part, n))

    def finish(self, rnd: int) -> dict[str, torch.Tensor]:
        """The aggregated model: each block by its strategy over the nodes that returned it, the others as they were."""
        out = {k: v.clone() for k, v in self.current.items()}
        for block, keys in sorted(self.blocks.items()):
            if self.streaming:
                mean = self.sums[block]
                holders = [(mean.result(), mean.total)] if mean.count else []
            else:
                holders = self.kept[block]
            if not holders:
                continue
            strategy = self.strategies.setdefault(block, make_strategy(self.cfg.finetune_strategy, self.cfg))
            out.update(strategy_average(strategy, rnd, {k: self.current[k] for k in keys}, holders))
        self.sums, self.kept = {}, {}
        return out

    def state_dict(self) -> dict[str, dict[str, State]]:
        """What the strategies carry from round to round (a server optimiser's moments, per block), as tensors, for a checkpoint."""
        out = {}
        for block, strategy in self.strategies.items():
            moments = {name: getattr(strategy, name, None) for name in ("m_t", "v_t")}
            out[block] = {name: {k: torch.from_numpy(np.array(v)) for k, v in m.items()} for name, m in moments.items() if m is not None}
        return out

    def load_state_dict(self, state: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]]) -> None:
        """The strategies as ``state_dict`` left them: a resumed run's next round is the one an uninterrupted run takes."""
        for block, moments in state.items():
            strategy = self.strategies.setdefault(block, make_strategy(self.cfg.finetune_strategy, self.cfg))
            for name, m in moments.items():
                setattr(strategy, name, {k: v.numpy() for k, v in m.items()})

    def aggregate(self, rnd: int, current: Mapping[str, torch.Tensor], replies: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
        """A whole round at once: ``begin``, ``add`` each reply, ``finish``."""
        self.begin(current)
        for state, n in replies:
            self.add(state, n)
        return self.finish(rnd)


def strategy_average(strategy, rnd: int, current: Mapping[str, torch.Tensor], replies: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> State:
    """``current``'s tensors aggregated from the nodes' (state, sample count) pairs by one of Flower's strategies, as it aggregates a round.

    The states hold exactly ``current``'s keys and shapes (``checked_update``). A
    server-side optimiser (FedOpt) takes its pseudo-gradient against ``current``.
    """
    from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    def reply(state: Mapping[str, torch.Tensor], n: float) -> Message:
        meta = Metadata(run_id=0, message_id="", src_node_id=0, dst_node_id=0, reply_to_message_id="", group_id="", created_at=0.0, ttl=0.0, message_type="train")
        return Message(RecordDict({"arrays": ArrayRecord({k: state[k] for k in current}), "metrics": MetricRecord({"num-examples": float(n)})}), metadata=meta)

    if hasattr(strategy, "current_arrays"):
        strategy.current_arrays = {k: v.detach().cpu().numpy() for k, v in current.items()}
    arrays, _ = strategy.aggregate_train(rnd, [reply(state, n) for state, n in replies])
    return {k: v.to(current[k].dtype) for k, v in arrays.to_torch_state_dict().items()}
