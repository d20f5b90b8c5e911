"""Settings: a campaign's run config (read alike by the coordinator and every node) and the TOML files shipped with edgebind.

``CampaignConfig`` is the one place a run-config key is named, typed, given
its default and checked; the learning settings it hands out (``align()``,
``head()``, ...) are built from it and nowhere else. Scenarios and growth plans
are TOML, shipped in ``simulations/`` or given by path.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # the learning modules import this one; theirs are imported where used
    from common.binding import PairWeighting
    from common.evaluate import HeadConfig, LocalFinetuneConfig
    from common.mmbind import AlignConfig
    from common.pretrain import PretrainConfig


def shipped(folder: str) -> list[str]:
    """Names of the ``.toml`` files shipped in ``simulations/<folder>``."""
    root = resources.files("simulations") / folder
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


class ConfigError(ValueError):
    """A settings file or table that cannot be used, with the file, the key and what was expected."""


def load_toml(folder: str, what: str, name_or_path: str | Path) -> tuple[dict, str]:
    """A shipped ``<what>`` by name (from ``simulations/<folder>``) or a ``.toml`` file by path; returns (table, name)."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.exists():
            raise FileNotFoundError(f"{what} file {path} does not exist")
        text, name, where = path.read_text(), path.stem, str(path)
    else:
        name = str(name_or_path)
        res = resources.files("simulations") / folder / f"{name}.toml"
        if not res.is_file():
            raise ConfigError(f"no shipped {what} {name!r}; shipped: {', '.join(shipped(folder)) or 'none'}")
        text, where = res.read_text(), f"shipped {what} {name!r}"
    try:
        return tomllib.loads(text), name
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e})") from None


def typed(table: Mapping[str, Any], cls: type, where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``table`` checked against the dataclass ``cls``: no unknown key, each value of its field's type; ConfigError naming both otherwise.

    Knows the annotations settings use: ``str``, ``int``, ``float`` (an int is
    taken), ``bool``, ``list[str]``, ``list[int]``, each optionally ``| None``.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    ann = {f.name: str(f.type) for f in fields(cls) if f.name not in exclude}
    unknown = sorted(set(table) - set(ann))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {', '.join(sorted(ann))}")
    for key, value in table.items():
        if not _fits(value, ann[key]):
            raise ConfigError(f"{where}: {key!r} must be {ann[key]}, got {value!r}")
    required = [f.name for f in fields(cls) if f.name in ann and f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in table]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return dict(table)


def _fits(value: Any, annotation: str) -> bool:
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        return "None" in kinds
    for k in kinds:
        if k == "str" and isinstance(value, str):
            return True
        if k == "bool" and isinstance(value, bool):
            return True
        if k == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if k.startswith("list[") and isinstance(value, list):
            inner = k[5:-1]
            return all(_fits(v, inner) for v in value)
    return False


# --- a campaign's run config ----------------------------------------------------------------

FINETUNE_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg")
PRETRAIN_STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg")  # robust ones: a few hostile or broken nodes cannot drag the average


@dataclass
class CampaignConfig:
    """One campaign's settings: the flat kebab-case keys of ``[tool.flwr.app.config]``.

    ``quick`` replaces the schedule (rounds and epochs) with a small one for
    tests and smoke runs, the same as the central experiments' ``--quick``.
    Timeouts are seconds; 0 for ``expected-nodes`` means "whoever is there
    when discovery ends".
    """

    dataset: str = "hapt"
    scenario: str = "sensor-bind"
    seed: int = 0
    quick: bool = False
    campaign_id: str = ""
    resume: bool = False  # continue campaign-id from its store and checkpoints: finished pretraining rounds, uploads and stages are not repeated
    results_path: str = ""
    store: str = ""
    state_dir: str = ""
    device: str = ""
    coordinator_threads: int = 0
    # fleet
    expected_nodes: int = 0
    min_nodes: int = 1
    discovery_timeout: float = 60.0
    round_timeout: float = 600.0
    max_windows_per_group: int = 0
    dropout: float = 0.0
    dropout_mode: str = "raise"
    client_threads: int = 1
    # schedule
    pretrain_objective: str = ""  # "": the scenario's own (chosen on its validation), else contrastive; see ``objective_for``
    pretrain_rounds: int = 5  # x local-epochs = the central experiments' 20 pretraining epochs
    local_epochs: int = 4
    pretrain_batch_size: int = 128
    pretrain_lr: float = 2e-3
    pretrain_strategy: str = "fedavg"  # how the rounds' encoders are aggregated: fedavg, fedmedian or fedtrimmedavg
    align_epochs: int = 30
    align_batch_size: int = 256
    align_lr: float = 1e-3
    align_temperature: float = 0.1
    head_mode: str = "finetune"
    head_steps: int = 400
    head_finetune_steps: int = 300
    head_self_train_steps: int = 300  # then on the unlabelled uploads the chosen head labels surely (0: off); kept only where validation gains
    head_self_train_threshold: float = 0.8  # a pseudo-label's least confidence (chosen on sensor-bind's validation subjects)
    head_self_train_rounds: int = 3  # each round relabels with the best head so far
    head_soup: int = 0  # > 1: the head is a greedy soup of its checkpoints best on validation, this many (0: off)
    # federated fine-tuning (after the head): labelled nodes train encoders and adapters end to end (the head too if finetune-head-lr > 0)
    finetune_rounds: int = 10  # 0 = the coordinator's head on features is the final model
    finetune_steps: int = 10  # local steps per round (batches of a node's labelled windows, augmented); few: nodes hold one or two activities
    finetune_batch_size: int = 64
    finetune_lr: float = 3e-4  # local rate of encoders and adapters; the head's is finetune-head-lr
    finetune_head_lr: float = 0.0  # 0 = the head on features stays fixed while the towers learn to serve it (FedBABU; best on fleet validation)
    finetune_fraction: float = 1.0  # share of the labelled training nodes drawn (seeded) for each round
    finetune_strategy: str = "fedavg"  # fedavg, fedprox, fedadam, fedyogi, fedmedian or fedtrimmedavg (Flower's strategy classes)
    finetune_mu: float = 0.01  # FedProx's proximal weight (fedprox only)
    finetune_server_lr: float = 0.01  # FedAdam/FedYogi's server learning rate (eta)
    trim_fraction: float = 0.2  # FedTrimmedAvg's beta: the share of the highest and of the lowest values cut, per coordinate
    # binding
    bind_k: int = 1
    pair_rule: str = "linear"
    pair_threshold: float = 0.5
    pair_w_min: float = 0.1
    label_pairs_per_sample: int = 4
    pseudo_share: float = 0.0  # pseudo-pairs' views at most this many per natural sample's view in MMBind's alignment (seeded draw); 0 = all
    embedding_dtype: str = "float16"
    collect_wave: int = 64  # nodes asked for their uploads at once; each wave is stored before the next, so memory is bounded by a wave
    growth_plan: str = ""  # a Babel GrowthPlan (shipped name or .toml) instead of MMBind's one stage
    # signing
    signing_key: str = ""  # hex; for a simulation (one process, no network): a deployment gives signing_key_file
    signing_key_file: str = ""  # a 0600 file holding the private key (edgebind-coordinator keygen), read by the ServerApp
    signing_key_id: str = ""

    # The one quick schedule (tests, smoke runs, the experiments' --quick); it replaces what the run config says.
    QUICK = {"pretrain_rounds": 2, "local_epochs": 1, "align_epochs": 4, "head_steps": 60, "head_finetune_steps": 40, "head_self_train_steps": 40,
             "finetune_rounds": 2, "finetune_steps": 20}  # fmt: skip
    QUICK_MAX_WINDOWS = 160  # windows per group a simulated node keeps under quick, unless max-windows-per-group says otherwise

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> CampaignConfig:
        """From a Flower run config; unknown keys are an error, missing keys take the defaults."""
        known = {f.name: f for f in fields(cls)}
        args = {}
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown run config key {key!r}; known: {', '.join(cls.keys())}")
            default = known[name].default
            args[name] = _coerce(key, value, type(default))
        cfg = cls(**args)
        if cfg.quick:
            for k, v in cls.QUICK.items():
                setattr(cfg, k, v)
        cfg.check()
        return cfg

    def objective_for(self, scenario_objective: str) -> str:
        """The pretraining objective a campaign runs: the run config's if it names one, else the scenario's, else contrastive."""
        return self.pretrain_objective or scenario_objective or "contrastive"

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def check(self) -> None:
        if self.pretrain_rounds < 0 or self.local_epochs < 1:
            raise ValueError("pretrain-rounds must be >= 0 and local-epochs >= 1")
        if self.discovery_timeout <= 0 or self.round_timeout <= 0:
            raise ValueError("discovery-timeout and round-timeout must be positive: every wait is bounded")
        if self.dropout_mode not in ("raise", "stall"):
            raise ValueError(f"dropout-mode must be 'raise' or 'stall', got {self.dropout_mode!r}")
        if not math.isfinite(self.pseudo_share) or self.pseudo_share < 0:
            raise ValueError(f"pseudo-share must be a finite number >= 0 (0: every pseudo-pair), got {self.pseudo_share}")
        if self.collect_wave < 1:
            raise ValueError(f"collect-wave must be >= 1 (nodes asked for uploads at once), got {self.collect_wave}")
        if self.embedding_dtype not in ("float16", "float32", "int8"):
            raise ValueError(f"embedding-dtype must be float16, float32 or int8, got {self.embedding_dtype!r}")
        if self.finetune_strategy not in FINETUNE_STRATEGIES:
            raise ValueError(f"finetune-strategy must be one of {', '.join(FINETUNE_STRATEGIES)}, got {self.finetune_strategy!r}")
        if self.finetune_rounds < 0 or self.finetune_steps < 1 or self.finetune_batch_size < 1:
            raise ValueError("finetune-rounds must be >= 0, finetune-steps and finetune-batch-size >= 1")
        if self.pretrain_strategy not in PRETRAIN_STRATEGIES:
            raise ValueError(f"pretrain-strategy must be one of {', '.join(PRETRAIN_STRATEGIES)}, got {self.pretrain_strategy!r}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        if not (self.finetune_mu >= 0 and self.finetune_server_lr > 0):
            raise ValueError("finetune-mu must be >= 0 and finetune-server-lr > 0")
        if not (self.finetune_lr > 0 and self.finetune_head_lr >= 0):
            raise ValueError(f"finetune-lr must be > 0 and finetune-head-lr >= 0 (0 = the head stays fixed), got {self.finetune_lr} and {self.finetune_head_lr}")
        if not 0 < self.finetune_fraction <= 1:
            raise ValueError(f"finetune-fraction must be in (0, 1], got {self.finetune_fraction}")
        self.weighting()  # checks the pair settings
        self.pretrain()
        self.head()

    def window_cap(self) -> int:
        """Windows per group a simulated node keeps (0: all)."""
        return self.max_windows_per_group or (self.QUICK_MAX_WINDOWS if self.quick else 0)

    def local_finetune(self) -> LocalFinetuneConfig:
        from common.evaluate import LocalFinetuneConfig

        return LocalFinetuneConfig(steps=self.finetune_steps, batch_size=self.finetune_batch_size, head_lr=self.finetune_head_lr,
                                   tower_lr=self.finetune_lr, encoder_lr=self.finetune_lr,
                                   proximal_mu=self.finetune_mu if self.finetune_strategy == "fedprox" else 0.0)  # fmt: skip

    def pretrain(self) -> PretrainConfig:
        from common.pretrain import PretrainConfig

        return PretrainConfig(objective=self.objective_for(""), epochs=self.local_epochs, batch_size=self.pretrain_batch_size, lr=self.pretrain_lr)

    def align(self) -> AlignConfig:
        from common.mmbind import AlignConfig

        return AlignConfig(epochs=self.align_epochs, batch_size=self.align_batch_size, lr=self.align_lr, temperature=self.align_temperature,
                           pseudo_share=self.pseudo_share)  # fmt: skip

    def head(self) -> HeadConfig:
        from common.evaluate import HeadConfig

        return HeadConfig(mode=self.head_mode, steps=self.head_steps, finetune_steps=self.head_finetune_steps,
                          self_train_steps=self.head_self_train_steps, self_train_threshold=self.head_self_train_threshold,
                          self_train_rounds=self.head_self_train_rounds, soup=self.head_soup)  # fmt: skip

    def weighting(self) -> PairWeighting:
        from common.binding import PairWeighting

        return PairWeighting(rule=self.pair_rule, threshold=self.pair_threshold, w_min=self.pair_w_min)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ValueError(f"run config {key!r} must be true or false, got {value!r}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"run config {key!r} must be {kind.__name__}, got {value!r}")
