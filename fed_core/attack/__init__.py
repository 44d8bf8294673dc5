"""What a server can read from the workers' updates, and what stops it.

* :mod:`.curious`: a curious server inverts one worker's update (:mod:`.inversion` for one image,
  :mod:`.batch` for several images and local steps);
* :mod:`.imprint`: a malicious server edits the model it sends and reads images back exactly, even from a
  securely aggregated sum;
* :mod:`.scores`: PSNR, SSIM and the matching of rebuilt images to real ones.
"""

from fed_core.attack.batch import FeatureDecomposition
from fed_core.attack.curious import reconstruct
from fed_core.attack.imprint import (
    BINS,
    ImprintedModel,
    MaliciousRound,
    check_received_model,
    imprint_model,
    recover,
    rob,
    round_move_bound,
    stage_malicious_round,
)
from fed_core.attack.inversion import (
    DEFENCES,
    MAX_IMAGES,
    AttackOptions,
    AttackResult,
    GradientMatcher,
    ObservedUpdate,
    SquareCNNInversion,
    StagedUpdate,
    infer_labels,
    label_counts,
    make_update,
    observe,
    simulate_update,
    stage_update,
    with_local_steps,
    worker_examples,
)
from fed_core.attack.scores import READABLE_DB, match_images, psnr, scores, ssim, time_to_psnr, to_pixels

__all__ = [
    "BINS",
    "DEFENCES",
    "MAX_IMAGES",
    "READABLE_DB",
    "AttackOptions",
    "AttackResult",
    "FeatureDecomposition",
    "GradientMatcher",
    "ImprintedModel",
    "MaliciousRound",
    "ObservedUpdate",
    "SquareCNNInversion",
    "StagedUpdate",
    "check_received_model",
    "imprint_model",
    "infer_labels",
    "label_counts",
    "make_update",
    "match_images",
    "observe",
    "psnr",
    "reconstruct",
    "recover",
    "rob",
    "round_move_bound",
    "scores",
    "simulate_update",
    "ssim",
    "stage_malicious_round",
    "stage_update",
    "time_to_psnr",
    "to_pixels",
    "with_local_steps",
    "worker_examples",
]
