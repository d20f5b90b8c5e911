"""Babel's expandable alignment: grow one embedding space modality by modality.

A ``GrowthPlan`` is an ordered list of binary stages. Stage 1 aligns two
modalities (the trunk) on data that pairs them; each later stage aligns a new
*branch* modality to a *connecting* modality already in the trunk. A stage
trains only the two towers' adapters and the shared prototype network, on
encoder *features* (what nodes upload; encoders stay frozen on the nodes), with
symmetric InfoNCE weighted per batch by the inverse gradient norm of each
direction. During growth the prototype is an exponential moving average of its
trained weights, and a distillation term keeps the trunk's embeddings close to
the previous stage's frozen model, so earlier stages are not forgotten.

Nothing here touches files except the optional per-stage checkpoints.
"""


from common.growth.checkpoints import encoder_digest, latest_checkpoint, load_checkpoint, save_checkpoint
from common.growth.plan import STAGE_KINDS, GrowthConfig, GrowthPlan, PairData, Stage, StageRecord, base_modality, shipped_plans
from common.growth.trainer import GrowthResult, StageTrainer, grow

__all__ = [
    "STAGE_KINDS", "GrowthConfig", "GrowthPlan", "GrowthResult", "PairData", "Stage", "StageRecord", "StageTrainer", "base_modality",
    "encoder_digest", "grow", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "shipped_plans",
]  # fmt: skip
