"""What a curious server can read from one worker's update: gradient inversion against the app's models.

The server of a federated round holds, for each worker, the global weights it sent, the update that came
back (local model minus global model), the worker's example count and the public local settings (learning
rate, momentum, gradient clip, epochs, batch size). ``curious.reconstruct`` takes exactly that
(:class:`ObservedUpdate`) and looks for images whose update matches it with the pieces defined here:

* labels first, as iDLG (Zhao et al. 2020): the last layer's bias gradient is softmax minus one-hot, so the
  true class is the one entry of the other sign; a batch's label counts from the same gradient and the mean
  softmax over public digits (:func:`label_counts`);
* gradient matching as in DLG (Zhu et al. 2019) with the cosine loss and total variation of "Inverting
  Gradients" (Geiping et al. 2020): the worker's local training is replayed on candidate images
  (:func:`simulate_update`, differentiable) and the candidates are moved until the replayed update points the
  way the observed one does. Cosine is blind to scale, so clipping and the learning rate need not be undone.

Plain gradient matching stalls far from the image on ``crypto_cnn`` (about 7-13 dB): the square activation
hides the sign of every convolution output, and each of the 512 signs is a separate basin. For a single image
trained for one local step the attack therefore starts from :class:`SquareCNNInversion`, which reads the
layers in closed form and settles the signs with a prior from public digits (the MNIST test set, never a
worker's training image) and a few convex solves; gradient matching then polishes the result. Several images
or local steps: batch.py.

The defences are met as the server meets them (:func:`observe`): under secure aggregation the worker's
masked vector from fed_core.privacy.secagg (uniformly random in the 64-bit ring), under DP the update clipped plus
Gaussian noise from fed_core.privacy.dp's CSPRNG, under both the noisy update masked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fed_core.attack.scores import mean_psnr, to_pixels
from fed_core.config import TrainConfig
from fed_core.data.mnist import MEAN, STD, Mnist, normalize
from fed_core.engines import engine_for
from fed_core.federation.server import partition_for
from fed_core.federation.trainer import BatchedTrainer, worker_seed
from fed_core.models import CryptoCNN, new_model
from fed_core.privacy.dp import SecureRandom, clip_rows
from fed_core.privacy.secagg import MIN_SURVIVORS, secure_sum
from fed_core.vocabulary import LocalSettings, Params, WorkerUpdate, flatten, model_params, unflatten

LOW, HIGH = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD  # the valid pixel range after normalisation
DEFENCES = ("none", "secure-agg", "dp", "both")
MAX_IMAGES = 64  # images one attacked worker holds (the page's and the CLI's limit)
FRACTION_BITS = 16  # fixed-point scale 2**16 in the 64-bit ring, as a secure-aggregation encoder would use
SOLVED_MISMATCH = 1e-4  # 1 - cosine below which the square-CNN inversion stops trying priors (about 40 dB)
Progress = Callable[[int, int, torch.Tensor, dict], None]


@dataclass(frozen=True)
class ObservedUpdate:
    """Everything the server holds about one worker's round; nothing else reaches the attack."""

    model: str
    global_vector: torch.Tensor  # flat float32 [P]: the weights the server sent
    update: torch.Tensor  # flat [P]: what came back, after any defence, decoded as the server would
    num_examples: int
    settings: LocalSettings

    @property
    def local_steps(self) -> int:
        return self.settings.epochs * -(-self.num_examples // self.settings.batch_size)


@dataclass(frozen=True)
class AttackOptions:
    steps: int = 200  # gradient-matching iterations (the polish after the square-CNN inversion)
    optimizer: str = "adam"  # "adam" or "lbfgs"
    lr: float = 0.1  # Adam step on the pixel logits; the polish uses a tenth of it
    tv_weight: float = 1e-4
    seed: int = 0  # random start of plain gradient matching (simulation randomness, not a secret)
    neighbours: int = 50  # public images voting on each convolution sign
    sign_rounds: int = 15  # convex solves per prior before giving up on it
    structure: bool = True  # use the closed-form start when the model and the update allow it
    time_budget: float = 25.0  # seconds; the batch inversion and the polish stop when it is spent


@dataclass
class AttackResult:
    images: torch.Tensor  # float [N, 28, 28] in [0, 1]
    labels: list[int]  # inferred from the update
    method: str
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "seconds", "loss" (1 - cosine)[, "psnr"]}
    psnr: list[float] = field(default_factory=list)  # per true image, when the true images were given
    ssim: list[float] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)  # matched[i]: the reconstruction scored against image i
    worker_check: list[str] = field(default_factory=list)  # why a checking worker would refuse the model sent

    def to_dict(self) -> dict:
        return {
            "worker_check": self.worker_check,
            "labels": self.labels,
            "method": self.method,
            "seconds": self.seconds,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "matched": self.matched,
            "history": self.history,
        }


# ----------------------------------------------------------------------------- the worker's side


def worker_examples(config: TrainConfig, data: Mnist, worker: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` training images (uint8) and labels of ``worker``'s shard in the federation ``config``."""
    shards = partition_for(config, data)
    if not 0 <= worker < len(shards):
        raise ValueError(f"worker must be between 0 and {len(shards) - 1}, got {worker}.")
    most = min(MAX_IMAGES, len(shards[worker]))
    if not 1 <= count <= most:
        raise ValueError(f"images must be between 1 and {most} for worker {worker}, got {count}.")
    index = shards[worker][:count]
    return data.train_images[index], data.train_labels[index]


def with_local_steps(settings: LocalSettings, images: int, steps: int) -> LocalSettings:
    """The worker's settings for ``steps`` local SGD steps on ``images`` images.

    Up to one step per image: one epoch in batches of ceil(images / steps) (exactly ``steps`` steps when it
    divides ``images``, as FedAvg's "16 images, batch 4, one epoch"); more steps: that many epochs of one batch.
    """
    if steps < 1:
        raise ValueError(f"local steps must be at least 1, got {steps}.")
    if steps > images:
        return replace(settings, epochs=steps, batch_size=images)
    return replace(settings, epochs=1, batch_size=-(-images // steps))


def make_update(
    model: nn.Module,
    global_vector: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: LocalSettings,
    seed: int,
) -> WorkerUpdate:
    """The update a worker holding exactly ``images`` (uint8 [N, 28, 28]) sends: the app's own trainer."""
    trainer = BatchedTrainer(model, images, labels, settings)
    return trainer.train(global_vector, [0], [torch.arange(len(images))], [seed])[0]


@dataclass(frozen=True)
class StagedUpdate:
    """One worker's round as the demo stages it: its true images, the global weights it got, its update."""

    images: torch.Tensor  # uint8 [N, 28, 28]: the worker's own, shown beside the reconstructions
    labels: torch.Tensor
    global_vector: torch.Tensor
    update: WorkerUpdate
    settings: LocalSettings  # how it trained (public: the server sends them)


def stage_update(
    config: TrainConfig, data: Mnist, worker: int, count: int, round_idx: int = 1, local_steps: int = 1
) -> StagedUpdate:
    """``worker`` of the federation ``config`` holds its first ``count`` images and trains in round ``round_idx``
    for ``local_steps`` steps (:func:`with_local_steps`).

    The global model of that round is the federation's after ``round_idx - 1`` in-process rounds.
    """
    images, labels = worker_examples(config, data, worker, count)
    model = new_model(config.model, config.init, config.seed)
    if round_idx > 1:
        model = engine_for(replace(config, rounds=round_idx - 1, engine="inprocess")).run(data).model
    global_vector = flatten(model_params(model))
    seed = worker_seed(config.seed, round_idx, worker)
    settings = with_local_steps(config.local, count, local_steps)
    update = make_update(model, global_vector, images, labels, settings, seed)
    return StagedUpdate(images, labels, global_vector, update, settings)


# ----------------------------------------------------------------------------- what the server sees


def observe(
    model_name: str,
    global_vector: torch.Tensor,
    update: WorkerUpdate,
    settings: LocalSettings,
    defence: str = "none",
    noise_multiplier: float = 1.0,
    clip_norm: float | None = None,
) -> ObservedUpdate:
    """What the server holds about ``update`` under ``defence``; the DP clip defaults to one local step's bound.

    "both": the worker adds its DP noise, then masks the noisy update for secure aggregation.
    """
    if defence not in DEFENCES:
        raise ValueError(f"Unknown defence {defence!r}; choose one of {', '.join(DEFENCES)}.")
    vector = update.delta
    if defence in ("dp", "both"):  # the Gaussian mechanism on the worker's update (dp.py): clipped, plus noise
        clip = clip_norm if clip_norm is not None else settings.lr * settings.clip_norm
        if clip <= 0 or noise_multiplier < 0:
            raise ValueError("DP needs a positive clip norm and a non-negative noise multiplier.")
        noise = SecureRandom().normal(vector.shape, noise_multiplier * clip)
        vector = clip_rows(vector.unsqueeze(0), clip)[0] + noise
    if defence in ("secure-agg", "both"):  # the worker's masked vector in the smallest round secagg.py allows
        others = [torch.zeros_like(vector)] * (MIN_SURVIVORS - 1)
        smallest_round = torch.stack([vector, *others])
        vector = secure_sum(smallest_round, [update.num_examples] * MIN_SURVIVORS).server_view(0)
    return ObservedUpdate(model_name, global_vector, vector, update.num_examples, settings)


# ----------------------------------------------------------------------------- labels


def last_bias_name(model: nn.Module) -> str:
    linears = [name for name, layer in model.named_modules() if isinstance(layer, nn.Linear) and layer.bias is not None]
    if not linears:
        raise ValueError("Label inference needs a final linear layer with a bias.")
    return f"{linears[-1]}.bias"


def mean_softmax(model: nn.Module, params: Params, public: torch.Tensor) -> torch.Tensor:
    """The model's mean class probabilities over public images (uint8): the server's estimate for a batch."""
    with torch.no_grad():
        logits = torch.cat([functional_call(model, params, (normalize(part),)) for part in public.split(1000)])
    return torch.softmax(logits.double(), 1).mean(0)


def label_counts(bias_gradient: torch.Tensor, count: int, mean_probs: torch.Tensor) -> list[int]:
    """A batch's labels, sorted, from its last bias gradient (any positive scale) and the mean softmax.

    After Wainakh et al. 2022 ("LLG"): gradient = s * (mean_probs - counts / count). A class absent from the
    batch has the largest gradient / mean_probs ratio (a present one's is lower), which gives s; the counts
    follow, rounded by largest remainder to ``count``.
    """
    g = bias_gradient.double()
    scale = (g / mean_probs).max().clamp(min=1e-30)
    estimate = (count * (mean_probs - g / scale)).clamp(min=0)
    counts = estimate.floor()
    for c in torch.argsort(estimate - counts, descending=True)[: max(0, count - int(counts.sum()))]:
        counts[c] += 1
    for c in torch.argsort(estimate - counts)[: max(0, int(counts.sum()) - count)]:
        counts[c] -= 1  # only when the floors alone exceed ``count``: take back the least supported
    return sorted(c for c in range(len(counts)) for _ in range(int(counts[c])))


def infer_labels(model: nn.Module, observed: ObservedUpdate, public: torch.Tensor | None = None) -> list[int]:
    """The labels of the images in ``observed``, sorted.

    One image (iDLG): -update points along the gradient, whose last-bias part is softmax - one-hot, negative
    at the label only: exact. Several: :func:`label_counts`, with the mean softmax over ``public`` images
    (uniform without them).
    """
    params = unflatten(observed.global_vector, model_params(model))
    bias_grad = unflatten(-observed.update, params)[last_bias_name(model)].double()
    if observed.num_examples == 1:
        return [int(bias_grad.argmin())]
    probs = mean_softmax(model, params, public) if public is not None else torch.full_like(bias_grad, 0.1)
    return label_counts(bias_grad, observed.num_examples, probs)


# ----------------------------------------------------------------------------- gradient matching


def simulate_update(
    model: nn.Module, global_params: Params, x: torch.Tensor, labels: torch.Tensor, settings: LocalSettings
) -> torch.Tensor:
    """The worker's local training replayed differentiably (same rule as trainer.BatchedTrainer).

    SGD with momentum and a per-step gradient-norm clip, in batches taken in the given order every epoch
    (the worker's shuffling is not visible to the server; with one batch per epoch it does not matter).
    """
    params = {name: p.detach().requires_grad_(True) for name, p in global_params.items()}
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}
    for _ in range(settings.epochs):
        for start in range(0, len(x), settings.batch_size):
            logits = functional_call(model, params, (x[start : start + settings.batch_size],))
            loss = F.cross_entropy(logits, labels[start : start + settings.batch_size])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            scale = (settings.clip_norm / (norm + 1e-6)).clamp(max=1.0)
            for (name, p), g in zip(list(params.items()), grads):
                velocity[name] = settings.momentum * velocity[name] + scale * g
                params[name] = p - settings.lr * velocity[name]
    return flatten(params) - flatten(global_params).detach()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class GradientMatcher:
    """Objective for candidate images: mismatch (1 - cosine of replayed and observed update) + tv_weight * TV."""

    def __init__(self, model: nn.Module, observed: ObservedUpdate, labels: list[int], tv_weight: float) -> None:
        self.model = model
        self.observed = observed
        self.labels = torch.tensor(labels)
        self.tv_weight = tv_weight
        self.params = unflatten(observed.global_vector, model_params(model))
        self.target = observed.update / observed.update.norm().clamp(min=1e-30)

    def mismatch(self, x: torch.Tensor) -> torch.Tensor:
        replayed = simulate_update(self.model, self.params, x, self.labels, self.observed.settings)
        return 1 - F.cosine_similarity(replayed, self.target, dim=0)

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(objective to minimise, its mismatch part as a number)."""
        mismatch = self.mismatch(x)
        return mismatch + self.tv_weight * total_variation(x), mismatch.item()


def _to_logits(x: torch.Tensor) -> torch.Tensor:
    unit = ((x - LOW) / (HIGH - LOW)).clamp(1e-4, 1 - 1e-4)
    return torch.log(unit / (1 - unit))


def _from_logits(z: torch.Tensor) -> torch.Tensor:
    return LOW + (HIGH - LOW) * torch.sigmoid(z)  # keeps every pixel in the valid range by construction


def match_gradients(
    matcher: GradientMatcher,
    start: torch.Tensor,
    steps: int,
    lr: float,
    optimizer: str,
    report: Callable,
    deadline: float = math.inf,
) -> torch.Tensor:
    """Move ``start`` (normalised [N, 1, 28, 28]) to lower the objective; returns the best iterate seen.

    ``report(step, x, mismatch)`` follows every step with the best iterate so far. Stops early at ``deadline``
    (a time.perf_counter() value).
    """
    z = _to_logits(start).requires_grad_(True)
    objective, mismatch = matcher.objective(start)
    best_x, best_value, best_mismatch = start, objective.item(), mismatch
    seen = {}
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=1, history_size=100, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam([z], lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], 0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        x = _from_logits(z)
        objective, seen["mismatch"] = matcher.objective(x)
        seen["x"] = x.detach()
        objective.backward()
        return objective

    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        value = opt.step(closure).item()
        schedule.step()
        if math.isfinite(value) and value < best_value:
            best_x, best_value, best_mismatch = seen["x"], value, seen["mismatch"]
        report(step + 1, best_x, best_mismatch)
    return best_x


# ----------------------------------------------------------------------------- square-CNN inversion


class SquareCNNInversion:
    """Closed-form reading of CryptoCNN's update for one image and one local step.

    The update is -lr * s * g for an unknown clip factor s > 0; every equation below is homogeneous in g, so
    neither s nor lr matters. With u = conv(x) + b (C channels x L positions), a = u^2 and d = dL/dz1:

    * fc1's weight gradient is d a^T, its bias gradient d: a = G_W1^T d / |d|^2 gives |u| exactly;
    * the conv weight gradient is G_W[c] = sum_p v_cp patch_p(x) with v = 2 u * (W1^T d).

    Given the signs of u, u = conv(x) + b and G_W are both linear in x: a box-constrained least-squares problem.
    The sign of each u is what the square hides (plain gradient matching gets about 30% of them wrong).
    The signs come from public digits with similar |u| (a vote), then from the solution itself, round after
    round (alternating minimisation, as in phase retrieval).
    """

    prior_weight = 0.3  # how much the public vote still counts once a solution has its own signs
    smoothing = 0.05  # weight of the squared-difference prior while the signs settle

    def __init__(
        self,
        model: CryptoCNN,
        params: Params,
        magnitude: torch.Tensor,
        r: torch.Tensor,
        grad_w: torch.Tensor | None,
        public: torch.Tensor,
    ) -> None:
        """One image's |u| and dL/da (``r``), and the conv weight gradient when it is that image's alone (else None)."""
        conv_w, conv_b = params["conv.weight"], params["conv.bias"]
        channels, _, k, _ = conv_w.shape
        stride = model.conv.stride[0]
        self.magnitude = magnitude  # |u|, channel-major like the flattened conv output
        self.r = r
        self.grad_w = None if grad_w is None else grad_w.reshape(channels, -1)
        eye = torch.eye(28 * 28).view(-1, 1, 28, 28)
        self.forward = F.conv2d(eye, conv_w, stride=stride).flatten(1).T  # [C*L, 784]
        self.bias = conv_b.repeat_interleave(self.forward.shape[0] // channels)
        self.unfold = F.unfold(eye, k, stride=stride)  # [784, k*k, L]
        public_u = F.conv2d(normalize(public), conv_w, conv_b, stride=stride)
        self.public_u = public_u.flatten(1)
        self.public_distance = (self.public_u.abs() - self.magnitude).pow(2).sum(1)

    @classmethod
    def from_update(cls, model: CryptoCNN, observed: ObservedUpdate, public: torch.Tensor) -> SquareCNNInversion:
        """The single-image case: |u| and dL/da read off fc1's gradient, the conv gradient is the image's own."""
        params = unflatten(observed.global_vector, model_params(model))
        grads = unflatten(-observed.update / observed.update.norm().clamp(min=1e-30), params)  # homogeneous: scale-free
        d = grads["fc1.bias"]
        squared = grads["fc1.weight"].T @ d / d.dot(d).clamp(min=1e-30)
        r = params["fc1.weight"].T @ d  # dL/da (times the unknown scale)
        return cls(model, params, squared.clamp(min=0).sqrt(), r, grads["conv.weight"], public)

    def prior(self, neighbours: int, within: torch.Tensor | None = None) -> torch.Tensor:
        """Mean sign of u over the public images nearest in |u| (optionally only those where ``within``)."""
        distance = self.public_distance if within is None else self.public_distance.masked_fill(~within, math.inf)
        nearest = distance.topk(min(neighbours, len(distance)), largest=False).indices
        return torch.sign(self.public_u[nearest]).mean(0)

    def gradient_rows(self, u: torch.Tensor) -> torch.Tensor:
        """The conv weight gradient as a linear map of the image, given its conv output u: [C * k * k, 784]."""
        v = (2 * self.r * u).view(-1, self.unfold.shape[2])
        return torch.einsum("cp,jkp->ckj", v, self.unfold).reshape(-1, self.forward.shape[1])

    def solve(
        self, signs: torch.Tensor, weights: torch.Tensor, x: torch.Tensor, smoothing: float, iters: int
    ) -> torch.Tensor:
        """min over x in the box of |w(Ax + b - signs|u|)|^2 + |conv-gradient residual|^2 + smoothing |Dx|^2."""
        u = signs * self.magnitude
        if self.grad_w is None:
            return _box_least_squares(
                weights.unsqueeze(1) * self.forward, weights * (u - self.bias), x, smoothing, iters
            )
        scale = self.magnitude.norm() / self.grad_w.norm().clamp(min=1e-30)
        lhs = torch.cat([weights.unsqueeze(1) * self.forward, scale * self.gradient_rows(u)])
        rhs = torch.cat([weights * (u - self.bias), scale * self.grad_w.flatten()])
        return _box_least_squares(lhs, rhs, x, smoothing, iters)

    def run(
        self,
        options: AttackOptions,
        label: int,
        public_labels: torch.Tensor,
        trace: Trace,
        deadline: float = math.inf,
    ) -> torch.Tensor:
        """Try a few priors until one matches almost perfectly or ``deadline`` passes; returns the best image,
        normalised [1, 1, 28, 28]."""
        priors = [
            self.prior(options.neighbours),
            self.prior(options.neighbours, public_labels == label),
            self.prior(max(1, options.neighbours // 5)),
            self.prior(options.neighbours * 4),
        ]
        best, best_mismatch = None, math.inf
        for i, prior in enumerate(priors):
            x = self._settle_signs(prior, options.sign_rounds, trace, i * options.sign_rounds, deadline)
            signs = torch.sign(self.forward @ x + self.bias)
            image = as_image(self.solve(signs, torch.ones_like(signs), x, 0.0, 500))
            mismatch = trace.mismatch(image)
            if mismatch < best_mismatch:
                best, best_mismatch = image, mismatch
            trace((i + 1) * options.sign_rounds, best, best_mismatch)
            if best_mismatch < SOLVED_MISMATCH or time.perf_counter() > deadline:
                break
        return best

    def _settle_signs(
        self, prior: torch.Tensor, rounds: int, trace: Trace, first_step: int, deadline: float = math.inf
    ) -> torch.Tensor:
        signs, weights = torch.sign(prior + 1e-3), prior.abs()
        x = torch.full((self.forward.shape[1],), LOW)
        for round_idx in range(rounds):
            x = self.solve(signs, weights, x, self.smoothing, 200)
            u = self.forward @ x + self.bias
            agreement = torch.sign(u) * (u.abs() / self.magnitude.clamp(min=1e-12)).clamp(max=1)
            score = self.prior_weight * prior + agreement
            new_signs = torch.sign(score + 1e-3)
            weights = score.abs() / 2  # rows of the forward map then weigh about as much as the gradient rows
            image = as_image(x)
            trace(first_step + round_idx + 1, image, trace.mismatch(image))
            if (round_idx >= 2 and torch.equal(new_signs, signs)) or time.perf_counter() > deadline:
                break
            signs = new_signs
        return x


def as_image(x: torch.Tensor) -> torch.Tensor:
    """A flat normalised image [784] as the model's input shape [1, 1, 28, 28]."""
    return x.view(1, 1, 28, 28)


def _neighbour_differences_gradient(x: torch.Tensor) -> torch.Tensor:
    """Gradient of half the summed squared differences between neighbouring pixels (D^T D x) of 28x28 images."""
    image = x.view(28, 28)
    dh, dv = image[:, 1:] - image[:, :-1], image[1:, :] - image[:-1, :]
    out = torch.zeros_like(image)
    out[:, 1:] += dh
    out[:, :-1] -= dh
    out[1:, :] += dv
    out[:-1, :] -= dv
    return out.flatten()


def _box_least_squares(
    lhs: torch.Tensor, rhs: torch.Tensor, x: torch.Tensor, smoothing: float, iters: int
) -> torch.Tensor:
    """FISTA for min |lhs x - rhs|^2 + smoothing^2 |Dx|^2 with LOW <= x <= HIGH, warm-started at ``x``."""
    probe = torch.ones(lhs.shape[1], dtype=lhs.dtype)
    for _ in range(20):  # power iteration: the step needs the largest eigenvalue of lhs^T lhs
        probe = lhs.T @ (lhs @ probe)
        probe = probe / probe.norm()
    lipschitz = 1.1 * ((lhs @ probe).pow(2).sum() + 8 * smoothing**2)  # D^T D on a grid has eigenvalues <= 8
    y, t = x.clone(), 1.0
    for _ in range(iters):
        step = lhs.T @ (lhs @ y - rhs) + smoothing**2 * _neighbour_differences_gradient(y)
        x_next = (y - step / lipschitz).clamp(LOW, HIGH)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x_next + (t - 1) / t_next * (x_next - x)
        x, t = x_next, t_next
    return x


# ----------------------------------------------------------------------------- the attack


class Trace:
    """The attack's history and live progress: one entry per reported step."""

    def __init__(
        self, matcher: GradientMatcher, total: int, reference: torch.Tensor | None, progress: Progress | None
    ) -> None:
        self.mismatch = lambda x: matcher.mismatch(x).item()
        self.total = total
        self.truth = reference.float() / 255 if reference is not None else None
        self.progress = progress
        self.started = time.perf_counter()
        self.history: list[dict] = []
        self.step = 0

    def __call__(self, step: int, x: torch.Tensor, mismatch: float) -> None:
        self.step = step
        entry = {"step": step, "seconds": time.perf_counter() - self.started, "loss": mismatch}
        pixels = to_pixels(x)
        if self.truth is not None:
            entry["psnr"] = mean_psnr(pixels, self.truth)
        self.history.append(entry)
        if self.progress:
            self.progress(step, self.total, pixels, entry)
