"""A malicious server: it edits the model it sends so that each image's gradient can be read back exactly.

"Robbing the Fed" (Fowl et al., ICLR 2022). The server puts an *imprint block* in front of the agreed model:
a linear layer of ``bins`` rows that all measure the same statistic of the image (its mean normalised pixel,
s(x) = m . x), with biases at the quantiles c_1 < ... < c_k of that statistic over public digits, a ReLU,
and a layer that adds the result back onto the image (every column the same vector v), so the model still
sees a digit. Row i fires for every image with s(x) > c_i, and the gradient reaching row i from image n is
the same number g_n for every row it fires (v . dL/dinput). Hence, for the update of one local step:

    weight gradient of row i = sum over images with s(x_n) > c_i of g_n x_n,  bias gradient = sum of g_n,

and the difference between rows i and i + 1 holds only the images whose statistic lies in (c_i, c_{i+1}]:
with exactly one image there, weight difference / bias difference = that image, to float precision.
Every factor common to an update (learning rate, batch mean, gradient clip) cancels in the ratio, and a sum
of updates is still a sum over images of the same form. So secure aggregation, which hands the server exactly
that sum, does not stop the attack: only bins holding two images are lost (about N^2 / 2k of N images).

What stops it is noise the server cannot remove: example-level DP-SGD inside each worker (fed_core.privacy.dp's
noise through the app's own trainer). Client-level DP-FedAvg does not, in this app or in general: it is the
server that adds that noise, and a malicious server simply does not. A worker can also look at the model it
is sent (:func:`check_received_model`): the imprint adds layers the agreed architecture does not have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from fed_core.attack.inversion import DEFENCES, AttackResult, Progress, with_local_steps, worker_examples
from fed_core.attack.scores import mean_psnr, scores, to_pixels
from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist, normalize
from fed_core.federation.trainer import BatchedTrainer, worker_seed
from fed_core.models import build_model, new_model
from fed_core.privacy.secagg import secure_sum
from fed_core.vocabulary import LocalSettings, Params, flatten, model_params, unflatten

BINS = 1024  # rows of the imprint: about N^2 / 2048 of N images share a bin (3 of 80)
MEASUREMENT_SCALE = 0.01  # the rows measure 0.01 s(x): small, so the block barely changes what the model sees
BACK_SCALE = 10.0  # |v|: large, so the imprint's gradient dominates the update and survives fixed-point rounding
EMPTY_BIN = 1e-3  # a bin whose bias difference is below this share of the largest holds no image


class ImprintedModel(nn.Module):
    """The agreed model behind an imprint block: x -> base(x + v * sum_i relu(m . x - c_i))."""

    def __init__(self, base: nn.Module, bins: int = BINS) -> None:
        super().__init__()
        self.imprint = nn.Linear(28 * 28, bins)
        self.back = nn.Linear(bins, 28 * 28, bias=False)
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.base((flat + self.back(F.relu(self.imprint(flat)))).view_as(x))


def imprint_model(base: nn.Module, public: torch.Tensor, bins: int = BINS, seed: int = 0) -> ImprintedModel:
    """The model the malicious server sends: ``base`` (this round's global model) behind an imprint block.

    The thresholds are quantiles of the statistic over ``public`` images (uint8), so each bin is about equally
    likely to catch a worker's image; ``seed`` draws the direction of v (a simulation choice, not a secret).
    """
    model = ImprintedModel(base, bins)
    statistic = normalize(public).flatten(1).mean(1)
    thresholds = torch.quantile(statistic, torch.linspace(0, 1, bins + 2)[1:-1])
    direction = torch.randn(28 * 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.imprint.weight.fill_(MEASUREMENT_SCALE / (28 * 28))
        model.imprint.bias.copy_(-MEASUREMENT_SCALE * thresholds)
        model.back.weight.copy_((BACK_SCALE * direction / direction.norm()).unsqueeze(1).expand(-1, bins))
    return model


def recover(model: ImprintedModel, update: torch.Tensor, most: int) -> torch.Tensor:
    """The images the imprint separated in ``update`` (flat, the model's layout): normalised [M, 1, 28, 28].

    Works on one worker's update and on any (weighted) sum of updates alike. A bin holding two or more images
    gives their weighted mean: the server cannot tell, so it is returned too. At most ``most`` images (the
    server knows how many examples an update or a secure sum holds): the bins with the largest bias steps,
    which under noise are the ones most likely to hold an image.
    """
    grads = unflatten(update.double(), {name: p.double() for name, p in model_params(model).items()})
    weights, biases = grads["imprint.weight"], grads["imprint.bias"]
    weight_steps = weights - torch.cat([weights[1:], torch.zeros_like(weights[:1])])
    bias_steps = biases - torch.cat([biases[1:], torch.zeros_like(biases[:1])])
    size = bias_steps.abs()
    largest = size.topk(min(most, len(size))).indices
    full = largest[size[largest] > EMPTY_BIN * size.max().clamp(min=1e-300)]
    return (weight_steps[full] / bias_steps[full, None]).float().view(-1, 1, 28, 28)


# ----------------------------------------------------------------------------- what a worker can check


def round_move_bound(settings: LocalSettings, max_steps: int, server_lr: float = 1.0) -> float:
    """How far one honest FedAvg round can move the global weights (L2).

    Every local step is clipped to ``settings.clip_norm``, momentum m adds at most a factor 1 / (1 - m), and
    the aggregate is an average of the workers' moves: server_lr * lr * clip * steps / (1 - m), with
    ``max_steps`` the most local steps any worker takes (public: epochs x batches of the largest shard).
    """
    return server_lr * settings.lr * settings.clip_norm * max_steps / (1 - settings.momentum)


def check_received_model(
    expected_model: str, received: Params, previous: torch.Tensor | None = None, max_move: float | None = None
) -> list[str]:
    """Why a careful worker should refuse the model it was sent (empty: nothing wrong found).

    * the architecture: the parameters' names and shapes must be those of the agreed model;
    * given the previous round's global weights and :func:`round_move_bound`: the weights must not have moved
      further than one round can move them. Trap weights set by hand in the agreed layers (Boenisch et al.
      2023) move them much further. This needs a worker that took part before (or a public checkpoint) and
      plain SGD: under DP-SGD the noise makes honest moves unbounded, and a server that changes its weights
      slowly over many rounds stays within the bound.
    """
    agreed = {name: tuple(p.shape) for name, p in model_params(build_model(expected_model)).items()}
    shapes = {name: tuple(p.shape) for name, p in received.items()}
    problems = []
    extra = [f"{name} {list(shape)}" for name, shape in shapes.items() if name not in agreed]
    wrong = [name for name, shape in agreed.items() if shapes.get(name) != shape]
    if extra or wrong:
        problems.append(
            f"its parameters are not those of the agreed {expected_model}: {len(extra)} unexpected "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}), {len(wrong)} missing or reshaped"
        )
    if previous is not None and max_move is not None and not problems:
        moved = (flatten(received) - previous).norm().item()
        if moved > max_move:
            problems.append(
                f"its weights moved by {moved:.3g} since the last round; one round moves them {max_move:.3g} at most"
            )
    return problems


# ----------------------------------------------------------------------------- one malicious round


@dataclass(frozen=True)
class MaliciousRound:
    """A round in which the server sent ``model`` to ``workers`` workers holding ``count`` images each."""

    model: ImprintedModel
    images: torch.Tensor  # uint8 [workers * count, 28, 28]: every sampled worker's images, worker by worker
    labels: torch.Tensor
    observed: list[torch.Tensor]  # what the server decodes: each worker's update, or the one secure sum
    defence: str
    settings: LocalSettings


def dp_settings(settings: LocalSettings, clip: float, noise_multiplier: float) -> LocalSettings:
    """The worker's settings with example-level DP-SGD: each example's gradient clipped to ``clip``, plus noise."""
    return replace(settings, dp_clip=clip, dp_noise=noise_multiplier)


def stage_malicious_round(
    config: TrainConfig,
    data: Mnist,
    count: int,
    local_steps: int = 1,
    defence: str = "none",
    bins: int = BINS,
) -> MaliciousRound:
    """Round 1 of the federation ``config``: the server sends an imprinted model, every worker trains on its first
    ``count`` images with the app's own trainer, and the server receives what ``defence`` lets through.

    DP ("dp", "both") is the app's example-level DP-SGD with the federation's ``dp_clip`` and ``dp_noise``.
    """
    if defence not in DEFENCES:
        raise ValueError(f"Unknown defence {defence!r}; choose one of {', '.join(DEFENCES)}.")
    held = [worker_examples(config, data, worker, count) for worker in range(config.workers)]
    images, labels = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
    model = imprint_model(new_model(config.model, config.init, config.seed), data.test_images, bins, config.seed)
    settings = with_local_steps(config.local, count, local_steps)
    if defence in ("dp", "both"):
        settings = dp_settings(settings, config.dp_clip, config.dp_noise)
    shards = list(torch.arange(len(images)).split(count))
    seeds = [worker_seed(config.seed, 1, worker) for worker in range(config.workers)]
    global_vector = flatten(model_params(model))
    trainer = BatchedTrainer(model, images, labels, settings)
    deltas = [u.delta for u in trainer.train(global_vector, list(range(config.workers)), shards, seeds)]
    if defence in ("secure-agg", "both"):
        observed = [secure_sum(torch.stack(deltas), [count] * config.workers).weighted_sum.float()]
    else:
        observed = deltas
    return MaliciousRound(model, images, labels, observed, defence, settings)


def rob(staged: MaliciousRound, progress: Progress | None = None, expected_model: str = "crypto_cnn") -> AttackResult:
    """The malicious server reads every image it can out of what it received, scored against the true images."""
    started = time.perf_counter()
    truth = staged.images.float() / 255
    found: list[torch.Tensor] = []
    history = []
    per_vector = len(truth) // len(staged.observed)  # each worker's count, or all of them in the secure sum
    for step, vector in enumerate(staged.observed, start=1):
        found.append(to_pixels(recover(staged.model, vector, per_vector)))
        images = torch.cat(found)
        entry = {"step": step, "seconds": time.perf_counter() - started, "psnr": mean_psnr(images, truth)}
        history.append(entry)
        if progress:
            progress(step, len(staged.observed), images, entry)
    images = torch.cat(found)
    result = AttackResult(images, [], "imprint (Fowl et al. 2022)", time.perf_counter() - started, history)
    result.matched, result.psnr, result.ssim = scores(images, truth)
    result.worker_check = check_received_model(expected_model, model_params(staged.model))
    return result
