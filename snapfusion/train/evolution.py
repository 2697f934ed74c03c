"""Architecture evolution (SnapFusion section 3.3, Algorithm 1) on a robust-trained UNet.

Inputs: the robust-trained elastic UNet, a per-block latency lookup table
(:mod:`snapfusion.train.latency`) and a latency budget (a fraction of the full network's
table latency, default 0.5).

Value of an architecture: ``score = world CLIP score - fid_weight * world-FID
+ accuracy_weight * attribute accuracy (%)`` (:func:`evolution_score`) of images generated
for ``eval_prompts`` held-out evaluation prompts (``eval_steps`` DDIM steps, CFG
``guidance``, the same noise for every candidate: common random numbers make small
differences meaningful). A sub-network is evaluated without rebuilding it: the elastic model
is run in training mode with its removed blocks (and the candidate) forced to drop with
probability 1 and every other block kept.

Loop (one *action* per iteration, fine-tuning ``finetune_steps`` steps between actions with
the removed blocks dropped and the robust-training drops on the rest):

* over budget: for every kept removable block ``b`` evaluate the network without ``b``; the
  value per latency of removing ``b`` is ``(score(now) - score(without b)) / cost(b)``;
  remove the block with the smallest value (least quality lost per millisecond saved);
  with an optional parameter budget (``max_params``, an addition of ours so the exported
  model fits a size limit), once the latency budget is met but the parameter count is
  still too high, the same rule runs with parameters (millions) as the cost;
* within budget (``allow_add_back``): for every removed block ``b`` whose cost still fits,
  evaluate the network with ``b`` restored; restore the block with the largest positive
  ``(score(with b) - score(now)) / cost(b)``; stop when none helps or fits.

The loop stops within budget when no add-back helps, after ``max_actions`` actions, or at
the stage's time budget; if the time runs out while still over budget, the remaining
blocks are removed by the last computed values per latency (blocks never evaluated by
their cost, largest first) without further evaluation -- so the output always meets the
budget. The table's additive estimate can miss the engine's measured ratio (on the
development CPU a network the table put at 0.49 of the teacher measured 0.61: the table is
fitted on networks with about a third of the blocks removed, and the search favours blocks
whose cost the fit overestimates); so with ``engine_budget`` (on by default when the table
was measured with the engine) every network the table puts within budget is also timed on
the engine, the measured-minus-table gap becomes an offset on every later estimate, and the
search goes on until the measured ratio meets the budget. Running a finished evolution again
with a lower ``budget`` (and ``max_minutes`` raised) resumes it and goes on removing blocks
from its network. Output: ``out/unet`` (a
UNet config with ``elastic_blocks`` and only the kept weights), ``out/evolution.json`` (actions, estimated and, when the engine is available,
measured latency) and ``out/latency_table.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import JsonlLogger, TrainConfig, Trainer, config_dict, load_config, setup_env
from .latency import engine_available, estimate_latency, get_table
from .robust import DropConfig, drop_generator
from .world import DiffusionLossConfig, LatentWorld, diffusion_loss, freeze

__all__ = ["EvolveRecipeConfig", "evolve", "EvolutionSearch", "evolution_score", "prune_unet", "prune_like"]


@dataclass
class EvolveRecipeConfig:
    """Settings of the architecture-evolution recipe.

    Attributes:
        tokenizer, text_encoder, vae: frozen parts (folders).
        clip: world CLIP folder (evaluation).
        init: robust-trained UNet folder; or an evolved (already pruned) one, e.g. a distilled
            student, whose removed blocks stay removed while the search goes on from it (then
            ``reference`` names the full network).
        reference: full UNet folder that latencies are fractions of (engine measurements);
            default ``init``; required when ``init`` is already pruned.
        out: output folder.
        budget: latency budget as a fraction of the full network's table latency.
        max_params: optional parameter budget of the evolved UNet (0: none); while it is
            exceeded, blocks are removed by value per parameter (so the exported model fits
            a size limit).
        latency_table: table file (None: measure / shipped default / FLOPs, see
            :func:`snapfusion.train.latency.get_table`).
        measure_latency: measure the table with the engine even if a shipped one matches.
        latency_threads: engine threads for measuring.
        engine_budget: check the budget against the engine: each network the table puts within
            budget is timed on the engine (full vs pruned, batch 2) and the search goes on
            until the measured ratio meets the budget (:class:`EvolutionSearch` ``measure``).
            None (default): on when the table was measured with the engine
            (``method: engine-regression``) and the engine is built.
        eval_prompts: evaluation prompts per candidate.
        eval_steps: DDIM steps of the candidate evaluations.
        guidance: CFG scale of the evaluations.
        eval_seed: prompt / noise seed.
        ref_images: real images for the world-FID reference.
        fid_weight: weight of world-FID in the score.
        accuracy_weight: weight of the attribute accuracy (percent of prompts the world's
            exact checker reads back right) in the score; 0 leaves it out. The CLIP score
            and world-FID move little when a block that binds colours or shapes to the text
            goes, the checker sees it (docs/training.md, "A smaller student").
        allow_add_back: re-add blocks when within budget.
        max_actions: action limit.
        keep: blocks the search never removes (e.g. the cross-attention blocks at the highest
            resolution), by name as in ``elastic_blocks``.
        max_candidates: evaluate at most this many candidates per action (0: all), the
            cheapest-to-evaluate choice being the most expensive blocks first.
        finetune_steps: training steps after each action.
        drop: robust-training drops on the kept blocks during fine-tuning.
        kd_weight: output distillation from the frozen ``init`` network while fine-tuning.
        loss: :class:`DiffusionLossConfig` fields.
        data: world data settings.
        train: :class:`TrainConfig` fields (``max_minutes`` is the whole stage's time budget;
            ``max_steps`` is ignored).
    """

    tokenizer: str = ""
    text_encoder: str = ""
    vae: str = ""
    clip: str = ""
    init: str = ""
    reference: str = ""
    out: str = ""
    budget: float = 0.5
    max_params: int = 0
    latency_table: str | None = None
    measure_latency: bool = False
    latency_threads: int = 1
    engine_budget: bool | None = None
    eval_prompts: int = 64
    eval_steps: int = 8
    guidance: float = 4.0
    eval_seed: int = 0
    ref_images: int = 512
    fid_weight: float = 10.0
    accuracy_weight: float = 0.0
    allow_add_back: bool = True
    max_actions: int = 64
    max_candidates: int = 0
    keep: list[str] = field(default_factory=list)
    finetune_steps: int = 50
    drop: dict[str, Any] = field(default_factory=lambda: {"resnet_p": 0.05, "attention_p": 0.05})
    kd_weight: float = 1.0
    loss: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 5e-5, "batch_size": 64, "max_steps": 0,
                                                           "max_minutes": 10.0, "warmup_steps": 10,
                                                           "ema_decay": 0.0, "weight_decay": 0.01,
                                                           "min_lr_ratio": 1.0})


class EvolutionSearch:
    """The action loop, independent of how candidates are scored (testable with any scorer).

    Args:
        blocks: removable block ids.
        table: latency table (``full`` and ``blocks`` costs).
        budget: latency budget as a fraction of ``table["full"]``.
        score: ``score(removed_set) -> float`` (higher is better).
        allow_add_back: try re-adding blocks within budget.
        max_candidates: candidates per action (0: all; else the most expensive ones).
        deadline: ``time.perf_counter()`` value after which no more evaluations start.
        removed: blocks removed already (resume).
        history: earlier action records (resume).
        param_costs: parameters of each block (for a parameter budget).
        param_limit: parameter budget: ``param_total - removed params <= param_limit``.
        param_total: parameters of the full network.
        measure: ``measure(removed) -> ratio``: the measured latency of the network without
            ``removed`` as a fraction of the full network's (e.g. timed on the engine), or
            None. When given, a network the table puts within budget is measured; the gap
            between measurement and table becomes an offset added to every later estimate,
            so the search goes on until the *measured* ratio meets the budget.
        measurements: earlier records of ``measure`` (resume).
        fixed: blocks removed before the search (an already evolved start): counted as removed
            in every latency estimate, never candidates, never re-added, never passed to
            ``score`` or ``measure``.
    """

    def __init__(self, blocks: Sequence[str], table: dict[str, Any], budget: float,
                 score: Callable[[frozenset[str]], float], allow_add_back: bool = True,
                 max_candidates: int = 0, deadline: float | None = None,
                 removed: Sequence[str] = (), history: Sequence[dict[str, Any]] = (),
                 param_costs: dict[str, int] | None = None, param_limit: int | None = None,
                 param_total: int | None = None,
                 measure: Callable[[Sequence[str]], float | None] | None = None,
                 measurements: Sequence[dict[str, Any]] = (), fixed: Sequence[str] = ()) -> None:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {budget}")
        self.fixed = list(fixed)
        if set(self.fixed) & set(blocks):
            raise ValueError(f"blocks both fixed and searchable: {sorted(set(self.fixed) & set(blocks))[:5]}")
        missing = [b for b in list(blocks) + self.fixed if b not in table["blocks"]]
        if missing:
            raise ValueError(f"latency table lacks blocks {missing[:5]}")
        self.blocks = list(blocks)
        self.table = table
        self.cost = {b: float(table["blocks"][b]) for b in self.blocks}
        self.limit = budget * float(table["full"])
        self.score = score
        self.allow_add_back = allow_add_back
        self.max_candidates = max_candidates
        self.deadline = deadline
        self.removed: list[str] = list(removed)
        self.history: list[dict[str, Any]] = list(history)
        self.values: dict[str, float] = {}
        self.readded: set[str] = {h["block"] for h in self.history if h.get("kind") == "add"}
        self.current_score: float | None = None
        if param_limit is not None and (param_costs is None or param_total is None):
            raise ValueError("a parameter budget needs param_costs and param_total")
        self.param_costs = {b: int((param_costs or {}).get(b, 0)) for b in self.blocks}
        self.param_limit = param_limit
        self.param_total = param_total
        self.measure = measure
        self.measurements: list[dict[str, Any]] = [dict(m) for m in measurements]

    # ------------------------------------------------------------------------ helpers
    def table_latency(self, removed: Sequence[str] | None = None) -> float:
        """The table's latency of the network without ``removed`` (default: the current set)
        and the fixed blocks."""
        return estimate_latency(self.table, self.fixed + list(self.removed if removed is None else removed))

    @property
    def offset(self) -> float:
        """Measured minus table latency of the last measured network (0 before any)."""
        if not self.measurements:
            return 0.0
        m = self.measurements[-1]
        return float(m["ratio"]) * float(self.table["full"]) - self.table_latency(m["removed"])

    def latency(self, removed: Sequence[str] | None = None) -> float:
        """Latency estimate of the network without ``removed`` (default: the current set):
        the table's, plus :attr:`offset` once a network was measured."""
        return self.table_latency(removed) + self.offset

    def params(self, removed: Sequence[str] | None = None) -> int | None:
        """Parameters of the network without ``removed`` (None without a parameter budget)."""
        if self.param_total is None:
            return None
        rem = self.removed if removed is None else removed
        return self.param_total - sum(self.param_costs[b] for b in rem)

    def latency_ok(self, removed: Sequence[str] | None = None) -> bool:
        """Whether the latency budget is met."""
        return self.latency(removed) <= self.limit + 1e-9

    def params_ok(self, removed: Sequence[str] | None = None) -> bool:
        """Whether the parameter budget (if any) is met."""
        n = self.params(removed)
        return n is None or self.param_limit is None or n <= self.param_limit

    def within_budget(self) -> bool:
        """Whether the current network meets the latency (and parameter) budget; with
        ``measure``, a network not measured yet is measured first when the estimate says yes."""
        if not (self.latency_ok() and self.params_ok()):
            return False
        if self.measure is None or any(sorted(m["removed"]) == sorted(self.removed) for m in self.measurements):
            return True
        ratio = self.measure(list(self.removed))
        if ratio is None:  # nothing to measure with: the table alone decides
            self.measure = None
            return True
        table_ratio = self.table_latency() / float(self.table["full"])
        self.measurements.append({"removed": list(self.removed), "ratio": float(ratio),
                                  "table_ratio": table_ratio})
        return self.latency_ok() and self.params_ok()

    def _unit_cost(self, b: str) -> float:
        """What removing ``b`` buys: milliseconds while over the latency budget, else parameters
        (in millions) while over the parameter budget."""
        if not self.latency_ok():
            return self.cost[b]
        return max(self.param_costs[b], 1) / 1e6

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def _now_score(self) -> float:
        if self.current_score is None:
            self.current_score = self.score(frozenset(self.removed))
        return self.current_score

    def invalidate(self) -> None:
        """Forget the current score (after fine-tuning changed the weights)."""
        self.current_score = None

    # ------------------------------------------------------------------------ actions
    def step(self) -> dict[str, Any] | None:
        """Take one action; returns its record, or None when the search is finished."""
        if self.within_budget():
            return self._add_back() if self.allow_add_back else None
        return self._remove()

    def _remove(self) -> dict[str, Any] | None:
        cands = [b for b in self.blocks if b not in self.removed]
        if self.latency_ok() and self.param_limit is not None:  # over the parameter budget only
            cands = [b for b in cands if self.param_costs[b] > 0]
        if not cands:
            raise RuntimeError("every removable block is removed and the budget is still not met")
        cands.sort(key=lambda b: -self._unit_cost(b))
        if self.max_candidates > 0:
            cands = cands[: self.max_candidates]
        if self._out_of_time():
            return self._forced_remove()
        base = self._now_score()
        scores: dict[str, float] = {}
        for b in cands:
            if self._out_of_time():
                break
            scores[b] = self.score(frozenset(self.removed + [b]))
            self.values[b] = (base - scores[b]) / self._unit_cost(b)
        if not scores:
            return self._forced_remove()
        best = min(scores, key=lambda b: (self.values[b], b))
        per = "latency" if not self.latency_ok() else "params"
        rec = {"kind": "remove", "block": best, "value_per_cost": self.values[best], "cost_kind": per,
               "score": scores[best], "score_before": base, "evaluated": len(scores)}
        self.removed.append(best)
        self.current_score = scores[best]
        rec.update(latency=self.latency(), params=self.params())
        self.history.append(rec)
        return rec

    def _forced_remove(self) -> dict[str, Any]:
        cands = [b for b in self.blocks if b not in self.removed]
        if self.latency_ok() and self.param_limit is not None:
            cands = [b for b in cands if self.param_costs[b] > 0]
        if not cands:
            raise RuntimeError("every removable block is removed and the budget is still not met")
        # known values first (smallest harm per unit), then unevaluated blocks by cost
        best = min(cands, key=lambda b: (0, self.values[b], b) if b in self.values
                   else (1, -self._unit_cost(b), b))
        self.removed.append(best)
        self.current_score = None
        rec = {"kind": "remove", "block": best, "forced": True, "value_per_cost": self.values.get(best),
               "latency": self.latency(), "params": self.params(), "evaluated": 0}
        self.history.append(rec)
        return rec

    def _add_back(self) -> dict[str, Any] | None:
        slack = self.limit - self.latency()
        cands = [b for b in self.removed if self.cost[b] <= slack + 1e-9 and b not in self.readded
                 and self.params_ok([x for x in self.removed if x != b])]
        if not cands or self._out_of_time():
            return None
        base = self._now_score()
        best, best_gain, best_score = None, 0.0, base
        for b in cands:
            if self._out_of_time():
                break
            s = self.score(frozenset(x for x in self.removed if x != b))
            gain = (s - base) / self.cost[b]
            if gain > best_gain:
                best, best_gain, best_score = b, gain, s
        if best is None:
            return None
        self.removed.remove(best)
        self.readded.add(best)
        self.current_score = best_score
        rec = {"kind": "add", "block": best, "value_per_cost": best_gain, "cost_kind": "latency",
               "score": best_score, "score_before": base, "latency": self.latency(), "params": self.params(),
               "evaluated": len(cands)}
        self.history.append(rec)
        return rec

    def finish_within_budget(self) -> list[dict[str, Any]]:
        """Forced removals (no evaluation) until the budget is met."""
        recs = []
        while not self.within_budget():
            recs.append(self._forced_remove())
        return recs


def evolution_score(metrics: dict[str, float], fid_weight: float, accuracy_weight: float = 0.0) -> float:
    """``clip_score - fid_weight * fid + accuracy_weight * 100 * accuracy`` (higher is better)."""
    score = metrics["clip_score"] - fid_weight * metrics["fid"]
    if accuracy_weight:
        score += accuracy_weight * 100.0 * metrics["accuracy"]
    return float(score)


def prune_unet(elastic_unet: torch.nn.Module, removed: Sequence[str]) -> torch.nn.Module:
    """A UNet whose config removes ``removed`` (``elastic_blocks``), holding the kept weights."""
    from snapfusion.nn import UNet2DConditionModel, with_blocks_removed

    base = {k: v for k, v in elastic_unet.config.items()}
    return _pruned(elastic_unet, with_blocks_removed(base, list(removed)) if removed else base)


def _pruned(full: torch.nn.Module, cfg: dict[str, Any]) -> torch.nn.Module:
    """A UNet of config ``cfg`` (with ``elastic_blocks``) holding ``full``'s kept weights."""
    from snapfusion.nn import UNet2DConditionModel

    model = UNet2DConditionModel(cfg)
    model.load_pruned_state_dict({k: v.detach().cpu() for k, v in full.state_dict().items()})
    return model


def _check_pruned_of(pruned_cfg: dict[str, Any], full_cfg: dict[str, Any], pruned_name: Any,
                     full_name: Any) -> None:
    """ValueError unless the two UNet configs agree in everything but ``elastic_blocks``."""
    differ = sorted(k for k in set(pruned_cfg) | set(full_cfg)
                    if k != "elastic_blocks" and not k.startswith("_") and pruned_cfg.get(k) != full_cfg.get(k))
    if differ:
        raise ValueError(f"{pruned_name} is not a pruned {full_name}: configs differ in {differ}")


def prune_like(teacher: str | Path, like: str | Path, out: str | Path) -> Path:
    """Write ``like``'s architecture (its ``elastic_blocks``) holding ``teacher``'s weights.

    Rebuilds an evolved student from a teacher trained further after the evolution: the kept
    blocks take the newer teacher's weights, so step distillation starts from what that teacher
    knows rather than from the older student (a student distilled on from its old weights
    barely follows a much better teacher; see docs/training.md).

    Args:
        teacher: full UNet folder.
        like: evolved UNet folder whose config (with ``elastic_blocks``) is kept.
        out: output UNet folder (float32).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: the two configs differ in more than ``elastic_blocks``.
    """
    from snapfusion.nn import UNet2DConditionModel
    from snapfusion.nn.serialization import read_config

    cfg = read_config(like)
    _check_pruned_of(cfg, read_config(teacher), like, teacher)  # before loading any weights
    full = UNet2DConditionModel.from_pretrained(teacher)
    out = Path(out)
    _pruned(full, cfg).save_pretrained(out)
    return out


def evolve(cfg: EvolveRecipeConfig, device: str = "cpu", progress: bool = True,
           world: LatentWorld | None = None, evaluator: Any = None) -> dict[str, Any]:
    """Run architecture evolution; writes ``out/unet`` and ``out/evolution.json`` (resumable:
    the removed set and the action history are checkpointed after every action).

    Args:
        cfg: settings.
        device: "cpu" or "cuda".
        progress: progress bar.
        world: frozen parts to reuse (else built from ``cfg``).
        evaluator: a :class:`~snapfusion.train.evaluate.WorldEvaluator` to reuse (its prompts
            replace ``eval_prompts``/``eval_seed``).

    Returns:
        The summary written to ``evolution.json``.
    """
    from snapfusion.nn import UNet2DConditionModel, block_names

    from .clip import WorldCLIP
    from .evaluate import WorldEvaluator

    for name in ("fid_weight", "accuracy_weight"):  # before loading anything
        w = getattr(cfg, name)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    lcfg = load_config(DiffusionLossConfig, cfg.loss)
    dcfg = load_config(DropConfig, cfg.drop)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(cfg.init).to(env.device)
    unet.check_inputs = False
    init_config = {k: v for k, v in unet.config.items()}
    full_config = {**init_config, "elastic_blocks": None}
    fixed = sorted(set(block_names(full_config)) - set(block_names(init_config)))
    reference = cfg.reference or cfg.init
    if init_config.get("elastic_blocks") is not None and not cfg.reference:
        raise ValueError(f"{cfg.init} is already pruned: set reference to the full UNet it was pruned from "
                         "(latencies are fractions of the full network's)")
    if cfg.reference:
        from snapfusion.nn.serialization import read_config

        ref_config = read_config(cfg.reference)
        if ref_config.get("elastic_blocks") is not None:
            raise ValueError(f"reference {cfg.reference} is pruned itself: it must be the full UNet")
        _check_pruned_of(init_config, ref_config, cfg.init, cfg.reference)
    keep = set(cfg.keep)
    unknown = sorted(keep - set(block_names(full_config)))
    if unknown:
        raise ValueError(f"keep names blocks the UNet does not have: {unknown[:5]}")
    if world is None:  # after the checks: encoding the pool takes minutes
        world = LatentWorld(cfg.tokenizer, cfg.text_encoder, cfg.vae, env, cfg.data, seed=tcfg.seed + 505,
                            bf16=tcfg.bf16, progress=progress)
    text_len = world.tokenizer.model_max_length
    table_path = out / "latency_table.json"
    if cfg.latency_table is None and table_path.is_file():
        table = json.loads(table_path.read_text())
    else:
        table = get_table(full_config, text_len=text_len, batch=2, path=cfg.latency_table,
                          measure=cfg.measure_latency, threads=cfg.latency_threads,
                          progress=progress and env.is_main)
        if env.is_main:
            table_path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    teacher = None
    if cfg.kd_weight > 0:
        teacher = freeze(UNet2DConditionModel.from_pretrained(cfg.init).to(env.device))
        teacher.check_inputs = False
    if evaluator is None:
        evaluator = WorldEvaluator(WorldCLIP.load(cfg.clip), world.tokenizer, env.device,
                                   n_prompts=cfg.eval_prompts, seed=cfg.eval_seed, ref_images=cfg.ref_images,
                                   image_size=world.data.size)
    state: dict[str, Any] = {"removed": [], "history": [], "done": False, "measurements": []}
    trainer = Trainer("evolve", out, unet, tcfg, env, find_unused_parameters=True, progress=False,
                      extra_state=(lambda: json.loads(json.dumps(state)), lambda s: state.update(s)))
    trainer.maybe_resume()
    budget_s = 60.0 * tcfg.max_minutes if tcfg.max_minutes > 0 else math.inf
    spent_before = trainer.elapsed_before
    # leave ~25 % of the stage for the final save and the latency check
    deadline = t_start + max(0.0, 0.75 * budget_s - spent_before) if math.isfinite(budget_s) else None
    n_evals = [0]

    def score(removed: frozenset[str]) -> float:
        unet.train()
        unet.set_block_drop(probs={b: 1.0 for b in removed})
        images = world.generate(unet, evaluator.prompts, steps=cfg.eval_steps, guidance=cfg.guidance,
                                seed=cfg.eval_seed)
        m = evaluator.evaluate(images, accuracy=cfg.accuracy_weight > 0)
        n_evals[0] += 1
        return evolution_score(m, cfg.fid_weight, cfg.accuracy_weight)

    names = [b for b in block_names(init_config) if b not in keep]
    param_costs = {b: sum(p.numel() for n, p in unet.named_parameters() if n.startswith(b + "."))
                   for b in names}
    param_total = sum(p.numel() for p in unet.parameters())
    engine_budget = cfg.engine_budget
    if engine_budget is None:
        engine_budget = table.get("method") == "engine-regression" and engine_available()

    def measure(removed: Sequence[str]) -> float | None:
        ratio = None
        if env.is_main:
            with tempfile.TemporaryDirectory() as tmp:
                prune_unet(unet, removed).save_pretrained(tmp)
                res = _engine_latency(reference, tmp, text_len, cfg.latency_threads)["engine_latency"]
            ratio = None if res is None else res["ratio"]
        if env.distributed:  # every rank takes the same decision
            box = [ratio]
            torch.distributed.broadcast_object_list(box, 0)
            ratio = box[0]
        return ratio

    search = EvolutionSearch(names, table, cfg.budget, score, cfg.allow_add_back, cfg.max_candidates, deadline,
                             state["removed"], state["history"], param_costs=param_costs,
                             param_limit=cfg.max_params if cfg.max_params > 0 else None,
                             param_total=param_total, measure=measure if engine_budget else None,
                             measurements=state["measurements"], fixed=fixed)
    if state["done"] and not search.within_budget():
        # a finished search resumed with a tighter budget continues from its network
        state["done"] = False
    log = JsonlLogger(out / "actions.jsonl" if env.is_main else None)

    def sync_state(done: bool = False) -> None:  # what the checkpoint keeps of the search
        state.update(removed=list(search.removed), history=list(search.history),
                     measurements=list(search.measurements), done=done)

    def ft_step(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        z0, ids = world.batch(step, tcfg.batch_size)
        return diffusion_loss(trainer.ddp_model, world, z0, ids, step, tcfg.seed, lcfg, teacher, cfg.kd_weight,
                              drop_generator=drop_generator(tcfg.seed, step))

    bar = None
    if progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(desc="evolve", dynamic_ncols=True, initial=len(state["history"]),
                   total=None, mininterval=1.0)
    try:
        while not state["done"]:
            if len(search.history) >= cfg.max_actions:
                break
            rec = search.step()
            if rec is None:
                break
            if rec.get("forced") or search._out_of_time():  # no time left: no fine-tuning
                pass
            elif cfg.finetune_steps > 0:
                unet.set_block_drop(dcfg.resnet_p, dcfg.attention_p,
                                    probs={**dcfg.probs, **{b: 1.0 for b in search.removed}})
                ft = trainer.train_steps(ft_step, cfg.finetune_steps)
                search.invalidate()
                if ft is not None:
                    rec["finetune_loss"] = ft["loss"]
            _ratios(rec, search, trainer.step)
            log.log(rec)
            sync_state()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ratio=f"{rec['ratio']:.3f}", last=f"{rec['kind']} {rec['block']}")
            if env.is_main:
                trainer.save()
        for rec in search.finish_within_budget():
            _ratios(rec, search, trainer.step)
            log.log(rec)
        sync_state(done=True)
        if env.is_main:
            trainer.save()
    finally:
        if bar is not None:
            bar.close()
    unet.set_block_drop()
    pruned = prune_unet(unet, search.removed)
    table_estimate = search.table_latency()
    summary: dict[str, Any] = {
        "removed": fixed + list(search.removed),
        "removed_before": fixed,
        "actions": len(search.history),
        "forced_actions": sum(1 for h in search.history if h.get("forced")),
        "evaluations": n_evals[0],
        "table_method": table.get("method"),
        "table_unit": table.get("unit"),
        "table_full": float(table["full"]),
        "table_estimate": table_estimate,
        "table_ratio": table_estimate / float(table["full"]),
        "engine_budget": bool(search.measurements),
        "estimate_ratio": search.latency() / float(table["full"]),
        "measurements": search.measurements,
        "budget": cfg.budget,
        "max_params": cfg.max_params,
        "params_full": sum(p.numel() for p in unet.parameters()),  # of the start (init) network
        "params_pruned": sum(p.numel() for p in pruned.parameters()),
        "finetune_steps_total": trainer.step,
    }
    if env.is_main:
        pruned.save_pretrained(out / "unet")
        with torch.no_grad():
            pruned = pruned.to(env.device).eval()
            pruned.check_inputs = False
            img = world.generate(pruned, evaluator.prompts, steps=cfg.eval_steps, guidance=cfg.guidance,
                                 seed=cfg.eval_seed)
            summary["final_eval"] = evaluator.evaluate(img, accuracy=True)
            img = world.generate(teacher if teacher is not None else unet.eval(), evaluator.prompts,
                                 steps=cfg.eval_steps, guidance=cfg.guidance, seed=cfg.eval_seed)
            summary["start_eval"] = evaluator.evaluate(img, accuracy=True)
        summary.update(_engine_latency(reference, out / "unet", text_len, cfg.latency_threads))
        (out / "evolution.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
    return summary


def _ratios(rec: dict[str, Any], search: EvolutionSearch, step: int) -> None:
    """Add the step, the table's ratio and the estimate's (with the measured offset) to ``rec``."""
    full = float(search.table["full"])
    rec.update(step=step, table_ratio=search.table_latency() / full, ratio=search.latency() / full)


def _engine_latency(full_dir: str | Path, pruned_dir: str | Path, text_len: int, threads: int) -> dict[str, Any]:
    """Measured engine latency of the full and the pruned UNet (empty without the engine)."""
    try:
        from snapfusion import _engine
    except ImportError:
        return {"engine_latency": None}
    from .latency import _EngineCall

    old = _engine.get_num_threads()
    _engine.set_num_threads(threads)
    try:
        a, b = _EngineCall(full_dir, 2, text_len), _EngineCall(pruned_dir, 2, text_len)
        a(), b()
        full, pruned = float("inf"), float("inf")
        for _ in range(15):  # alternate calls: load on the machine hits both alike
            full, pruned = min(full, a()), min(pruned, b())
    finally:
        _engine.set_num_threads(old)
    return {"engine_latency": {"full_ms": 1e3 * full, "pruned_ms": 1e3 * pruned, "ratio": pruned / full,
                               "threads": threads, "batch": 2}}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train evolve --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train evolve")
    p.add_argument("--config", required=True, help="JSON of EvolveRecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(evolve(load_config(EvolveRecipeConfig, args.config), args.device)))
    return 0
